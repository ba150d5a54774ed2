"""SynFlow on deep narrow MLPs: no layer collapse, and float32 / float64 models agree."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from sparsenets.allocation import allocate_counts
from sparsenets.errors import SparsenetsError
from sparsenets.prune import prune_at_init
from sparsenets.prune import synflow as synflow_module
from sparsenets.prune.base import keep_masks
from sparsenets.prune.synflow import absolute_copy, flow_scores


def _narrow_mlp(sizes: tuple[int, ...], seed: int = 0, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out, bias=bias))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


DEEP = (256, *(16,) * 10, 10)  # 6 560 weights: 99.5% sparsity keeps 33


def test_synflow_leaves_no_layer_empty_where_global_magnitude_empties_one():
    model = _narrow_mlp(DEEP, bias=False)
    magnitude = prune_at_init(model, "magnitude", 0.005)
    assert min(magnitude.nnz(n) for n in magnitude) == 0  # the wide first layer (small weights) goes
    synflow = prune_at_init(model, "synflow", 0.005)
    assert synflow.nnz() == round(0.005 * synflow.numel())
    assert min(synflow.nnz(n) for n in synflow) >= 1


def test_synflow_with_default_biases_collapses_unless_they_are_zeroed():
    # Documented behaviour: the reference code takes |b|, and in a deep narrow net with PyTorch's
    # nonzero default biases the flow through the biases starves the early layers.
    model = _narrow_mlp(DEEP)
    reference = prune_at_init(model, "synflow", 0.005)
    assert min(reference.nnz(n) for n in reference) == 0
    zeroed = prune_at_init(model, "synflow", 0.005, zero_biases=True)
    assert min(zeroed.nnz(n) for n in zeroed) >= 1


def _tiny_deep_mlp(dtype: torch.dtype) -> nn.Sequential:
    model = _narrow_mlp((8,) * 41 + (4,), seed=3, bias=False)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.05)  # R ≈ 1e-48 at init: below float32's smallest subnormal
    return model.to(dtype)


def test_float32_scores_would_underflow_on_this_network():
    model = _tiny_deep_mlp(torch.float32)
    names = [n for n, _ in model.named_parameters() if n.endswith("weight")]
    for dtype, expect_zeros in ((torch.float32, True), (torch.float64, False)):
        flow = absolute_copy(model, dtype)
        weights = {n: p.detach().clone() for n, p in flow.named_parameters() if n in names}
        masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        scores = flow_scores(flow, names, masks, weights, torch.ones(1, 8, dtype=dtype))
        zeros = sum(int((s == 0).sum()) for s in scores.values())
        assert (zeros > 0) == expect_zeros


def test_float32_and_float64_models_get_the_same_synflow_mask():
    m32, m64 = _tiny_deep_mlp(torch.float32), _tiny_deep_mlp(torch.float64)
    a = prune_at_init(m32, "synflow", 0.1, rounds=20)
    b = prune_at_init(m64, "synflow", 0.1, rounds=20)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert min(a.nnz(n) for n in a) >= 1
    # scored in float32 instead, the flushed-to-zero scores tie and the mask differs
    c = prune_at_init(m32, "synflow", 0.1, rounds=20, dtype=torch.float32)
    assert any(not torch.equal(a[n], c[n]) for n in a)


@pytest.mark.parametrize("allocation", ["global", "erk"])
def test_synflow_rounds_follow_the_exponential_schedule_and_nest(monkeypatch, allocation):
    model = _narrow_mlp((20, 16, 16, 5))
    rounds: list[dict[str, torch.Tensor]] = []

    def recording(*args, **kwargs):
        rounds.append(keep_masks(*args, **kwargs))
        return rounds[-1]

    monkeypatch.setattr(synflow_module, "keep_masks", recording)
    final = prune_at_init(model, "synflow", 0.3, rounds=4, allocation=allocation)
    assert len(rounds) == 4
    total = final.numel()
    counts = allocate_counts(final.shapes, 0.3, "erk")
    for k, masks in enumerate(rounds, start=1):
        if allocation == "global":
            assert sum(int(m.sum()) for m in masks.values()) == round(total * 0.3 ** (k / 4))
        else:
            for name, mask in masks.items():
                numel = mask.numel()
                assert int(mask.sum()) == round(numel * (counts[name] / numel) ** (k / 4))
    for earlier, later in itertools.pairwise(rounds):
        assert all(bool((later[n] <= earlier[n]).all()) for n in earlier)
    assert all(torch.equal(final[n], rounds[-1][n]) for n in final)


def test_synflow_overflow_is_reported():
    model = _narrow_mlp((64,) * 30 + (4,))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(200.0)
    with pytest.raises(SparsenetsError, match="overflowed.*float64"):
        prune_at_init(model, "synflow", 0.5, rounds=2, dtype=torch.float32)
