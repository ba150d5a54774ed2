"""The method interface and the shared drop-and-grow loop of dynamic sparse training.

A method is a frozen dataclass of hyperparameters. It never owns tensors: per-run state (masks,
buffers such as SNFS's momentum) lives in the :class:`~sparsenets.dst.sparsifier.DynamicSparsity`
passed to every hook as ``ctx``. Methods read the dense weight and the gradient at active
positions through ``ctx.weight(name)`` and ``ctx.grad(name)`` (materialized at update steps on
the sparse backend), so one code path drives both backends. ``update`` returns the new masks; the sparsifier applies them,
zeroes dropped weights, initialises grown ones and resets their optimizer state in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

import torch

from ..errors import SparsenetsError, choice_error
from ..schedules import DropFraction, UpdateSchedule
from ..scores import magnitude
from ..select import select_bottomk, select_topk

if TYPE_CHECKING:
    from .sparsifier import DynamicSparsity

REGROW_INITS = ("zero", "random")
Grads = dict[str, torch.Tensor]


def check_option_types(method: Method) -> None:
    """Check each option against the type of its default (ints given for floats are converted).

    Raises a one-line :class:`SparsenetsError` such as
    ``option update_every of method 'rigl' must be an integer, got '3'``.
    """
    expected_names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    for spec in fields(method):
        default, value = spec.default, getattr(method, spec.name)
        kind = type(default)
        if kind not in expected_names:
            continue
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            object.__setattr__(method, spec.name, float(value))
            ok = True
        if not ok:
            raise SparsenetsError(
                f"option {spec.name} of method {method.name!r} must be {expected_names[kind]}, "
                f"got {value!r}"
            )


@dataclass(frozen=True)
class Method:
    """Base class: a fixed topology (no updates). Subclasses override the hooks they need."""

    name: ClassVar[str] = "static"
    #: whether ``update`` needs the dense gradient (before masking) at update steps.
    needs_dense_grad: ClassVar[bool] = False
    #: whether the method runs on the sparse (CSR) backend. Methods read weights and gradients
    #: through ``ctx.weight(name)`` / ``ctx.grad(name)``, which work on both backends.
    sparse_backend: ClassVar[bool] = True
    #: why not, when ``sparse_backend`` is False (shown in the error).
    sparse_unsupported_reason: ClassVar[str] = ""

    def __post_init__(self) -> None:
        check_option_types(self)

    def options(self) -> dict[str, object]:
        """The hyperparameters as a plain dict (for configs and reports)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def check(self, total_steps: int) -> None:
        """Validate against the run length; raise :class:`SparsenetsError` on bad settings."""

    def initial_counts(self, ctx: DynamicSparsity) -> dict[str, int]:
        """Active weights per layer at the start (default: the target allocation)."""
        return dict(ctx.target_counts)

    def attach(self, ctx: DynamicSparsity) -> None:
        """Called once the sparsifier is built (e.g. to register forward hooks)."""

    def observe(self, ctx: DynamicSparsity, step: int) -> None:
        """Called every step before gradients are masked (dense ``param.grad`` is readable)."""

    def is_update(self, ctx: DynamicSparsity, step: int) -> bool:
        """Whether the topology changes at ``step``."""
        return False

    def update(self, ctx: DynamicSparsity, step: int, grads: Grads | None) -> dict[str, torch.Tensor]:
        """New masks ``{name: bool tensor}`` for the layers that change."""
        return {}


@dataclass(frozen=True)
class DropAndGrow(Method):
    """Fixed budget: every ``update_every`` steps drop ``f(t)·nnz`` weights and grow as many.

    Args:
        update_every: ΔT, steps between topology updates.
        drop_fraction: α, the initial drop fraction.
        drop_schedule: ``"cosine"`` (α/2·(1+cos(πt/T_end))), ``"linear"`` or ``"constant"``.
        end_fraction: fraction of training after which the topology is frozen.
        explore: ITOP exploration — grow never-active positions before any other.
        regrow_init: ``"zero"`` (grown weights start at 0) or ``"random"`` (drawn from
            U(-1/√fan_in, 1/√fan_in), PyTorch's default Linear/Conv range).

    Dropped and grown positions are disjoint: growth picks among positions that were inactive
    before the update, so a just-dropped weight is never regrown in the same update.
    """

    name: ClassVar[str] = "drop_and_grow"
    update_every: int = 100
    drop_fraction: float = 0.3
    drop_schedule: str = "cosine"
    end_fraction: float = 0.75
    explore: bool = False
    regrow_init: str = "zero"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regrow_init not in REGROW_INITS:
            raise choice_error("regrow_init", self.regrow_init, REGROW_INITS)
        if not 0.0 < self.end_fraction <= 1.0:
            raise SparsenetsError(f"end_fraction must be in (0, 1], got {self.end_fraction}")
        # Validation of the remaining fields happens in the schedule constructors.
        UpdateSchedule(self.update_every, 1)
        DropFraction(self.drop_fraction, 1, self.drop_schedule)

    # -- schedules ---------------------------------------------------------------------------
    def end_step(self, ctx: DynamicSparsity) -> int:
        return int(self.end_fraction * ctx.total_steps)

    def update_schedule(self, ctx: DynamicSparsity) -> UpdateSchedule:
        return UpdateSchedule(self.update_every, self.end_step(ctx))

    def drop_fraction_at(self, ctx: DynamicSparsity, step: int) -> float:
        return DropFraction(self.drop_fraction, self.end_step(ctx), self.drop_schedule).value(step)

    def is_update(self, ctx: DynamicSparsity, step: int) -> bool:
        return self.update_schedule(ctx).is_update(step)

    # -- scores (override in presets) --------------------------------------------------------
    def drop_score(self, ctx: DynamicSparsity, name: str, grads: Grads | None) -> torch.Tensor:
        """Score of active weights; the lowest are dropped. Default |w|."""
        return magnitude(ctx.weight(name))

    def grow_score(
        self, ctx: DynamicSparsity, name: str, grads: Grads | None, gen: torch.Generator, n_grow: int
    ) -> torch.Tensor:
        """Score of inactive positions; the ``n_grow`` highest are grown."""
        raise NotImplementedError

    def grow_counts(self, ctx: DynamicSparsity, drop_counts: dict[str, int], grads: Grads | None) -> dict[str, int]:
        """How many positions each layer grows (default: as many as it dropped)."""
        return dict(drop_counts)

    # -- the shared loop ---------------------------------------------------------------------
    def drop_counts(self, ctx: DynamicSparsity, step: int) -> dict[str, int]:
        fraction = self.drop_fraction_at(ctx, step)
        counts = {}
        for name, mask in ctx.masks.items():
            nnz = int(mask.sum())
            counts[name] = min(round(fraction * nnz), nnz, mask.numel() - nnz)
        return counts

    def update(self, ctx: DynamicSparsity, step: int, grads: Grads | None) -> dict[str, torch.Tensor]:
        drops = self.drop_counts(ctx, step)
        grows = self.grow_counts(ctx, drops, grads)
        return {
            name: drop_and_grow(
                ctx.masks[name],
                drop_score=self.drop_score(ctx, name, grads) if drops[name] else None,
                grow_score=(
                    self.grow_score(ctx, name, grads, ctx.generator(step, index, 1), grows[name])
                    if grows[name]
                    else None
                ),
                n_drop=drops[name],
                n_grow=grows[name],
                prefer=~ctx.masks.ever_active(name) if self.explore else None,
                generator=ctx.generator(step, index, 0),
            )
            for index, name in enumerate(ctx.masks)
        }


def drop_and_grow(
    mask: torch.Tensor,
    *,
    drop_score: torch.Tensor | None,
    grow_score: torch.Tensor | None,
    n_drop: int,
    n_grow: int,
    prefer: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One layer's topology update (pure).

    Args:
        mask: (same shape as the weight) bool, the current topology.
        drop_score: active positions with the ``n_drop`` lowest scores are dropped.
        grow_score: of the positions inactive in ``mask``, the ``n_grow`` highest are grown.
        prefer: bool; preferred positions are grown first (ITOP exploration).
        generator: tie-breaking.

    Returns:
        The new mask: ``mask - dropped + grown`` with dropped ⊆ mask and grown ∩ mask = ∅.
    """
    new_mask = mask.clone()
    if n_drop > 0 and drop_score is not None:
        new_mask &= ~select_bottomk(drop_score, n_drop, mask, generator=generator)
    if n_grow > 0 and grow_score is not None:
        new_mask |= select_topk(grow_score, n_grow, ~mask, prefer=prefer, generator=generator)
    return new_mask
