"""Top-k selection: exact counts, eligibility, preference, reproducible random tie-breaking."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsenets.rng import derive_seed, generator
from sparsenets.select import random_mask, select_bottomk, select_topk, topk_indices


def gen(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


score_arrays = st.lists(
    st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0, 3.0]) | st.floats(-10, 10, allow_nan=False),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    values=score_arrays,
    k=st.integers(-3, 50),
    eligible_bits=st.lists(st.booleans(), min_size=40, max_size=40),
    seed=st.integers(0, 2**31),
)
def test_select_topk_exact_count_and_eligible(values, k, eligible_bits, seed):
    scores = torch.tensor(values)
    eligible = torch.tensor(eligible_bits[: len(values)])
    chosen = select_topk(scores, k, eligible, generator=gen(seed))
    assert chosen.dtype == torch.bool and chosen.shape == scores.shape
    assert int(chosen.sum()) == max(0, min(k, int(eligible.sum())))
    assert not bool((chosen & ~eligible).any())
    if chosen.any() and (eligible & ~chosen).any():
        # every chosen score is >= every eligible unchosen score
        assert float(scores[chosen].min()) >= float(scores[eligible & ~chosen].max())


@settings(max_examples=100, deadline=None)
@given(values=score_arrays, k=st.integers(0, 50))
def test_select_bottomk_picks_lowest(values, k):
    scores = torch.tensor(values)
    chosen = select_bottomk(scores, k)
    assert int(chosen.sum()) == min(k, len(values))
    if chosen.any() and (~chosen).any():
        assert float(scores[chosen].max()) <= float(scores[~chosen].min())


def test_select_topk_by_hand_2d():
    scores = torch.tensor([[5.0, 1.0, 4.0], [3.0, 9.0, 2.0]])
    eligible = torch.tensor([[True, True, True], [True, False, True]])
    chosen = select_topk(scores, 2, eligible)
    assert torch.equal(chosen, torch.tensor([[True, False, True], [False, False, False]]))
    # all positions when eligible is None
    assert torch.equal(select_topk(scores, 1), scores == 9.0)
    # k clipped to the eligible count
    assert torch.equal(select_topk(scores, 100, eligible), eligible)


def test_prefer_takes_all_preferred_first():
    scores = torch.tensor([10.0, 9.0, 8.0, 1.0, 2.0, 3.0])
    prefer = torch.tensor([False, False, False, True, True, True])
    # fewer preferred than k: all preferred + best of the rest
    chosen = select_topk(scores, 4, prefer=prefer)
    assert torch.equal(chosen, torch.tensor([True, False, False, True, True, True]))
    # more preferred than k: the best preferred only
    chosen = select_topk(scores, 2, prefer=prefer)
    assert torch.equal(chosen, torch.tensor([False, False, False, False, True, True]))


def test_prefer_respects_eligible():
    scores = torch.tensor([10.0, 9.0, 8.0, 1.0, 2.0, 3.0])
    prefer = torch.tensor([False, False, False, True, True, True])
    eligible = torch.tensor([True, True, False, True, False, False])
    chosen = select_topk(scores, 2, eligible, prefer=prefer)
    assert torch.equal(chosen, torch.tensor([True, False, False, True, False, False]))


@settings(max_examples=50, deadline=None)
@given(
    prefer_bits=st.lists(st.booleans(), min_size=30, max_size=30),
    k=st.integers(0, 30),
    seed=st.integers(0, 1000),
)
def test_prefer_property(prefer_bits, k, seed):
    scores = torch.rand(30, generator=gen(seed))
    prefer = torch.tensor(prefer_bits)
    chosen = select_topk(scores, k, prefer=prefer, generator=gen(seed + 1))
    assert int(chosen.sum()) == k
    n_pref = int(prefer.sum())
    if k >= n_pref:
        assert bool(chosen[prefer].all())
    else:
        assert not bool(chosen[~prefer].any())


def test_ties_reproducible_with_seeded_generator_and_random_across_seeds():
    scores = torch.zeros(100)
    picks = [select_topk(scores, 10, generator=gen(s)) for s in range(20)]
    assert all(int(p.sum()) == 10 for p in picks)
    again = [select_topk(scores, 10, generator=gen(s)) for s in range(20)]
    for a, b in zip(picks, again, strict=True):
        assert torch.equal(a, b)
    distinct = {tuple(p.nonzero().flatten().tolist()) for p in picks}
    assert len(distinct) > 15
    # ties are spread, not always the first positions
    union = torch.stack(picks).any(0)
    assert int(union.sum()) > 50


def test_ties_only_at_the_boundary_are_random():
    scores = torch.tensor([5.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    for seed in range(10):
        chosen = select_topk(scores, 3, generator=gen(seed))
        assert bool(chosen[0]) and not bool(chosen[5])
        assert int(chosen[1:5].sum()) == 2


def test_no_generator_breaks_ties_by_position():
    scores = torch.zeros(6)
    idx = topk_indices(scores, 3)
    assert sorted(idx.tolist()) == [0, 1, 2]


def test_topk_indices_nan_is_lowest():
    scores = torch.tensor([float("nan"), 1.0, float("nan"), 3.0, 2.0])
    idx = topk_indices(scores, 3, gen(0))
    assert sorted(idx.tolist()) == [1, 3, 4]
    idx = topk_indices(scores, 4, gen(0))
    assert len(set(idx.tolist())) == 4
    assert {1, 3, 4} <= set(idx.tolist())


def test_topk_indices_all_nan_and_inf():
    scores = torch.tensor([float("nan")] * 5)
    idx = topk_indices(scores, 2, gen(1))
    assert idx.numel() == 2 and len(set(idx.tolist())) == 2
    scores = torch.tensor([float("-inf"), float("nan"), float("inf"), 0.0])
    assert sorted(topk_indices(scores, 2).tolist()) == [2, 3]


def test_topk_indices_clips_k():
    scores = torch.arange(5.0)
    assert topk_indices(scores, 0).numel() == 0
    assert topk_indices(scores, -2).numel() == 0
    assert sorted(topk_indices(scores, 99).tolist()) == [0, 1, 2, 3, 4]
    assert topk_indices(scores, 2).dtype == torch.long


@settings(max_examples=50, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 6)),
    k=st.integers(-1, 40),
    seed=st.integers(0, 10_000),
)
def test_random_mask_exact_and_reproducible(shape, k, seed):
    a = random_mask(shape, k, generator(seed, 0, 1))
    b = random_mask(shape, k, generator(seed, 0, 1))
    assert a.dtype == torch.bool and tuple(a.shape) == shape
    assert int(a.sum()) == max(0, min(k, shape[0] * shape[1]))
    assert torch.equal(a, b)


def test_derive_seed_stable_and_distinct():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
    assert 0 <= derive_seed(5) < 2**63
    a = torch.rand(4, generator=generator(0, 1))
    b = torch.rand(4, generator=generator(0, 1))
    c = torch.rand(4, generator=generator(0, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)
