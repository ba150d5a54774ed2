"""Fixed-budget dynamic sparse training presets: Static, SET, RigL, SNFS, MEST, CTRE.

Each preset only says how it scores drops and growth; the loop is
:class:`~sparsenets.dst.base.DropAndGrow`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from ..allocation import proportional_counts
from ..errors import SparsenetsError
from ..scores import (
    activation_cosine_similarity,
    gradient_magnitude,
    mest_drop_score,
    random_scores,
)
from ..select import select_topk
from .base import DropAndGrow, Method, MethodState, SparsityContext, scratch


@dataclass(frozen=True)
class Static(Method):
    """Static sparse training: the initial (random, allocated) mask never changes."""

    name: ClassVar[str] = "static"


@dataclass(frozen=True)
class SET(DropAndGrow):
    """Sparse Evolutionary Training (Mocanu et al., 2018): drop by |w|, grow at random."""

    name: ClassVar[str] = "set"
    grows_at_random: ClassVar[bool] = True


@dataclass(frozen=True)
class RigL(DropAndGrow):
    """RigL (Evci et al., 2020): drop by |w|, grow by |∂L/∂w| of the dense gradient."""

    name: ClassVar[str] = "rigl"
    needs_dense_grad: ClassVar[bool] = True

    def grow_blocks(self, ctx, name, gen, n_grow):
        blocks = ctx.dense_grad_blocks(name)

        def magnitudes():
            for start, block in blocks():
                yield start, gradient_magnitude(block)

        return magnitudes


@dataclass
class SNFSState(MethodState):
    """SNFS's exponential average of the dense gradient, per layer (checkpointed as
    ``snfs_momentum/<layer>``)."""

    prefix: ClassVar[str] = "snfs_"
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class SNFS(DropAndGrow):
    """Sparse momentum (Dettmers & Zettlemoyer, 2019).

    Drops by |w| in every layer, then redistributes the total regrowth across layers in
    proportion to each layer's mean |momentum| over its active weights, and grows by |momentum|.
    The momentum is an exponential average of the *dense* gradient, kept in the method's state
    (:class:`SNFSState`) because the optimizer only sees masked gradients.
    The global nnz is exact; per-layer nnz changes.

    Args:
        momentum: β of the dense-gradient momentum.
    """

    name: ClassVar[str] = "snfs"
    sparse_backend: ClassVar[bool] = False
    sparse_unsupported_reason: ClassVar[str] = (
        "it keeps a dense momentum of the dense gradient, updated every step"
    )
    momentum: float = 0.9

    def make_state(self, ctx: SparsityContext) -> SNFSState:
        return SNFSState(momentum={
            name: torch.zeros(shape, device=ctx.device, dtype=ctx.weight(name).dtype)
            for name, shape in ctx.masks.shapes.items()
        })

    @torch.no_grad()
    def observe(self, ctx, step):
        for name, momentum in ctx.state.momentum.items():
            grad = ctx.dense_grad(name)
            if grad is not None:
                momentum.mul_(self.momentum).add_(grad)

    def grow_score(self, ctx, name, gen, n_grow):
        return ctx.state.momentum[name].abs()

    def grow_counts(self, ctx, drop_counts):
        weights, caps = {}, {}
        for name, mask in ctx.masks.items():
            momentum = ctx.state.momentum[name].abs()
            active = ctx.masks.nnz(name)
            weights[name] = float(momentum[mask].mean()) if active else 0.0
            caps[name] = mask.numel() - active
        return proportional_counts(sum(drop_counts.values()), weights, caps)


@dataclass(frozen=True)
class MEST(DropAndGrow):
    """MEST elastic mutation (Yuan et al., 2021): drop by |w| + λ|∂L/∂w|, grow at random.

    Only the gradient at active positions is used, so no dense gradient is needed.

    Args:
        grad_weight: λ (unverified in the paper's text; 1.0 here, a parameter).
    """

    name: ClassVar[str] = "mest"
    grows_at_random: ClassVar[bool] = True
    grad_weight: float = 1.0

    def drop_score(self, ctx, name):
        return mest_drop_score(ctx.active_weight(name), ctx.active_grad(name), self.grad_weight)


@dataclass(frozen=True)
class CTRE(DropAndGrow):
    """Cosine-similarity topology evolution (Atashgahi et al., CTRE): no dense gradient.

    Grows the connections between the neurons whose activations over the last training batch
    before the update are most alike: |cos(y_i, x_j)| for output neuron i and input neuron j
    (conv: channels, activations averaged over space). A fraction of the growth is random
    exploration. Activations are captured by forward hooks only on the forward pass that precedes
    an update step.

    Args:
        random_fraction: share of the grown weights chosen at random (unverified default 0.2).
        absolute: rank by |cos| (True) or by signed cosine.
    """

    name: ClassVar[str] = "ctre"
    random_fraction: float = 0.2
    absolute: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.random_fraction <= 1.0:
            raise SparsenetsError(f"random_fraction must be in [0, 1], got {self.random_fraction}")

    def make_state(self, ctx: SparsityContext) -> CTREState:
        return CTREState()

    def attach(self, ctx):
        for name in ctx.masks:
            ctx.add_forward_hook(name, _CosineCapture(ctx, name))

    def grow_score(self, ctx, name, gen, n_grow):
        mask = ctx.masks[name]
        noise = random_scores(mask.shape, gen, ctx.device)
        similarity = ctx.state.similarity.get(name)
        if similarity is None:
            return noise
        while similarity.dim() < mask.dim():
            similarity = similarity.unsqueeze(-1)
        similarity = similarity.expand(mask.shape)
        if self.absolute:
            similarity = similarity.abs()
        # The top (1 - random_fraction)·n_grow inactive positions by similarity outrank all
        # others (score > 1); the rest of the growth goes to the highest noise, i.e. at random.
        n_similar = n_grow - round(self.random_fraction * n_grow)
        by_similarity = select_topk(similarity, n_similar, ~mask, generator=gen)
        return torch.where(by_similarity, 2.0, noise)


@dataclass
class CTREState(MethodState):
    """The ``(n_out, n_in)`` activation similarity of each layer, captured by a forward hook
    on the training batch before an update step and used by that step (scratch)."""

    similarity: dict[str, torch.Tensor] = scratch()


class _CosineCapture:
    """Forward hook storing CTRE's (n_out, n_in) activation similarity before an update step."""

    def __init__(self, ctx: SparsityContext, name: str):
        self.ctx, self.name = ctx, name

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        if not module.training or not self.ctx.next_step_is_update():
            return
        x, y = inputs[0], output
        if x.dim() > 2 and isinstance(module, torch.nn.modules.conv._ConvNd):
            x = x.flatten(2).mean(-1)  # (B, C_in)
            y = y.flatten(2).mean(-1)  # (B, C_out)
        else:
            x = x.reshape(-1, x.shape[-1])  # (tokens, n_in)
            y = y.reshape(-1, y.shape[-1])  # (tokens, n_out)
        # under data parallelism: the whole global batch, so every rank grows the same
        x, y = self.ctx.gather_batch(x), self.ctx.gather_batch(y)
        self.ctx.state.similarity[self.name] = activation_cosine_similarity(x, y)
