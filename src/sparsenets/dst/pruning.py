"""Gradual methods whose budget shrinks during training: GMP and GraNet.

Both follow Zhu & Gupta's cubic schedule per layer, in counts: at an update step t the layer
keeps exactly ``n_final + round((n_initial - n_final) · (1 - p)³)`` weights, with
``p = (t - start) / (last_update - start)``, so the final allocation is reached exactly at the
last update step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..allocation import allocate_counts
from ..errors import SparsenetsError, check_density
from ..rng import Stream
from ..schedules import CubicSchedule, UpdateSchedule
from ..scores import gradient_magnitude, magnitude
from ..select import select_bottomk
from .base import Regrowing, Scheduled, SparsityContext, drop_and_grow, drop_count


@dataclass(frozen=True)
class GMP(Scheduled):
    """Gradual magnitude pruning (Zhu & Gupta, 2017): dense-to-sparse, no regrowth.

    Args:
        initial_density: density at the start (1.0 = dense), allocated like the target.
        start_fraction: fraction of training before pruning starts.
        end_fraction: fraction of training at which the target density is reached.
        update_every: steps between pruning steps.
    """

    name: ClassVar[str] = "gmp"
    initial_density: float = 1.0
    start_fraction: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_density(self.initial_density, "initial_density")
        if not 0.0 <= self.start_fraction < self.end_fraction:
            raise SparsenetsError(
                f"start_fraction must be in [0, end_fraction={self.end_fraction}), "
                f"got {self.start_fraction}"
            )

    def check(self, total_steps: int) -> None:
        end = int(self.end_fraction * total_steps)
        start = int(self.start_fraction * total_steps)
        if UpdateSchedule(self.update_every, end, start).last_update <= start:
            raise SparsenetsError(
                f"update_every={self.update_every} leaves no pruning step between steps {start} "
                f"and {end} of {total_steps}; lower update_every or train longer"
            )

    def update_schedule(self, ctx: SparsityContext) -> UpdateSchedule:
        return UpdateSchedule(
            self.update_every, self.end_step(ctx), int(self.start_fraction * ctx.total_steps)
        )

    def initial_counts(self, ctx: SparsityContext) -> dict[str, int]:
        # A custom allocation fixes only the final densities; the start is then uniform.
        allocation = ctx.allocation if isinstance(ctx.allocation, str) else "uniform"
        counts = allocate_counts(ctx.masks.shapes, self.initial_density, allocation)
        # The start can never hold fewer weights than the target.
        return {n: max(counts[n], ctx.target_counts[n]) for n in counts}

    def scheduled_counts(self, ctx: SparsityContext, step: int) -> dict[str, int]:
        """Exactly how many weights each layer keeps after the pruning step at ``step``."""
        schedule = self.update_schedule(ctx)
        remaining = CubicSchedule(1.0, 0.0, schedule.start_step, schedule.last_update).value(step)
        return {
            name: final + round((ctx.initial_counts[name] - final) * remaining)
            for name, final in ctx.target_counts.items()
        }

    def update(self, ctx: SparsityContext, step: int) -> dict[str, torch.Tensor]:
        keep = self.scheduled_counts(ctx, step)
        new_masks = {}
        for name, mask in ctx.masks.items():
            n_prune = max(ctx.masks.nnz(name) - keep[name], 0)
            pruned = select_bottomk(
                magnitude(ctx.weight(name)), n_prune, mask,
                generator=ctx.generator(step, name, Stream.DROP),
            )
            new_masks[name] = mask & ~pruned
        return new_masks


@dataclass(frozen=True)
class GraNet(Regrowing, GMP):
    """GraNet (Liu et al., 2021): gradual magnitude pruning plus neuroregeneration.

    At every update step each layer is first pruned by |w| to its scheduled count; then a further
    ``f(t)`` share of its weights is dropped by |w| and as many inactive positions are regrown by
    |∂L/∂w| of the dense gradient, so the scheduled count holds exactly. Regrowth draws only from
    positions inactive before the update. ``initial_density=1`` is dense-to-sparse; a value
    below 1 (e.g. 0.5) is sparse-to-sparse. Options: those of :class:`GMP` and
    :class:`~sparsenets.dst.base.Regrowing`.
    """

    name: ClassVar[str] = "granet"
    needs_dense_grad: ClassVar[bool] = True

    def update(self, ctx: SparsityContext, step: int) -> dict[str, torch.Tensor]:
        pruned_masks = GMP.update(self, ctx, step)
        fraction = self.drop_fraction_at(ctx, step)
        new_masks = {}
        for name, old_mask in ctx.masks.items():
            mask = pruned_masks[name]
            n_regrow = drop_count(fraction, int(torch.count_nonzero(mask)), old_mask.numel() - ctx.masks.nnz(name))
            after_drop = drop_and_grow(
                mask,
                drop_score=magnitude(ctx.weight(name)),
                grow_score=None,
                n_drop=n_regrow,
                n_grow=0,
                generator=ctx.generator(step, name, Stream.REGROW_DROP),
            )
            grown = drop_and_grow(
                old_mask,
                drop_score=None,
                grow_score=gradient_magnitude(ctx.dense_grad(name)),
                n_drop=0,
                n_grow=n_regrow,
                prefer=self.preferred(ctx, name),
                generator=ctx.generator(step, name, Stream.GROW),
            ) & ~old_mask
            new_masks[name] = after_drop | grown
        return new_masks
