"""DSnoT: the vectorised mask repair against a row-by-row reference, exact counts, monotone error,
the input moments, and the integration in ``prune`` / ``recover`` / ``prune-llm --recover dsnot``."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")

from test_llm_adapters import tiny_model, tokens  # noqa: E402
from test_llm_cli import cli, model_dir, prune_args  # noqa: E402, F401

from sparsenets.errors import SparsenetsError  # noqa: E402
from sparsenets.llm import DSnoTOptions, dsnot_keep_mask, get_adapter, prune, recover  # noqa: E402
from sparsenets.llm.dsnot import InputMoments, InputMomentStats  # noqa: E402
from sparsenets.select import NM, Unstructured, select  # noqa: E402


def reference_dsnot(weight, keep, moments, nm=None, scores=None, max_cycles=50, threshold=0.1, var_power=1.0,
                    same_sign=True):
    """DSnoT written row by row with Python lists, from the description in the module docstring
    (scores and errors in float32 tensors, as the vectorised code, so the decisions are bitwise
    comparable)."""
    keep = keep.clone()
    contribution = weight * moments.token_sum  # (out, in) float32
    grow_scores = (contribution / moments.var.clamp_min(torch.finfo(torch.float32).tiny).pow(var_power)).nan_to_num(
        posinf=torch.finfo(torch.float32).max, neginf=-torch.finfo(torch.float32).max)
    wanda_scores = weight.abs() * moments.norm
    for i in range(weight.shape[0]):
        c = contribution[i]
        pruned = [j for j in range(weight.shape[1]) if not keep[i, j]]
        kept = [j for j in range(weight.shape[1]) if keep[i, j]]
        grow = sorted(pruned, key=lambda j: (float(grow_scores[i, j]), j))  # ascending, ties by position
        negative = sorted((j for j in kept if c[j] < 0), key=lambda j: (float(wanda_scores[i, j]), j))
        positive = sorted((j for j in kept if c[j] > 0), key=lambda j: (float(wanda_scores[i, j]), j))
        row_scores = None if scores is None else {j: float(scores[i, j]) for j in kept}
        error = (c * ~keep[i]).sum()
        sign0 = torch.sign(error)
        low, high = 0, len(grow) - 1
        for _ in range(max_cycles):
            if low > high:
                break
            positive_error = bool(error > 0)
            g = grow[high] if positive_error else grow[low]
            if nm is None:
                pool = negative if positive_error else positive
                if not pool:
                    break
                p = pool.pop(0)
            else:
                start = g - g % nm.m
                group = [j for j in range(start, start + nm.m) if j in row_scores]
                if not group:
                    break
                p = min(group, key=lambda j: (row_scores[j], j))
            after = error + c[p] - c[g]
            if not bool(error.abs() > threshold) or (same_sign and bool(torch.sign(after) != sign0)):
                break
            keep[i, g], keep[i, p] = True, False
            error = after
            if nm is not None:
                del row_scores[p]
            if positive_error:
                high -= 1
            else:
                low += 1
    return keep


def random_layer(out, inp, seed, nm=None):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, inp, generator=g)
    x = torch.randn(3, 7, inp, generator=g) * torch.rand(inp, generator=g) * 2 + torch.randn(inp, generator=g)
    stats = InputMomentStats(inp)
    stats.update(x[:2])
    stats.update(x[2:])
    moments = stats.finalize()
    wanda = weight.abs() * moments.norm
    keep = select(wanda, structure=nm) if nm is not None else select(wanda, inp // 2, group="row")
    return weight, keep, moments, wanda


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 6), inp=st.sampled_from([8, 12, 16]), seed=st.integers(0, 500),
       same_sign=st.booleans(), threshold=st.sampled_from([0.0, 0.1, 1.0]))
def test_unstructured_equals_the_row_by_row_reference(out, inp, seed, same_sign, threshold):
    weight, keep, moments, _ = random_layer(out, inp, seed)
    options = DSnoTOptions(threshold=threshold, same_sign=same_sign, skip=None)
    got, swaps = dsnot_keep_mask(weight, keep, moments, Unstructured(), options=options)
    expected = reference_dsnot(weight, keep, moments, threshold=threshold, same_sign=same_sign)
    assert torch.equal(got, expected)
    assert torch.equal(got.sum(1), keep.sum(1))  # exact per-row counts
    assert swaps == int((got & ~keep).sum())


@settings(max_examples=40, deadline=None)
@given(out=st.integers(1, 6), groups=st.integers(1, 4), nm=st.sampled_from([NM(2, 4), NM(1, 4), NM(4, 8)]),
       seed=st.integers(0, 500))
def test_nm_equals_the_reference_and_keeps_every_group(out, groups, nm, seed):
    weight, keep, moments, wanda = random_layer(out, groups * nm.m, seed, nm)
    got, _ = dsnot_keep_mask(weight, keep, moments, nm, initial_scores=wanda, options=DSnoTOptions(threshold=0.0))
    assert torch.equal(got, reference_dsnot(weight, keep, moments, nm=nm, scores=wanda, threshold=0.0))
    assert (got.reshape(out, groups, nm.m).sum(-1) == nm.n).all()


def row_errors(weight, keep, moments):
    return ((weight * moments.token_sum) * ~keep).sum(1)


def test_the_expected_error_shrinks_in_every_row_and_options_stop_it():
    weight, keep, moments, _ = random_layer(64, 96, seed=3)
    before = row_errors(weight, keep, moments).abs()
    got, swaps = dsnot_keep_mask(weight, keep, moments, Unstructured(), options=DSnoTOptions(threshold=0.0))
    after = row_errors(weight, got, moments).abs()
    assert swaps > 0 and (after <= before + 1e-5).all() and after.sum() < 0.5 * before.sum()
    assert torch.equal(dsnot_keep_mask(weight, keep, moments, Unstructured(), options=DSnoTOptions(max_cycles=0))[0], keep)
    assert torch.equal(dsnot_keep_mask(weight, keep, moments, Unstructured(),
                                       options=DSnoTOptions(threshold=1e9))[0], keep)
    few, n_few = dsnot_keep_mask(weight, keep, moments, Unstructured(), options=DSnoTOptions(max_cycles=2, threshold=0.0))
    assert n_few <= 2 * 64 and ((few != keep).sum(1) <= 4).all()


def test_input_moments_match_a_direct_computation():
    x = torch.randn(5, 9, 6, dtype=torch.float64) * 3 + 1
    stats = InputMomentStats(6)
    for part in x.split(2):
        stats.update(part)
    moments = stats.finalize()
    flat = x.reshape(-1, 6)
    torch.testing.assert_close(moments.token_sum.double(), flat.sum(0) / 5)
    within = x.var(dim=1, unbiased=False).mean(0)  # each sequence's variance, averaged (the reference's)
    torch.testing.assert_close(moments.var.double(), within, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(within, flat.var(0, unbiased=False))  # not the variance over all tokens
    torch.testing.assert_close(moments.norm.double(), flat.norm(dim=0), rtol=1e-6, atol=1e-6)
    assert stats.n_sequences == 5 and stats.n_tokens == 45
    with pytest.raises(SparsenetsError, match="no tokens"):
        InputMomentStats(6).finalize()


@pytest.mark.parametrize(("method", "structure"), [("wanda", "unstructured"), ("magnitude", "2:4"),
                                                   ("sparsegpt", "unstructured")])
def test_prune_with_dsnot_keeps_exact_counts_and_moves_the_masks(method, structure):
    calib = tokens(4, 16)
    plain = tiny_model("llama")
    base = prune(plain, calib, method=method, sparsity=None if structure != "unstructured" else 0.5,
                 structure=structure, progress=False, batch_size=2)
    model = tiny_model("llama")
    result = recover(model, calib, initial=method, sparsity=None if structure != "unstructured" else 0.5,
                     structure=structure, options=DSnoTOptions(threshold=0.0), progress=False, batch_size=2)
    assert result.recovery["method"] == "dsnot" and result.recovery["skip"] == ["mlp"]
    assert all(".mlp." in name for name in result.recovery["skipped"]) and len(result.recovery["skipped"]) == 6
    moved = sum(result.recovery["swaps"].values())
    assert moved > 0
    n, m = (2, 4) if structure == "2:4" else (None, None)
    for name, layer in get_adapter(model).prunable_linears(model).items():
        mask = result.masks[f"{name}.weight"]
        assert torch.equal(layer.weight != 0, mask) or (mask >= (layer.weight != 0)).all()
        if n is None:
            assert (mask.sum(1) == mask.shape[1] // 2).all(), name
        else:
            assert (mask.reshape(mask.shape[0], -1, m).sum(-1) == n).all(), name
    # block 0's MLP saw the same (pre-pruning) inputs in both runs: skipped, so the same masks
    for name in ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        key = f"model.layers.0.{name}.weight"
        assert torch.equal(result.masks[key], base.masks[key])
    changed = [k for k in result.masks if ".self_attn." in k and not torch.equal(result.masks[k], base.masks[k])]
    assert changed


def test_dsnot_keeps_the_dense_values_of_kept_weights():
    calib = tokens(4, 16)
    dense = tiny_model("llama")
    original = {n: layer.weight.detach().clone() for n, layer in get_adapter(dense).prunable_linears(dense).items()}
    result = recover(dense, calib, initial="sparsegpt", sparsity=0.5, options=DSnoTOptions(skip=None),
                     progress=False, batch_size=2)
    for name, layer in get_adapter(dense).prunable_linears(dense).items():
        mask = result.masks[f"{name}.weight"]
        assert torch.equal(layer.weight, original[name] * mask), name


def test_recovery_errors_are_one_line():
    calib = tokens(2, 8)
    model = tiny_model("llama")
    prune(model, calib, sparsity=0.5, progress=False)
    with pytest.raises(SparsenetsError, match="already .* zeros: DSnoT needs the dense model"):
        recover(model, calib, sparsity=0.5, progress=False)
    with pytest.raises(SparsenetsError, match="unknown recovery method 'lora'"):
        recover(tiny_model("llama"), calib, method="lora")
    with pytest.raises(SparsenetsError, match="unknown recovery method 'x'"):
        prune(tiny_model("llama"), calib, recover="x")
    with pytest.raises(SparsenetsError, match="without recover='dsnot'"):
        prune(tiny_model("llama"), calib, dsnot=DSnoTOptions())
    with pytest.raises(SparsenetsError, match="DSnoT needs calibration"):
        prune(tiny_model("llama"), None, method="magnitude", recover="dsnot")
    with pytest.raises(SparsenetsError, match="max_cycles"):
        DSnoTOptions(max_cycles=-1)
    with pytest.raises(SparsenetsError, match="not a regular expression"):
        DSnoTOptions(skip="(")
    with pytest.raises(SparsenetsError, match="does not match weight"):
        dsnot_keep_mask(torch.ones(2, 4), torch.ones(2, 3, dtype=torch.bool),
                        InputMoments(torch.ones(4), torch.ones(4), torch.ones(4)), Unstructured())


def test_prune_llm_recover_dsnot_records_the_step(capsys, tmp_path, model_dir):  # noqa: F811
    directory, text = model_dir
    out = tmp_path / "pruned"
    code, stdout, err = cli(capsys, *prune_args(directory, text, out, "--method", "wanda", "--sparsity", "0.5",
                                                "--recover", "dsnot", "--dsnot-skip", "--dsnot-threshold", "0"))
    assert code == 0, err
    assert "recovered  with dsnot" in stdout
    info = json.loads((out / "sparsity.json").read_text())
    step = info["recovery"][0]
    assert step["method"] == "dsnot" and step["skip"] == [] and step["threshold"] == 0.0 and step["skipped"] == []
    assert step["swaps_total"] == sum(step["swaps"].values()) > 0
    assert all(v == 0.5 for v in info["layers"].values())
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    for name, layer in get_adapter(reloaded).prunable_linears(reloaded).items():
        assert ((layer.weight == 0).sum(1) == layer.weight.shape[1] // 2).all(), name
    code, _, err = cli(capsys, *prune_args(directory, text, tmp_path / "bad", "--recover", "dsnot",
                                           "--dsnot-cycles", "-3"))
    assert code != 0 and "max_cycles" in err and "Traceback" not in err
