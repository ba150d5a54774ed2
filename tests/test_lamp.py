"""Allocations from weights: global threshold and LAMP (scores, counts, exact budgets, ties)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenets.allocation import global_counts, global_masks, lamp_counts
from sparsenets.errors import SparsenetsError
from sparsenets.rng import generator
from sparsenets.scores import lamp
from sparsenets.select import select


def test_lamp_scores_by_hand():
    # squares 1, 9, 4, 0 → ascending 0, 1, 4, 9 with tails Σ_{v≥u}: 14, 14, 13, 9
    weight = torch.tensor([[1.0, -3.0], [2.0, 0.0]])
    assert lamp(weight).tolist() == [[1 / 14, 1.0], [4 / 13, 0.0]]


def test_lamp_scores_only_the_eligible_weights():
    weight = torch.tensor([1.0, 3.0, 2.0, 10.0])
    eligible = torch.tensor([True, True, True, False])
    # among 1, 3, 2: squares ascending 1, 4, 9, tails 14, 13, 9
    assert lamp(weight, eligible).tolist() == [1 / 14, 1.0, 4 / 13, float("-inf")]


def test_lamp_orders_equal_weights_by_the_generator():
    weight = torch.ones(6)
    by_position = lamp(weight)
    assert by_position.tolist() == [1 / 6, 1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0]
    shuffled = lamp(weight, generator=generator(0, 1))
    assert sorted(shuffled.tolist()) == sorted(by_position.tolist())
    assert torch.equal(shuffled, lamp(weight, generator=generator(0, 1)))
    assert any(not torch.equal(lamp(weight, generator=generator(s, 1)), shuffled) for s in range(1, 6))


def test_lamp_keeps_each_layer_largest_weight_where_global_magnitude_empties_a_layer():
    weights = {"small": torch.full((50,), 0.01), "large": torch.linspace(1.0, 2.0, 50)}
    weights["small"][7] = 0.02
    assert global_counts({n: w.abs() for n, w in weights.items()}, 0.1)["small"] == 0
    counts = lamp_counts(weights, 0.1)
    assert sum(counts.values()) == 10 and counts["small"] >= 1
    keep = select(weights["small"].abs(), counts["small"])
    assert bool(keep[7])


def test_global_counts_exact_with_ties_and_seeded():
    scores = {"a": torch.ones(3, 7), "b": torch.ones(11), "c": torch.ones(2, 2, 2)}
    masks = global_masks(scores, 0.37, generator=generator(3, 0))
    total = sum(s.numel() for s in scores.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.37 * total)
    again = global_masks(scores, 0.37, generator=generator(3, 0))
    assert all(torch.equal(masks[n], again[n]) for n in scores)
    other = global_masks(scores, 0.37, generator=generator(4, 0))
    assert any(not torch.equal(masks[n], other[n]) for n in scores)


def test_global_counts_only_among_eligible_positions():
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0)}
    eligible = {"a": torch.arange(10) < 3, "b": torch.arange(10) >= 5}
    masks = global_masks(scores, 0.2, eligible=eligible)
    assert (masks["a"] & ~eligible["a"]).sum() == 0 and (masks["b"] & ~eligible["b"]).sum() == 0
    assert masks["b"].nonzero().squeeze(1).tolist() == [6, 7, 8, 9]
    with pytest.raises(SparsenetsError, match="eligible"):
        global_counts(scores, 0.5, eligible=eligible)


def test_global_selection_compares_float64_scores_in_float64():
    # 1e-50 and 2e-50 are both 0 in float32: comparing in float32 would tie them.
    scores = {"a": torch.tensor([1e-50, 3e-50], dtype=torch.float64), "b": torch.tensor([2e-50, 0.0], dtype=torch.float64)}
    keep = select(scores, 2, group="global")
    assert keep["a"].tolist() == [False, True] and keep["b"].tolist() == [True, False]


layer_shapes = st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=5)


@settings(max_examples=40, deadline=None)
@given(shapes=layer_shapes, density=st.floats(0.01, 1.0), seed=st.integers(0, 2**16), constant=st.booleans())
def test_lamp_and_global_budgets_are_exact(shapes, density, seed, constant):
    gen = torch.Generator().manual_seed(seed)
    weights = {
        f"l{i}": torch.full(s, 0.5) if constant else torch.randn(s, generator=gen) for i, s in enumerate(shapes)
    }
    total = sum(w.numel() for w in weights.values())
    keep = round(density * total)
    lamp_kept = lamp_counts(weights, density, generator=generator(seed, 0))
    glob = global_counts({n: w.abs() for n, w in weights.items()}, density, generator=generator(seed, 0))
    for counts in (lamp_kept, glob):
        assert sum(counts.values()) == keep
        assert all(0 <= counts[n] <= weights[n].numel() for n in weights)
    if keep >= len(weights):  # LAMP: every layer keeps its largest weight
        assert all(c >= 1 for c in lamp_kept.values())


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**16))
def test_lamp_ranks_like_magnitude_within_a_layer(n, seed):
    weight = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    scores = lamp(weight)
    assert torch.equal(torch.argsort(scores), torch.argsort(weight.abs()))
    assert float(scores.max()) == 1.0 and (n == 1 or float(scores.sort().values[-2]) <= 0.5)
