"""Selection of the top-k positions of a score, restricted to eligible positions.

Pure functions. Ties at the k-th value are broken at random with the given generator (or by
position when none is given), so selections are exact in count and reproducible.
"""

from __future__ import annotations

import numpy as np
import torch


def kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of a 1-D float tensor (1 <= k <= n), as a 0-d tensor.

    On CPU this uses NumPy's introselect (``np.partition``), several times faster than
    ``torch.topk`` for large k; elsewhere ``torch.topk``.
    """
    n = scores.numel()
    if scores.device.type == "cpu":
        values = scores.detach().numpy()
        return torch.as_tensor(np.partition(values, n - k)[n - k])
    return torch.topk(scores, k, sorted=False).values.min()


def topk_indices(scores: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the ``k`` largest entries of a 1-D ``scores`` (ties broken at random).

    Args:
        scores: (n,) float tensor; NaN counts as the lowest value.
        k: number of indices, clipped to [0, n].
        generator: CPU generator for tie-breaking; ``None`` breaks ties by position.

    Returns:
        (k,) int64 tensor of distinct indices (unordered).
    """
    chosen = _topk_flat(scores.reshape(-1), k, None, generator)
    return chosen.nonzero().squeeze(1)


def _topk_flat(
    scores: torch.Tensor, k: int, eligible: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Bool (n,) mask of the k highest eligible scores; k must not exceed the eligible count."""
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    if eligible is None:
        if k >= n:
            return torch.ones(n, dtype=torch.bool, device=scores.device)
        kth = kth_largest(scores, k)
    else:
        # The threshold comes from the eligible values only (compacting is cheap, and a
        # selection over many equal fill values is slow).
        kth = kth_largest(scores[eligible], k)
    kth = kth.to(scores.device)
    chosen = scores > kth
    ties = scores == kth
    if eligible is not None:
        chosen &= eligible
        ties &= eligible
    need = k - int(chosen.sum())
    tie_index = ties.nonzero().squeeze(1)
    if generator is not None and tie_index.numel() > need:
        tie_index = tie_index[torch.randperm(tie_index.numel(), generator=generator).to(tie_index.device)]
    chosen[tie_index[:need]] = True
    return chosen


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
    pool = None if eligible is None else eligible.reshape(-1)
    available = flat.numel() if pool is None else int(pool.sum())
    k = max(0, min(int(k), available))
    if prefer is not None and k > 0:
        preferred = prefer.reshape(-1) if pool is None else prefer.reshape(-1) & pool
        n_preferred = int(preferred.sum())
        if n_preferred >= k:
            return _topk_flat(flat, k, preferred, generator).reshape(scores.shape)
        rest = ~preferred if pool is None else pool & ~preferred
        chosen = preferred | _topk_flat(flat, k - n_preferred, rest, generator)
        return chosen.reshape(scores.shape)
    return _topk_flat(flat, k, pool, generator).reshape(scores.shape)


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
