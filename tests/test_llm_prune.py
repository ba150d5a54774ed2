"""Magnitude and Wanda pruning: exact per-row sparsity, N:M patterns, untouched embeddings."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers")

from test_llm_adapters import assert_exact_pattern, tiny_model, tokens  # noqa: E402

from sparsenets.errors import SparsenetsError  # noqa: E402
from sparsenets.llm import get_adapter, nm_keep_mask, parse_structure, prune, row_keep_mask  # noqa: E402
from sparsenets.llm.methods import get_method  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 40), sparsity=st.floats(0.0, 0.99), seed=st.integers(0, 99))
def test_row_keep_mask_exact_per_row(rows, cols, sparsity, seed):
    scores = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)).round(decimals=1)
    keep = row_keep_mask(scores, sparsity)
    n_keep = cols - round(sparsity * cols)
    assert (keep.sum(1) == n_keep).all()
    # every kept score is >= every pruned score of the same row
    for r in range(rows):
        if 0 < n_keep < cols:
            assert scores[r][keep[r]].min() >= scores[r][~keep[r]].max()


@settings(max_examples=40, deadline=None)
@given(nm=st.sampled_from([(1, 2), (2, 4), (4, 8), (1, 4)]), rows=st.integers(1, 5), groups=st.integers(1, 6),
       seed=st.integers(0, 99))
def test_nm_keep_mask_every_group(nm, rows, groups, seed):
    n, m = nm
    scores = torch.randn(rows, groups * m, generator=torch.Generator().manual_seed(seed))
    keep = nm_keep_mask(scores, n, m).reshape(rows, groups, m)
    assert (keep.sum(-1) == n).all()
    grouped = scores.reshape(rows, groups, m)
    kept_min = torch.where(keep, grouped, torch.inf).min(-1).values
    pruned_max = torch.where(keep, -torch.inf, grouped).max(-1).values
    assert (kept_min >= pruned_max).all()


def test_nm_golden_case():
    scores = torch.tensor([[0.1, 3.0, -2.0, 0.5, 9.0, 8.0, 7.0, 1.0]])
    assert nm_keep_mask(scores, 2, 4).tolist() == [[False, True, False, True, True, True, False, False]]


def test_wanda_equals_magnitude_for_uniform_norms_and_differs_otherwise():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(16, 32, generator=g)
    wanda, magnitude = get_method("wanda"), get_method("magnitude")
    structure = parse_structure("unstructured")
    mag = magnitude.prune_weight(weight, None, 0.5, structure)
    assert torch.equal(wanda.prune_weight(weight, torch.full((32,), 3.7), 0.5, structure), mag)
    skewed = torch.logspace(-2, 2, 32)
    assert not torch.equal(wanda.prune_weight(weight, skewed, 0.5, structure), mag)
    nm = parse_structure("2:4")
    assert torch.equal(wanda.prune_weight(weight, torch.ones(32), 0.5, nm), magnitude.prune_weight(weight, None, 0.5, nm))


def _masks(model):
    return {n: layer.weight != 0 for n, layer in get_adapter(model).prunable_linears(model).items()}


@pytest.mark.parametrize("family", ("llama", "mistral", "qwen2", "opt"))
@pytest.mark.parametrize("method", ("magnitude", "wanda"))
@pytest.mark.parametrize("structure", ("unstructured", "2:4", "4:8"))
def test_prune_exact_row_sparsity_and_nm(family, method, structure):
    model = tiny_model(family)
    report = prune(model, tokens(4, 8), method=method, structure=structure, sparsity=None if structure != "unstructured" else 0.5,
                   batch_size=2, progress=False)
    linears = get_adapter(model).prunable_linears(model)
    assert set(report) == set(linears)
    for name, layer in linears.items():
        w = layer.weight
        assert report[name] == pytest.approx(0.5)
        assert_exact_pattern(w, structure, name)


@pytest.mark.parametrize("sparsity", (0.3, 0.7))
def test_prune_other_sparsities(sparsity):
    model = tiny_model("llama")
    prune(model, tokens(2, 8), method="wanda", sparsity=sparsity, progress=False)
    for layer in get_adapter(model).prunable_linears(model).values():
        n_in = layer.weight.shape[1]
        assert ((layer.weight == 0).sum(1) == round(sparsity * n_in)).all()


def test_wanda_and_magnitude_masks_differ_on_a_model():
    a, b = tiny_model("llama"), tiny_model("llama")
    prune(a, tokens(4, 8), method="magnitude", progress=False)
    prune(b, tokens(4, 8), method="wanda", progress=False)
    ma, mb = _masks(a), _masks(b)
    assert any(not torch.equal(ma[n], mb[n]) for n in ma)


@pytest.mark.parametrize("tied", (False, True))
@pytest.mark.parametrize("family", ("llama", "opt"))
def test_embeddings_and_lm_head_untouched(family, tied):
    model = tiny_model(family, tied=tied)
    assert (model.lm_head.weight is get_adapter(model).embeddings(model)[get_adapter(model).embedding_paths[0]].weight) == tied
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prune(model, tokens(2, 8), method="wanda", progress=False)
    adapter = get_adapter(model)
    pruned = {f"{n}.weight" for n in adapter.prunable_linears(model)}
    for name, param in model.named_parameters():
        if name in pruned:
            assert not torch.equal(param, before[name])
        else:  # embeddings, lm_head, norms, biases
            assert torch.equal(param, before[name]), name
    torch.testing.assert_close(model.lm_head.weight, before.get("lm_head.weight", model.lm_head.weight))


def test_bad_arguments_are_one_line_errors():
    model = tiny_model("llama")
    with pytest.raises(SparsenetsError, match="unknown method 'sparsegpt2'"):
        prune(model, tokens(2, 8), method="sparsegpt2")
    with pytest.raises(SparsenetsError, match="sparsity must be in"):
        prune(model, tokens(2, 8), sparsity=1.5)
    with pytest.raises(SparsenetsError, match="unknown structure"):
        prune(model, tokens(2, 8), structure="4:2")
    with pytest.raises(SparsenetsError, match="contradicts structure 2:4"):
        prune(model, tokens(2, 8), structure="2:4", sparsity=0.7)
    with pytest.raises(SparsenetsError, match="needs calibration"):
        prune(model, None, method="wanda")
    with pytest.raises(SparsenetsError, match="unknown allocation"):
        prune(model, tokens(2, 8), allocation="owl2")
    with pytest.raises(SparsenetsError, match="calibration must be"):
        prune(model, torch.zeros(8), method="wanda")
    with pytest.raises(SparsenetsError, match="divisible by 8"):
        nm_keep_mask(torch.randn(2, 12), 4, 8)
    assert all((layer.weight != 0).all() for layer in get_adapter(model).prunable_linears(model).values())


def test_magnitude_needs_no_calibration():
    model = tiny_model("qwen2")
    report = prune(model, None, method="magnitude", sparsity=0.25, progress=False)
    assert all(v == pytest.approx(0.25) for v in report.values())
