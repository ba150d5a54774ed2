"""Lottery Pools (Yin et al., 2023): interpolate tickets of adjacent IMP rounds, without more training.

Starting from the ticket of the target round t, candidates are the tickets of the rounds nearest
to it (t−1, t+1, t−2, t+2, …, those that exist). For each candidate, every α of a grid
(0.05, 0.10, …, 0.95) gives ``α · pool + (1 − α) · candidate`` over all float parameters, which is
re-pruned by global magnitude to the target density; the best α is kept only if it raises the
accuracy on a validation split held out of the training set. The pool therefore never costs more
training, and its mask has exactly the target density.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .allocation import global_masks

#: The interpolation weights tried for each candidate.
ALPHAS = tuple(round(0.05 * i, 2) for i in range(1, 20))

Weights = dict[str, torch.Tensor]


def candidate_order(target: int, n_rounds: int) -> list[int]:
    """Rounds by distance from ``target``, the earlier first at equal distance: t−1, t+1, t−2, …"""
    order = []
    for distance in range(1, n_rounds):
        for index in (target - distance, target + distance):
            if 0 <= index < n_rounds:
                order.append(index)
    return order


def interpolate(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float) -> Weights:
    """``α · a + (1 − α) · b`` for floating tensors; other entries (integer buffers) from ``a``."""
    return {k: alpha * v + (1.0 - alpha) * b[k] if v.is_floating_point() else v.clone() for k, v in a.items()}


def reprune(
    weights: Mapping[str, torch.Tensor], names: Sequence[str], density: float, generator: torch.Generator | None = None
) -> tuple[Weights, dict[str, torch.Tensor]]:
    """Global magnitude pruning of ``names`` in ``weights`` to ``density``: (pruned weights, masks)."""
    masks = global_masks({n: weights[n].abs() for n in names}, density, generator=generator)
    pruned = {k: v * masks[k] if k in masks else v.clone() for k, v in weights.items()}
    return pruned, masks


def lottery_pool(
    tickets: Sequence[Mapping[str, torch.Tensor]],
    target: int,
    names: Sequence[str],
    density: float,
    validate: Callable[[Weights], float],
    *,
    alphas: Sequence[float] = ALPHAS,
    generator: torch.Generator | None = None,
    max_candidates: int | None = None,
) -> tuple[Weights, dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Greedy Lottery Pool around ticket ``target``.

    Args:
        tickets: the trained weights (``state_dict``) of every round, in round order.
        target: the round whose density the pool keeps.
        names: the pruned parameters.
        density: the target density (of ``names`` together).
        validate: ``weights -> validation accuracy``.
        alphas: interpolation weights of the pool (the candidate gets ``1 − α``).
        generator: tie-breaking of the re-pruning.
        max_candidates: only the this many rounds nearest ``target`` (default: every round).

    Returns:
        ``(weights, masks, steps)``: the pool, its masks, and one record per candidate
        (``round``, best ``alpha``, its validation accuracy, whether it was taken).
    """
    pool, masks = reprune(tickets[target], names, density, generator)
    best = validate(pool)
    steps: list[dict[str, Any]] = [{"round": target, "alpha": 1.0, "validation_accuracy": best, "taken": True}]
    for index in candidate_order(target, len(tickets))[:max_candidates]:
        tried = []
        for alpha in alphas:
            weights, candidate_masks = reprune(interpolate(pool, tickets[index], alpha), names, density, generator)
            tried.append((validate(weights), alpha, weights, candidate_masks))
        accuracy, alpha, weights, candidate_masks = max(tried, key=lambda t: t[0])  # the first best α
        taken = accuracy > best
        steps.append({"round": index, "alpha": alpha, "validation_accuracy": accuracy, "taken": taken})
        if taken:
            pool, masks, best = weights, candidate_masks, accuracy
    return pool, masks, steps
