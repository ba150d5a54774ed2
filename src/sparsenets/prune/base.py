"""What every pruning-at-initialization method shares: the allocation and the selection.

A method (:class:`InitPruner`, a frozen dataclass whose fields are its options) turns a model
into one score per target weight; :meth:`InitPruner.prune` then keeps, under the allocation,

* ``"global"``: the ``round(density · total)`` highest scores of all layers together (one
  threshold, :func:`sparsenets.allocation.global_masks`) — the choice of SNIP, GraSP and SynFlow;
* ``"lamp"``: per-layer counts from LAMP on the *weights* (:func:`sparsenets.allocation.lamp_counts`),
  then the highest scores of each layer;
* ``"uniform"``, ``"er"``, ``"erk"`` or custom densities: per-layer counts from the shapes
  (:func:`sparsenets.allocation.allocate_counts`), then the highest scores of each layer.

Counts are exact in every case; ties are broken with seeded generators of
:attr:`sparsenets.rng.Stream.PRUNE_TIES`: ``(seed, round, Stream.PRUNE_TIES)`` for a global
selection, ``(seed, round, layer index, Stream.PRUNE_TIES)`` per layer, and
``(seed, -1, Stream.PRUNE_TIES)`` for LAMP's counts (round 0 for one-shot methods, 1 … n for
SynFlow's rounds).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..allocation import (
    DISTRIBUTIONS,
    WEIGHT_ALLOCATIONS,
    CustomAllocation,
    allocate_counts,
    global_masks,
    lamp_counts,
)
from ..errors import choice_error
from ..rng import Stream, generator
from ..select import select_topk

Allocation = str | CustomAllocation
#: Allocation names accepted by :func:`sparsenets.prune_at_init` (a mapping or callable of
#: per-layer densities is also accepted).
ALLOCATIONS: tuple[str, ...] = WEIGHT_ALLOCATIONS + DISTRIBUTIONS


def check_allocation(allocation: object) -> Allocation:
    """``allocation`` lower-cased if it is one of :data:`ALLOCATIONS`, a mapping or callable as is."""
    if isinstance(allocation, str) and allocation.lower() in ALLOCATIONS:
        return allocation.lower()
    if isinstance(allocation, Mapping) or callable(allocation):
        return allocation  # type: ignore[return-value]
    raise choice_error("allocation", allocation, ALLOCATIONS + ("<dict of densities>",))


def tie_generator(seed: int, round_: int, layer: int | None = None) -> torch.Generator:
    """The tie-breaking generator of a pruning selection (see the module docstring)."""
    parts = (seed, round_) if layer is None else (seed, round_, layer)
    return generator(*parts, int(Stream.PRUNE_TIES))


def layer_counts(
    allocation: Allocation, weights: Mapping[str, torch.Tensor], density: float, seed: int
) -> dict[str, int] | None:
    """Per-layer keep counts of ``allocation`` at ``density``; ``None`` for ``"global"`` (whose
    counts follow from the scores)."""
    if allocation == "global":
        return None
    if allocation == "lamp":
        return lamp_counts(weights, density, generator=tie_generator(seed, -1))
    return allocate_counts({n: tuple(w.shape) for n, w in weights.items()}, density, allocation)


def keep_masks(
    scores: Mapping[str, torch.Tensor],
    budget: float | Mapping[str, int],
    *,
    seed: int,
    round_: int = 0,
    eligible: Mapping[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Keep masks of the highest ``scores``: globally for a density ``budget``, per layer for a
    ``{name: count}`` budget; only among ``eligible`` positions when given.

    Args:
        scores: ``{name: scores}`` in target order, higher = keep.
        budget: a density (one global threshold) or exact per-layer counts.
        seed, round_: parts of the tie-breaking generators.
        eligible: ``{name: bool mask}`` of the positions that may be kept.

    Returns:
        ``{name: bool mask}`` of the scores' shapes, exact in count.
    """
    if not isinstance(budget, Mapping):
        return global_masks(scores, budget, eligible=eligible, generator=tie_generator(seed, round_))
    return {
        name: select_topk(
            score,
            budget[name],
            None if eligible is None else eligible[name],
            generator=tie_generator(seed, round_, index),
        )
        for index, (name, score) in enumerate(scores.items())
    }


def target_params(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Parameter]:
    """``{name: parameter}`` of the targets, in ``names``' order."""
    params = dict(model.named_parameters())
    return {n: params[n] for n in names}


@dataclass(frozen=True)
class PruneTask:
    """What a method is asked to prune: the model, its target names (in model order), the kept
    share, the data (or None), the allocation and the seed of every generator."""

    model: nn.Module
    names: tuple[str, ...]
    density: float
    data: object
    allocation: Allocation
    seed: int

    def weights(self) -> dict[str, torch.Tensor]:
        """``{name: detached weight}`` of the targets."""
        return {n: p.detach() for n, p in target_params(self.model, self.names).items()}

    def counts(self) -> dict[str, int] | None:
        """The allocation's per-layer counts at the density (:func:`layer_counts`)."""
        return layer_counts(self.allocation, self.weights(), self.density, self.seed)


class InitPruner:
    """A pruning-at-initialization method: a frozen dataclass whose fields are its options.

    Subclasses set :attr:`name` and implement :meth:`scores` (one-shot methods), or override
    :meth:`prune` (iterative or random ones). They never modify the model.
    """

    name: ClassVar[str]

    def scores(self, model: nn.Module, names: Sequence[str], data: object) -> dict[str, torch.Tensor]:
        """``{name: scores}`` of the target weights, the weights' shapes, higher = keep."""
        raise NotImplementedError

    def prune(self, task: PruneTask) -> dict[str, torch.Tensor]:
        """``{name: bool keep mask}`` of the targets at ``task.density`` under ``task.allocation``."""
        scores = self.scores(task.model, task.names, task.data)
        budget = task.counts()
        return keep_masks(scores, task.density if budget is None else budget, seed=task.seed)
