"""Sets of positions of a tensor as sorted flat indices, and selections over them.

A topology update on a sparse (CSR) layer must not build anything of the weight's dense shape:
its active positions are a sorted ``(nnz,)`` int64 index (the layout of
:class:`~sparsenets.masks.MaskStore`'s compact layers), and everything here works on such
indices with memory proportional to the indices involved, never to the tensor's size:

* membership, union, difference and complement of sorted index sets;
* :func:`sample_absent`: ``k`` positions drawn uniformly among those *not* in a set (SET's and
  MEST's random growth) by rejection sampling;
* :func:`topk_over_blocks`: the ``k`` highest scores among eligible positions when the scores
  come in blocks (RigL's dense gradient formed a row block at a time), with exactly the
  semantics of :func:`sparsenets.select.select_topk` (same threshold, same random tie-breaking),
  so a layer gets the same topology whichever backend holds it.

Pure functions; every result is a sorted int64 index unless said otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch

from .select import _compare_dtype, kth_largest

#: A source of score blocks: called with no argument, it yields ``(start, scores)`` pairs where
#: ``scores`` is a 1-D tensor for the flat positions ``start .. start + len(scores) - 1``; the
#: blocks cover the tensor once, in ascending order. It may be called twice (ties need a second
#: pass), and must yield the same values each time; blocks are read, never written.
ScoreBlocks = Callable[[], Iterator[tuple[int, torch.Tensor]]]
#: ``eligible(start, stop)``: bool ``(stop - start,)``, which of those flat positions may be chosen.
Eligibility = Callable[[int, int], torch.Tensor]

#: Below this share of free positions, :func:`sample_absent` enumerates them instead of sampling.
_ENUMERATE_BELOW = 0.5


def _empty(device: torch.device | str | None = None) -> torch.Tensor:
    return torch.empty(0, dtype=torch.int64, device=device)


def contains(index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Bool ``positions.shape``: whether each position is in the sorted ``index``."""
    if index.numel() == 0:
        return torch.zeros(positions.shape, dtype=torch.bool, device=positions.device)
    where = torch.searchsorted(index, positions).clamp_(max=index.numel() - 1)
    return index[where] == positions


def union(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The sorted union of two index sets."""
    return torch.unique(torch.cat([first, second]))


def merge(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The sorted union of two *disjoint* sorted index sets, in linear time (no sort)."""
    if second.numel() == 0:
        return first
    if first.numel() == 0:
        return second
    out = torch.empty(first.numel() + second.numel(), dtype=first.dtype, device=first.device)
    at = torch.searchsorted(first, second) + torch.arange(second.numel(), device=second.device)
    taken = torch.zeros(out.numel(), dtype=torch.bool, device=out.device)
    taken[at] = True
    out[at] = second
    out[~taken] = first
    return out


def difference(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The positions of sorted ``first`` that are not in sorted ``second`` (sorted)."""
    return first[~contains(second, first)]


def complement(index: torch.Tensor, numel: int) -> torch.Tensor:
    """The positions of ``0 .. numel - 1`` that are not in the sorted, distinct ``index``.

    Memory is proportional to the result and to ``index``, not to ``numel``: the gaps between
    consecutive members are expanded run by run.
    """
    device = index.device
    bounds = torch.cat([torch.tensor([-1], device=device), index, torch.tensor([numel], device=device)])
    starts = bounds[:-1] + 1  # first absent position after each member (and before the first)
    lengths = bounds[1:] - starts  # absent run lengths
    keep = lengths > 0
    starts, lengths = starts[keep], lengths[keep]
    total = int(lengths.sum())
    if total == 0:
        return _empty(device)
    run_start = torch.repeat_interleave(starts, lengths)
    offsets = torch.arange(total, device=device) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    return run_start + offsets


def block_members(index: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Bool ``(stop - start,)``: which flat positions of ``start .. stop - 1`` are in sorted ``index``."""
    member = torch.zeros(stop - start, dtype=torch.bool, device=index.device)
    if index.numel():
        lo, hi = torch.searchsorted(index, torch.tensor([start, stop], device=index.device)).tolist()
        member[index[lo:hi] - start] = True
    return member


def absent_from(*indices: torch.Tensor) -> Eligibility:
    """An :data:`Eligibility` allowing the positions in none of the sorted ``indices``."""

    def eligible(start: int, stop: int) -> torch.Tensor:
        allowed = ~block_members(indices[0], start, stop)
        for other in indices[1:]:
            allowed &= ~block_members(other, start, stop)
        return allowed

    return eligible


def in_first_not_second(first: torch.Tensor, second: torch.Tensor) -> Eligibility:
    """An :data:`Eligibility` allowing the positions of sorted ``first`` not in sorted ``second``."""

    def eligible(start: int, stop: int) -> torch.Tensor:
        return block_members(first, start, stop) & ~block_members(second, start, stop)

    return eligible


def sample_absent(
    exclude: torch.Tensor, numel: int, k: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``k`` distinct positions of ``0 .. numel - 1`` drawn uniformly among those not in ``exclude``.

    Args:
        exclude: sorted distinct int64 positions that may not be drawn.
        numel: the number of positions.
        k: how many to draw (clipped to the free positions).
        generator: CPU generator (the draw is reproducible under it).

    Returns:
        Sorted ``(k,)`` int64, on ``exclude``'s device. Memory is ``O(k + len(exclude))`` while
        at least half the positions are free (rejection sampling: draw uniformly, discard members
        of ``exclude`` and repeats, draw again for the shortfall); below that the free positions
        are enumerated with :func:`complement`.
    """
    device = exclude.device
    free = numel - exclude.numel()
    k = max(0, min(int(k), free))
    if k == 0:
        return _empty(device)
    if free < _ENUMERATE_BELOW * numel or k * 2 > free:
        candidates = complement(exclude.cpu(), numel)
        chosen = candidates[torch.randperm(free, generator=generator)[:k]]
        return torch.sort(chosen).values.to(device)
    exclude_cpu = exclude.cpu()
    chosen = _empty()
    while chosen.numel() < k:
        need = k - chosen.numel()
        draw = torch.randint(0, numel, (int(need * numel / free * 1.1) + 16,), generator=generator)
        draw = torch.unique(draw[~contains(exclude_cpu, draw)])
        draw = draw[~contains(chosen, draw)]
        if draw.numel() > need:  # the distinct draws are exchangeable: a random subset stays uniform
            draw = draw[torch.randperm(draw.numel(), generator=generator)[:need]]
        chosen = torch.sort(torch.cat([chosen, draw])).values
    return chosen.to(device)


def sample_absent_preferring(
    exclude: torch.Tensor,
    ever: torch.Tensor,
    numel: int,
    k: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Like :func:`sample_absent`, but positions outside ``ever`` (⊇ ``exclude``) go first.

    ITOP exploration: never-active positions are all taken before any once-active one.
    """
    n_never = numel - ever.numel()
    if n_never >= k:
        return sample_absent(ever, numel, k, generator)
    never = complement(ever, numel)
    once = difference(ever, exclude)
    rest = once[torch.randperm(once.numel(), generator=generator)[: k - n_never].to(once.device)]
    return torch.sort(torch.cat([never, rest])).values


def dense_blocks(scores: torch.Tensor) -> ScoreBlocks:
    """:data:`ScoreBlocks` of one block: the whole (flattened) ``scores``."""

    def blocks() -> Iterator[tuple[int, torch.Tensor]]:
        yield 0, scores.reshape(-1)

    return blocks


def _at_least(scores: torch.Tensor, count: int, sampler: torch.Generator) -> float:
    """A threshold ``t`` with at least ``count`` of ``scores`` (1-D, compare dtype) ``>= t``.

    A quantile of a random sample aims at about twice ``count``; when the sample misses, the
    exact ``count``-th largest value is taken instead. Either way the threshold is valid, so
    which one is used changes nothing in what the caller selects, only how fast.
    """
    n = scores.numel()
    if count >= n:
        return float("-inf")
    if n > 4 * _SAMPLE:
        sample = scores[torch.randint(0, n, (_SAMPLE,), generator=sampler).to(scores.device)]
        rank = math.ceil(2.0 * count / n * _SAMPLE)  # aim at twice count
        if rank < _SAMPLE:
            guess = float(kth_largest(sample, rank))
            if int(torch.count_nonzero(scores >= guess)) >= count:
                return guess
    return float(kth_largest(scores, count))


#: Sample size of :func:`_at_least`'s threshold guess.
_SAMPLE = 1 << 16


def topk_over_blocks(
    blocks: ScoreBlocks,
    k: int,
    eligible: Eligibility,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The ``k`` eligible positions with the highest scores, scores read block by block.

    The result equals ``select_topk(scores, k, eligible_mask, generator=generator)`` of the
    whole score tensor (NaN lowest; the threshold is the k-th largest eligible score; all
    positions above it are taken, and the rest from the positions tied at it, in position order
    or shuffled by ``generator``), while holding one block and a few times ``k`` candidates.

    Each block keeps its eligible scores at or above a threshold that at least ``k + 1`` of them
    reach, so every score at or above the final k-th largest (ties included) is among the
    candidates; only when ties are so many that the candidates must be cut is a second pass over
    the blocks needed to collect all the tied positions.

    Returns:
        Sorted ``(min(k, eligible count),)`` int64 flat positions.
    """
    k = max(0, int(k))
    sampler = torch.Generator().manual_seed(0)  # only speeds up thresholds; results do not depend on it
    cap = max(8 * (k + 1), 1 << 20)
    cand_scores: torch.Tensor | None = None
    cand_index = _empty()
    available, ties_complete = 0, True
    for start, block in blocks():
        allowed = eligible(start, start + block.numel()).to(block.device)
        available += int(torch.count_nonzero(allowed))
        scores = torch.nan_to_num(_compare_dtype(block.reshape(-1)), nan=float("-inf"))  # a new tensor
        scores.masked_fill_(~allowed, float("-inf"))
        keep = (scores >= _at_least(scores, k + 1, sampler)) & allowed
        position = keep.nonzero().squeeze(1)
        values, position = scores[position], position + start
        if cand_scores is None:
            cand_scores, cand_index = values, position
        else:
            cand_scores = torch.cat([cand_scores, values])
            cand_index = torch.cat([cand_index.to(position.device), position])
        if cand_scores.numel() > 2 * (k + 1):
            keep = cand_scores >= _at_least(cand_scores, k + 1, sampler)
            cand_scores, cand_index = cand_scores[keep], cand_index[keep]
        if cand_scores.numel() > cap:  # a flood of ties: cut to k + 1, collect ties again later
            top = torch.topk(cand_scores, k + 1, sorted=False).indices
            cand_scores, cand_index = cand_scores[top], cand_index[top]
            ties_complete = False
    k = min(k, available)
    if k == 0 or cand_scores is None:
        return _empty(cand_index.device)
    kth = kth_largest(cand_scores, k).to(cand_scores.device)
    above = cand_index[cand_scores > kth]
    tied = cand_scores == kth
    need = k - above.numel()
    if ties_complete or int(torch.count_nonzero(tied)) == need:
        ties = torch.sort(cand_index[tied]).values
    else:  # more positions may tie at the threshold than the candidates hold: collect them all
        found = []
        for start, block in blocks():
            allowed = eligible(start, start + block.numel()).to(block.device)
            scores = torch.nan_to_num(_compare_dtype(block.reshape(-1)), nan=float("-inf"))
            found.append((allowed & (scores == kth)).nonzero().squeeze(1) + start)
        ties = torch.cat(found)
    if generator is not None and ties.numel() > need:
        ties = ties[torch.randperm(ties.numel(), generator=generator).to(ties.device)]
    return torch.sort(torch.cat([above, ties[:need]])).values


def topk_over_blocks_preferring(
    blocks: ScoreBlocks,
    k: int,
    exclude: torch.Tensor,
    ever: torch.Tensor | None,
    numel: int,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`topk_over_blocks` among the positions not in ``exclude``; with ``ever`` (⊇
    ``exclude``), the positions outside ``ever`` are all taken before any other (as
    ``select_topk(..., prefer=...)`` does)."""
    if ever is None:
        return topk_over_blocks(blocks, k, absent_from(exclude), generator=generator)
    n_never = numel - ever.numel()
    if n_never >= k:
        return topk_over_blocks(blocks, k, absent_from(ever), generator=generator)
    never = complement(ever, numel)
    rest = topk_over_blocks(blocks, k - n_never, in_first_not_second(ever, exclude), generator=generator)
    return torch.sort(torch.cat([never, rest.to(never.device)])).values
