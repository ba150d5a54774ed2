"""The two baselines of pruning at initialization: magnitude and random.

* :class:`Magnitude`: keep the largest |w| of the initialization (global by default: one
  threshold across layers, the lottery-ticket choice; with ``allocation="lamp"`` it is LAMP).
* :class:`Random`: a uniformly random mask with the allocation's per-layer counts (uniform, ER,
  ERK, LAMP or custom). Each layer draws from ``generator(seed, 0, layer index,
  Stream.INIT_MASK)`` as :class:`~sparsenets.dst.DynamicSparsity` draws its own random initial
  mask, so for the same seed, density and distribution the two masks are equal. With
  ``allocation="global"`` every weight is equally likely to survive (random scores from the same
  streams, one global selection), as Synaptic-Flow's ``Rand`` pruner with global scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..rng import Stream, generator
from ..scores import magnitude, random_scores
from ..select import random_mask
from .base import InitPruner, PruneTask, keep_masks, target_params


@dataclass(frozen=True)
class Magnitude(InitPruner):
    """Keep the largest |w| of the initialization (Frankle & Carbin 2019, one-shot)."""

    name: ClassVar[str] = "magnitude"

    def scores(self, model: nn.Module, names: Sequence[str], data: object) -> dict[str, torch.Tensor]:
        return {n: magnitude(p) for n, p in target_params(model, names).items()}


@dataclass(frozen=True)
class Random(InitPruner):
    """A random mask with the allocation's per-layer counts (see the module docstring)."""

    name: ClassVar[str] = "random"

    def prune(self, task: PruneTask) -> dict[str, torch.Tensor]:
        params = target_params(task.model, task.names)
        gens = {n: generator(task.seed, 0, i, int(Stream.INIT_MASK)) for i, n in enumerate(task.names)}
        counts = task.counts()
        if counts is None:
            scores = {n: random_scores(tuple(p.shape), gens[n], p.device) for n, p in params.items()}
            return keep_masks(scores, task.density, seed=task.seed)
        return {n: random_mask(tuple(p.shape), counts[n], gens[n], p.device) for n, p in params.items()}
