"""Selection of the top-k positions of a score, restricted to eligible positions.

Pure functions. Ties at the k-th value are broken at random with the given generator (or by
position when none is given), so selections are exact in count and reproducible.
"""

from __future__ import annotations

import torch


def topk_indices(scores: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the ``k`` largest entries of a 1-D ``scores`` (ties broken at random).

    Args:
        scores: (n,) float tensor; NaN counts as the lowest value.
        k: number of indices, clipped to [0, n].
        generator: CPU generator for tie-breaking; ``None`` breaks ties by position.

    Returns:
        (k,) int64 tensor of distinct indices (unordered).
    """
    n = scores.numel()
    k = max(0, min(int(k), n))
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=scores.device)
    if k == n:
        return torch.arange(n, device=scores.device)
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    kth = torch.topk(scores, k, sorted=False).values.min()
    above = (scores > kth).nonzero().squeeze(1)
    ties = (scores == kth).nonzero().squeeze(1)
    need = k - above.numel()
    if generator is not None and ties.numel() > need:
        order = torch.randperm(ties.numel(), generator=generator).to(ties.device)
        ties = ties[order]
    return torch.cat([above, ties[:need]])


def select_topk(
    scores: torch.Tensor,
    k: int,
    eligible: torch.Tensor | None = None,
    *,
    prefer: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask of the ``k`` highest-scoring eligible positions.

    Args:
        scores: float tensor of any shape.
        k: how many positions to select (clipped to the number of eligible positions).
        eligible: bool tensor of ``scores``' shape; ``None`` means every position.
        prefer: bool tensor; preferred eligible positions are all taken before any other
            (used by ITOP exploration to grow never-active positions first).
        generator: CPU generator for tie-breaking.

    Returns:
        bool tensor of ``scores``' shape with exactly ``min(k, eligible.sum())`` True entries.
    """
    flat = scores.reshape(-1)
    chosen = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    pool = (
        torch.arange(flat.numel(), device=scores.device)
        if eligible is None
        else eligible.reshape(-1).nonzero().squeeze(1)
    )
    k = max(0, min(int(k), pool.numel()))
    if prefer is not None and k > 0:
        preferred = prefer.reshape(-1)[pool]
        first, rest = pool[preferred], pool[~preferred]
        if first.numel() >= k:
            pool = first
        else:
            chosen[first] = True
            k -= first.numel()
            pool = rest
    chosen[pool[topk_indices(flat[pool], k, generator)]] = True
    return chosen.reshape(scores.shape)


def select_bottomk(
    scores: torch.Tensor,
    k: int,
    eligible: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest-scoring eligible positions (see :func:`select_topk`)."""
    return select_topk(-scores, k, eligible, generator=generator)


def random_mask(shape: tuple[int, ...], k: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """Boolean mask of ``shape`` with exactly ``k`` True positions drawn uniformly at random."""
    numel = 1
    for dim in shape:
        numel *= dim
    chosen = torch.zeros(numel, dtype=torch.bool)
    chosen[torch.randperm(numel, generator=generator)[: max(0, min(int(k), numel))]] = True
    return chosen.reshape(shape).to(device) if device is not None else chosen.reshape(shape)
