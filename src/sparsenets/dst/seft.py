"""SEFT: sparsity-evolution fine-tuning of an already pruned network (Xiao et al., 2025).

A pruned model is fine-tuned while its topology evolves and its sparsity stays exact: every
``update_every`` steps each row (or each N:M group) grows the inactive weights with the largest
gradient magnitude accumulated since the last update, and is pruned straight back to its count by
a sensitivity score. The paper's code was not available here; this module implements the method as
the paper describes it, with these choices made explicit as options:

* **Grow score**: Σ_t |∂L/∂W_t| over the steps of the window (``grad_window``; 0 = every step
  since the previous update), read from the dense gradient of the masked layer.
* **Prune-back score** (``prune_score``): ``"sensitivity"`` |W| · Σ_t |∂L/∂W_t| (first-order
  saliency |w·g| with the accumulated gradient) or ``"magnitude"`` |W|.
* **What competes in the prune-back**: only the weights that were active *before* the update. A
  weight grown at zero has zero sensitivity, so pruning back over all active weights would delete
  every grown weight at once and the topology would never change; grown weights instead get
  ``update_every`` optimizer steps before they compete.
* **Where swaps happen**: per row, so every row keeps its exact count (one-shot pruners such as
  Wanda and SparseGPT prune per row); with ``structure="N:M"`` a swap stays inside one group of M
  (the groups whose best inactive weight has the largest grow score swap first), so every group
  keeps exactly N.
* **How many** (``grow_fraction``, annealed by ``grow_schedule``): per update a row swaps
  ``round(f(t) · kept)`` weights (N:M: that many groups, at most one swap per group).

Defaults: ΔT = 20 steps and f = 0.05 (cosine-annealed to 0 at ``end_fraction`` 0.75 of the run).
A one-shot pruned mask is already a good one, chosen from calibration statistics, so an update
changes a small share of it (RigL's 0.3 is for masks that start at random), and ΔT is long enough
for a grown weight to get a few Adam steps before it competes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..errors import SparsenetsError, choice_error
from ..schedules import DropFraction, UpdateSchedule
from ..select import NM, parse_structure
from .base import MethodState, Scheduled, SparsityContext

PRUNE_SCORES = ("sensitivity", "magnitude")


def swap_per_row(mask: torch.Tensor, grow_score: torch.Tensor, prune_score: torch.Tensor,
                 fraction: float) -> torch.Tensor:
    """One SEFT update of a weight's mask, every row keeping its count (pure).

    Args:
        mask: ``(out, in)`` bool, the current topology.
        grow_score: ``(out, in)``; in each row the inactive positions with the highest scores grow.
        prune_score: ``(out, in)``; in each row the active positions with the lowest scores go.
        fraction: row ``r`` swaps ``round(fraction · kept_r)`` weights (at most its inactive count).

    Returns:
        The new ``(out, in)`` bool mask: same count in every row, grown ∩ mask = ∅, pruned ⊆ mask.
    """
    kept = mask.sum(1)  # (out,)
    n_swap = torch.minimum(torch.round(fraction * kept.double()).long(), mask.shape[1] - kept)  # (out,)
    most = int(n_swap.max()) if n_swap.numel() else 0
    if most == 0:
        return mask.clone()
    minus_inf = torch.tensor(float("-inf"), dtype=torch.float32, device=mask.device)
    grow = torch.where(mask, minus_inf, grow_score.float().nan_to_num(nan=0.0))
    drop = torch.where(mask, prune_score.float().nan_to_num(nan=0.0).neg(), minus_inf)  # highest = lowest score
    rank_ok = torch.arange(most, device=mask.device) < n_swap[:, None]  # (out, most)
    grown_cols = grow.topk(most, dim=1).indices  # (out, most)
    pruned_cols = drop.topk(most, dim=1).indices
    new = mask.clone()
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand(-1, most)
    new[rows[rank_ok], pruned_cols[rank_ok]] = False
    new[rows[rank_ok], grown_cols[rank_ok]] = True
    return new


def swap_per_group(mask: torch.Tensor, grow_score: torch.Tensor, prune_score: torch.Tensor,
                   fraction: float, structure: NM) -> torch.Tensor:
    """One SEFT update of an N:M mask: at most one swap per group of M, so every group keeps N (pure).

    In each row the ``round(fraction · kept)`` groups whose best inactive weight has the highest
    grow score swap it in for their active weight with the lowest prune score.

    Args:
        mask: ``(out, in)`` bool, N kept in every group of M consecutive inputs; ``in % M == 0``.
        grow_score, prune_score: ``(out, in)`` as in :func:`swap_per_row`.
        fraction: share of a row's kept weights swapped (as that many groups, at most all of them).
        structure: the N:M pattern.

    Returns:
        The new ``(out, in)`` bool mask, N:M exact.
    """
    out, n_in = mask.shape
    m = structure.m
    groups = n_in // m
    kept = structure.n * groups
    n_swap = min(round(fraction * kept), groups)
    if n_swap == 0:
        return mask.clone()
    minus_inf = torch.tensor(float("-inf"), dtype=torch.float32, device=mask.device)
    shaped = mask.reshape(out, groups, m)
    grow = torch.where(shaped, minus_inf, grow_score.float().nan_to_num(nan=0.0).reshape(out, groups, m))
    drop = torch.where(shaped, prune_score.float().nan_to_num(nan=0.0).neg().reshape(out, groups, m), minus_inf)
    best_grow, grow_at = grow.max(dim=2)  # (out, groups)
    drop_at = drop.argmax(dim=2)  # (out, groups): the active weight with the lowest prune score
    chosen = best_grow.topk(n_swap, dim=1).indices  # (out, n_swap) groups
    rows = torch.arange(out, device=mask.device)[:, None].expand(-1, n_swap)
    new = shaped.clone()
    new[rows, chosen, drop_at.gather(1, chosen)] = False
    new[rows, chosen, grow_at.gather(1, chosen)] = True
    return new.reshape(out, n_in)


@dataclass
class SEFTState(MethodState):
    """SEFT's accumulated gradient magnitude Σ|∂L/∂W| per layer, in the weight's shape
    (checkpointed as ``seft_grad_sum/<layer>``; absent outside the accumulation window)."""

    prefix: ClassVar[str] = "seft_"
    grad_sum: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class SEFT(Scheduled):
    """Sparsity-evolution fine-tuning: per-row (or per N:M group) grow by accumulated |gradient|
    and prune back by sensitivity, the count of every row exact at every step (module doc).

    Args:
        update_every: ΔT, steps between topology updates (default 20).
        end_fraction: fraction of the run after which the topology is frozen (default 0.75).
        grow_fraction: share of a row's kept weights swapped at the first update (default 0.05).
        grow_schedule: how that share is annealed: ``"cosine"`` (default), ``"linear"``,
            ``"constant"``.
        grad_window: accumulate |∂L/∂W| over the last ``grad_window`` steps before each update;
            0 (default) = every step since the previous update. The accumulator is one float32
            tensor per layer in the weight's shape, held only while a window is open.
        prune_score: ``"sensitivity"`` (|W|·Σ|∂L/∂W|, default) or ``"magnitude"`` (|W|).
        structure: ``"unstructured"`` (per-row counts kept) or ``"N:M"`` (every group kept N:M).
        transposed: names of weights stored (in, out) (GPT-2's Conv1D): their rows are columns.
    """

    name: ClassVar[str] = "seft"
    sparse_backend: ClassVar[bool] = False
    sparse_unsupported_reason: ClassVar[str] = "it reads the dense gradient of every step in its window"
    update_every: int = 20
    end_fraction: float = 0.75
    grow_fraction: float = 0.05
    grow_schedule: str = "cosine"
    grad_window: int = 0
    prune_score: str = "sensitivity"
    structure: str = "unstructured"
    transposed: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        DropFraction(self.grow_fraction, 1, self.grow_schedule)  # validates both
        if self.prune_score not in PRUNE_SCORES:
            raise choice_error("prune_score", self.prune_score, PRUNE_SCORES)
        if not isinstance(self.grad_window, int) or self.grad_window < 0:
            raise SparsenetsError(f"grad_window must be an integer >= 0, got {self.grad_window!r}")
        parse_structure(self.structure)  # validates
        object.__setattr__(self, "transposed", tuple(self.transposed))

    def check(self, total_steps: int) -> None:
        if UpdateSchedule(self.update_every, int(self.end_fraction * total_steps)).last_update == 0:
            raise SparsenetsError(
                f"seft with update_every={self.update_every} and end_fraction={self.end_fraction} makes no "
                f"topology update in {total_steps} steps; lower update_every (or use the fixed-mask method)"
            )

    def make_state(self, ctx: SparsityContext) -> SEFTState:
        return SEFTState()

    def _accumulates(self, ctx: SparsityContext, step: int) -> bool:
        """Whether the gradient of ``step`` counts toward the next update's scores."""
        schedule = self.update_schedule(ctx)
        if step > schedule.last_update:
            return False
        if self.grad_window == 0:
            return True
        next_update = -(-step // self.update_every) * self.update_every
        return next_update - step < self.grad_window

    @torch.no_grad()
    def observe(self, ctx: SparsityContext, step: int) -> None:
        if not self._accumulates(ctx, step):
            return
        for name in ctx.masks:
            grad = ctx.dense_grad(name)
            if grad is None:
                continue
            total = ctx.state.grad_sum.get(name)
            if total is None:
                total = ctx.state.grad_sum[name] = torch.zeros(grad.shape, dtype=torch.float32, device=grad.device)
            total.add_(grad.abs())

    @torch.no_grad()
    def update(self, ctx: SparsityContext, step: int) -> dict[str, torch.Tensor]:
        fraction = DropFraction(self.grow_fraction, self.end_step(ctx), self.grow_schedule).value(step)
        structure = parse_structure(self.structure)
        changes = {}
        for name in ctx.masks:
            total = ctx.state.grad_sum.pop(name, None)
            if total is None:
                continue  # no gradient reached this layer in the window: nothing to rank by
            mask = ctx.masks[name]
            weight = ctx.weight(name).float()
            prune = weight.abs() * total if self.prune_score == "sensitivity" else weight.abs()
            flip = name in self.transposed
            if flip:
                mask, total, prune = mask.t(), total.t(), prune.t()
            if isinstance(structure, NM):
                new = swap_per_group(mask, total, prune, fraction, structure)
            else:
                new = swap_per_row(mask, total, prune, fraction)
            changes[name] = new.t().contiguous() if flip else new
        return changes
