"""What a dynamic-sparse-training method may use, and the method hierarchy's shared parts.

A method is a frozen dataclass of hyperparameters. It never owns tensors and never sees the
sparsifier running it: every hook gets a :class:`SparsityContext`, a narrow protocol with the
masks, the weight and gradients of a layer (on either backend: dense masked weights or CSR
layers), named random streams, the method's own typed state (:class:`MethodState`) and whether
the next step is an update. ``update`` returns the new masks; the sparsifier installs them
(zeroes dropped weights, initialises grown ones, resets their optimizer state) in one place.

The hierarchy::

    Method                      static topology; the hooks
    └── Scheduled               update interval and end fraction (when updates happen)
        ├── Regrowing           drop fraction and its schedule, ITOP exploration, regrowth init
        │   └── DropAndGrow     the fixed-budget loop: SET, RigL, SNFS, MEST, CTRE
        └── GMP                 gradual magnitude pruning (dense-to-sparse)
            └── GraNet          GMP + Regrowing: pruning plus neuroregeneration
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

import torch

from ..errors import SparsenetsError, choice_error
from ..index_sets import (
    ScoreBlocks,
    dense_blocks,
    difference,
    merge,
    sample_absent,
    sample_absent_preferring,
    topk_over_blocks_preferring,
)
from ..masks import MaskStore, mask_to_index
from ..rng import Stream
from ..schedules import DropFraction, UpdateSchedule
from ..scores import magnitude, sign_sided_rank
from ..select import select_bottomk, select_topk

REGROW_INITS = ("zero", "random", "normal")


class SparsityContext(Protocol):
    """All a method may use of the sparsifier that runs it.

    Attributes:
        masks: the current masks ``{weight name: bool tensor}`` (read; install changes by
            returning them from :meth:`Method.update`).
        target_counts: ``{name: nnz}`` the allocation asks for at the end of training.
        initial_counts: ``{name: nnz}`` at step 0 (not yet set while
            :meth:`Method.initial_counts` runs).
        allocation: the layer-wise allocation the counts come from (``"erk"``, ``"er"``,
            ``"uniform"`` or custom densities).
        total_steps: the planned number of ``step()`` calls.
        step_count: the steps done so far.
        device: where the masks and weights live.
        state: the method's own per-run tensors (what :meth:`Method.make_state` built).
    """

    masks: MaskStore
    target_counts: Mapping[str, int]
    initial_counts: Mapping[str, int]
    allocation: Any
    total_steps: int
    step_count: int
    device: torch.device
    state: MethodState

    def weight(self, name: str) -> torch.Tensor:
        """The dense weight of ``name`` (its shape), detached; CSR layers materialize it."""
        ...

    def grad(self, name: str) -> torch.Tensor | None:
        """The gradient as the optimizer sees it (zero at inactive positions), dense."""
        ...

    def dense_grad(self, name: str) -> torch.Tensor:
        """∂L/∂W of the dense weight, inactive positions included: in :meth:`Method.update`
        of a method with ``needs_dense_grad``, and in :meth:`Method.observe` (masked layers)."""
        ...

    def dense_grad_blocks(self, name: str) -> ScoreBlocks:
        """:meth:`dense_grad`, flat, as :data:`~sparsenets.index_sets.ScoreBlocks` (CSR layers
        form it a row block at a time instead of holding the whole matrix)."""
        ...

    def active_weight(self, name: str) -> torch.Tensor:
        """``(nnz,)`` the weight at the active positions, in ``masks.index(name)`` order."""
        ...

    def active_grad(self, name: str) -> torch.Tensor | None:
        """``(nnz,)`` the gradient at the active positions (None before the first backward)."""
        ...

    def gather_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` ``(rows, ...)`` in rank order: what a method measures on its
        shard of the batch, made the whole batch's under data parallelism (else ``tensor``)."""
        ...

    def generator(self, step: int, name: str, stream: Stream) -> torch.Generator:
        """The CPU generator of one random choice, derived from (seed, step, layer, stream)."""
        ...

    def next_step_is_update(self) -> bool:
        """Whether the coming ``step()`` updates the topology (for capturing in forward hooks)."""
        ...

    def add_forward_hook(self, name: str, hook: Callable) -> None:
        """Register a forward hook on the module owning weight ``name`` (removed on close)."""
        ...


def scratch(**kwargs: Any) -> Any:
    """A :class:`MethodState` field for what one step captures for its own update."""
    return field(default_factory=dict, metadata={"scratch": True}, **kwargs)


@dataclass
class MethodState:
    """Base of a method's typed per-run tensors: each field is ``{layer name: tensor}``.

    Ordinary fields persist: they are saved in checkpoints as flat keys
    ``<prefix><field>/<layer>`` and moved with the model. Fields declared with :func:`scratch`
    hold what the forward/backward pass before a step captures for that step's update; the
    sparsifier clears them when ``step()`` returns, so nothing outlives its step.
    """

    prefix: ClassVar[str] = ""

    def _fields(self, scratch_fields: bool) -> list[str]:
        return [f.name for f in fields(self) if bool(f.metadata.get("scratch")) == scratch_fields]

    def persistent(self) -> dict[str, torch.Tensor]:
        """The persistent tensors as flat ``{"<prefix><field>/<layer>": tensor}`` (not copies)."""
        return {
            f"{self.prefix}{kind}/{layer}": tensor
            for kind in self._fields(False)
            for layer, tensor in getattr(self, kind).items()
        }

    def load_persistent(self, flat: Mapping[str, torch.Tensor], device: torch.device) -> None:
        """Restore what :meth:`persistent` returned (validated: every key known)."""
        kinds = {f"{self.prefix}{kind}": getattr(self, kind) for kind in self._fields(False)}
        for key, tensor in flat.items():
            kind, _, layer = key.partition("/")
            if kind not in kinds or not layer:
                raise SparsenetsError(f"checkpoint holds unknown method state {key!r}")
            kinds[kind][layer] = tensor.to(device)

    def captured(self) -> dict[str, torch.Tensor]:
        """The scratch tensors held now, flat as in :meth:`persistent`."""
        return {
            f"{self.prefix}{kind}/{layer}": tensor
            for kind in self._fields(True)
            for layer, tensor in getattr(self, kind).items()
        }

    def clear_scratch(self) -> None:
        """Drop every scratch tensor (the sparsifier calls this at the end of each step)."""
        for kind in self._fields(True):
            getattr(self, kind).clear()

    def to(self, device: torch.device) -> None:
        """Move every tensor to ``device`` (in place)."""
        for kind in self._fields(False) + self._fields(True):
            tensors = getattr(self, kind)
            for layer in tensors:
                tensors[layer] = tensors[layer].to(device)


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


def drop_count(fraction: float, nnz: int, free: int) -> int:
    """How many of ``nnz`` active weights an update drops (and regrows) at drop fraction
    ``fraction``: ``round(fraction · nnz)``, at most ``nnz`` and at most the ``free``
    (inactive) positions regrowth can choose from."""
    return min(round(fraction * nnz), nnz, free)


@dataclass(frozen=True)
class Method:
    """Base class: a fixed topology (no updates). Subclasses override the hooks they need."""

    name: ClassVar[str] = "static"
    #: whether ``update`` needs the dense gradient (before masking) at update steps.
    needs_dense_grad: ClassVar[bool] = False
    #: whether the method runs on the sparse (CSR) backend.
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

    def regrowth_values(
        self, shape: tuple[int, ...], n_grown: int, generator: torch.Generator
    ) -> torch.Tensor | None:
        """CPU values ``(n_grown,)`` the weights grown in a layer of ``shape`` start at (in the
        order of their sorted positions), or None for zero."""
        return None

    def make_state(self, ctx: SparsityContext) -> MethodState:
        """The method's per-run tensors (none by default)."""
        return MethodState()

    def initial_counts(self, ctx: SparsityContext) -> dict[str, int]:
        """Active weights per layer at the start (default: the target allocation)."""
        return dict(ctx.target_counts)

    def attach(self, ctx: SparsityContext) -> None:
        """Called once the sparsifier is built (e.g. to register forward hooks)."""

    def observe(self, ctx: SparsityContext, step: int) -> None:
        """Called every step before gradients are masked (``ctx.dense_grad`` is readable)."""

    def is_update(self, ctx: SparsityContext, step: int) -> bool:
        """Whether the topology changes at ``step``."""
        return False

    def update(self, ctx: SparsityContext, step: int) -> dict[str, torch.Tensor]:
        """New masks ``{name: bool tensor}`` for the layers that change."""
        return {}


@dataclass(frozen=True)
class Scheduled(Method):
    """Topology updates every ``update_every`` steps until ``end_fraction`` of training.

    Args:
        update_every: ΔT, steps between topology updates.
        end_fraction: fraction of training after which the topology is frozen.
    """

    name: ClassVar[str] = "scheduled"
    update_every: int = 100
    end_fraction: float = 0.75

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.end_fraction <= 1.0:
            raise SparsenetsError(f"end_fraction must be in (0, 1], got {self.end_fraction}")
        UpdateSchedule(self.update_every, 1)  # validates update_every

    def end_step(self, ctx: SparsityContext) -> int:
        return int(self.end_fraction * ctx.total_steps)

    def update_schedule(self, ctx: SparsityContext) -> UpdateSchedule:
        return UpdateSchedule(self.update_every, self.end_step(ctx))

    def is_update(self, ctx: SparsityContext, step: int) -> bool:
        return self.update_schedule(ctx).is_update(step)


@dataclass(frozen=True)
class Regrowing(Scheduled):
    """Options of methods that drop weights and regrow as many elsewhere.

    Args:
        drop_fraction: α, the initial share of a layer's active weights dropped per update.
        drop_schedule: ``"cosine"`` (α/2·(1+cos(πt/T_end))), ``"linear"`` or ``"constant"``.
        explore: ITOP exploration — grow never-active positions before any other.
        regrow_init: ``"zero"`` (grown weights start at 0), ``"random"`` (drawn from
            U(-1/√fan_in, 1/√fan_in), PyTorch's default Linear/Conv range) or ``"normal"``
            (drawn from N(0, regrow_std²); SET's reference code grows at N(0, 1)/10).
        regrow_std: the standard deviation of ``regrow_init="normal"``.
    """

    name: ClassVar[str] = "regrowing"
    drop_fraction: float = 0.3
    drop_schedule: str = "cosine"
    explore: bool = False
    regrow_init: str = "zero"
    regrow_std: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.regrow_init not in REGROW_INITS:
            raise choice_error("regrow_init", self.regrow_init, REGROW_INITS)
        if not self.regrow_std > 0 or math.isinf(self.regrow_std):
            raise SparsenetsError(f"regrow_std must be a positive finite number, got {self.regrow_std}")
        DropFraction(self.drop_fraction, 1, self.drop_schedule)  # validates both

    def regrowth_values(
        self, shape: tuple[int, ...], n_grown: int, generator: torch.Generator
    ) -> torch.Tensor | None:
        if self.regrow_init == "random":
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            return (torch.rand(n_grown, generator=generator) * 2 - 1) * bound
        if self.regrow_init == "normal":
            return torch.randn(n_grown, generator=generator) * self.regrow_std
        return None

    def drop_fraction_at(self, ctx: SparsityContext, step: int) -> float:
        return DropFraction(self.drop_fraction, self.end_step(ctx), self.drop_schedule).value(step)

    def preferred(self, ctx: SparsityContext, name: str) -> torch.Tensor | None:
        """Positions grown first: the never-active ones when exploring (ITOP), else None."""
        return ~ctx.masks.ever_active(name) if self.explore else None


@dataclass(frozen=True)
class TopologyChange:
    """One layer's new topology, as sorted flat indices (what :meth:`DropAndGrow.update` returns).

    Attributes:
        index: ``(nnz_new,)`` int64, the active positions after the update.
        grown: ``(n_grown,)`` int64, the positions of ``index`` that were inactive before.
    """

    index: torch.Tensor
    grown: torch.Tensor


def as_topology_change(
    change: torch.Tensor | TopologyChange, old_index: torch.Tensor, shape: tuple[int, ...]
) -> TopologyChange:
    """What :meth:`Method.update` returned for one layer (a bool mask of ``shape`` or a
    :class:`TopologyChange`), as a validated :class:`TopologyChange` against the sorted
    ``old_index``."""
    if isinstance(change, TopologyChange):
        return change
    if not isinstance(change, torch.Tensor) or change.dtype != torch.bool or tuple(change.shape) != tuple(shape):
        got = f"{change.dtype} {tuple(change.shape)}" if isinstance(change, torch.Tensor) else type(change).__name__
        raise SparsenetsError(f"a method's update must give a bool mask of shape {tuple(shape)} or a TopologyChange, got {got}")
    new_index = mask_to_index(change).to(old_index.device)
    return TopologyChange(new_index, difference(new_index, old_index))


@dataclass(frozen=True)
class DropAndGrow(Regrowing):
    """Fixed budget: every ``update_every`` steps drop ``f(t)·nnz`` weights and grow as many.

    Options: see :class:`Scheduled` and :class:`Regrowing`. Dropped and grown positions are
    disjoint: growth picks among positions that were inactive before the update, so a
    just-dropped weight is never regrown in the same update. A preset says how it grows: at
    random (``grows_at_random``) or by the highest :meth:`grow_score` (or :meth:`grow_blocks`);
    it may also override :meth:`drop_score` and :meth:`grow_counts`.

    The update works on sorted flat indices (:mod:`sparsenets.index_sets`): drop scores are read
    at the active positions only, random growth is sampled without any dense tensor, and scored
    growth reads its scores block by block, so on CSR layers nothing of the weight's dense shape
    is built unless the grow score itself is dense.

    Args:
        sign_sided: drop the same share of the positive and of the negative weights, each side
            by its own lowest drop scores (SET's reference code: "the smallest positive and the
            largest negative weights"), instead of the lowest scores of the whole layer.
            Weights that are exactly zero go first.
    """

    name: ClassVar[str] = "drop_and_grow"
    #: grow uniformly at random among the inactive positions (no grow score).
    grows_at_random: ClassVar[bool] = False
    sign_sided: bool = False

    def drop_score(self, ctx: SparsityContext, name: str) -> torch.Tensor:
        """``(nnz,)`` score of the active weights (in :meth:`MaskStore.index` order); the lowest
        are dropped. Default |w|."""
        return magnitude(ctx.active_weight(name))

    def grows_randomly(self, name: str) -> bool:
        """Whether layer ``name`` grows at random (default: ``grows_at_random``)."""
        return self.grows_at_random

    def layer_drop_score(self, ctx: SparsityContext, name: str) -> torch.Tensor:
        """:meth:`drop_score`, made a per-sign-side rank when ``sign_sided``."""
        score = self.drop_score(ctx, name)
        if self.sign_sided:
            score = sign_sided_rank(score, ctx.active_weight(name))
        return score

    def grow_score(
        self, ctx: SparsityContext, name: str, gen: torch.Generator, n_grow: int
    ) -> torch.Tensor:
        """Score of every position (the weight's shape); the ``n_grow`` highest inactive ones
        are grown."""
        raise NotImplementedError(f"method {self.name!r} defines neither grow_score nor grows_at_random")

    def grow_blocks(
        self, ctx: SparsityContext, name: str, gen: torch.Generator, n_grow: int
    ) -> ScoreBlocks:
        """The grow scores as :data:`~sparsenets.index_sets.ScoreBlocks` (default: one block,
        :meth:`grow_score`). Override to produce them a block at a time."""
        return dense_blocks(self.grow_score(ctx, name, gen, n_grow))

    def grow_counts(self, ctx: SparsityContext, drop_counts: dict[str, int]) -> dict[str, int]:
        """How many positions each layer grows (default: as many as it dropped)."""
        return dict(drop_counts)

    def drop_counts(self, ctx: SparsityContext, step: int) -> dict[str, int]:
        fraction = self.drop_fraction_at(ctx, step)
        return {
            name: drop_count(fraction, ctx.masks.nnz(name), ctx.masks.numel(name) - ctx.masks.nnz(name))
            for name in ctx.masks
        }

    def update(self, ctx: SparsityContext, step: int) -> dict[str, TopologyChange]:
        drops = self.drop_counts(ctx, step)
        grows = self.grow_counts(ctx, drops)
        return {name: self.layer_update(ctx, step, name, drops[name], grows[name]) for name in ctx.masks}

    def layer_update(self, ctx: SparsityContext, step: int, name: str, n_drop: int, n_grow: int) -> TopologyChange:
        """Drop ``n_drop`` and grow ``n_grow`` positions of layer ``name``."""
        active = ctx.masks.index(name)
        numel = ctx.masks.numel(name)
        generator = ctx.generator(step, name, Stream.DROP)  # drop ties, then scored-growth ties
        kept = active
        if n_drop > 0:
            dropped = select_bottomk(self.layer_drop_score(ctx, name), n_drop, generator=generator)
            kept = active[~dropped.to(active.device)]
        grown = active[:0]
        if n_grow > 0:
            ever = ctx.masks.ever_index(name) if self.explore else None
            grow_gen = ctx.generator(step, name, Stream.GROW)
            if self.grows_randomly(name):
                grown = (
                    sample_absent(active, numel, n_grow, grow_gen) if ever is None
                    else sample_absent_preferring(active, ever, numel, n_grow, grow_gen)
                )
            else:
                grown = topk_over_blocks_preferring(
                    self.grow_blocks(ctx, name, grow_gen, n_grow), n_grow, active, ever, numel,
                    generator=generator,
                )
            grown = grown.to(active.device)
        return TopologyChange(merge(kept, grown), grown)


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
