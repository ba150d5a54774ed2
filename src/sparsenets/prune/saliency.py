"""Data-driven saliency at initialization: SNIP and GraSP.

Both score the model's **actual initialization** (no re-initialized copy: GraSP's reference
re-draws the Linear layers with Xavier-normal on its copy before scoring, we do not), with the
cross-entropy loss, in ``eval()`` mode (restored afterwards) as the SNIP reference and the
Synaptic-Flow re-implementations do: batch-norm uses its running statistics and dropout is off,
so the scores do not depend on how the pruning batch is split. The model is not modified: the
gradients are taken with ``torch.autograd.grad`` and ``.grad`` fields are left alone.

The pruning batch is processed in chunks of ``batch_size`` samples (all at once by default)
with the loss ``L = Σ_chunks CE_sum(chunk) / N``, so gradients and Hessian-gradient products
equal those of the whole batch's mean loss whatever the chunking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SparsenetsError
from ..scores import grasp, snip
from . import data as pruning_data
from .base import InitPruner, target_params


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode for the block, then restore each one's flag."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _check_options(method: str, samples_per_class: int, num_classes: int | None, batch_size: int | None) -> None:
    for option, value in (("samples_per_class", samples_per_class), ("num_classes", num_classes), ("batch_size", batch_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise SparsenetsError(f"{method} option {option} must be a positive integer, got {value!r}")


def _logits(model: nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    out = model(x)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise SparsenetsError(f"{method} needs a model returning logits (B, num_classes), got {got}")
    return out


def _requiring_grad(params: dict[str, nn.Parameter], method: str) -> list[nn.Parameter]:
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if frozen:
        raise SparsenetsError(f"{method} differentiates the targets, but {frozen} do not require grad")
    return list(params.values())


def _grads(loss: torch.Tensor, params: list[nn.Parameter], create_graph: bool = False) -> list[torch.Tensor]:
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True)]


def _chunk_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, temperature: float, batch_size: int | None, method: str
) -> Iterator[torch.Tensor]:
    """Per chunk, Σ CE(model(x_c) / temperature, y_c) / N: the chunks add up to the mean loss."""
    for xc, yc in pruning_data.chunks(x, y, batch_size):
        yield F.cross_entropy(_logits(model, xc, method) / temperature, yc, reduction="sum") / x.shape[0]


def loss_gradient(
    model: nn.Module,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    temperature: float = 1.0,
    batch_size: int | None = None,
    method: str = "pruning",
) -> list[torch.Tensor]:
    """g = ∂L/∂θ of the mean cross-entropy of ``model(x) / temperature`` over ``(x (N, ...), y (N,))``.

    Returns:
        one tensor per parameter, its shape (zeros for a parameter the loss does not reach).
    """
    total = [torch.zeros_like(p) for p in params]
    for loss in _chunk_losses(model, x, y, temperature, batch_size, method):
        for acc, g in zip(total, _grads(loss, params), strict=True):
            acc += g
    return total


def hessian_gradient(
    model: nn.Module,
    params: list[nn.Parameter],
    x: torch.Tensor,
    y: torch.Tensor,
    grad: list[torch.Tensor],
    *,
    temperature: float = 1.0,
    batch_size: int | None = None,
    method: str = "grasp",
) -> list[torch.Tensor]:
    """H g of the same loss as :func:`loss_gradient`, by double backpropagation:
    ∂/∂θ (gᵀ ∂L/∂θ) with ``grad`` = g held constant (GraSP).

    Returns:
        one tensor per parameter, its shape.
    """
    total = [torch.zeros_like(p) for p in params]
    for loss in _chunk_losses(model, x, y, temperature, batch_size, method):
        first = _grads(loss, params, create_graph=True)
        flow = sum((g.detach() * f).sum() for g, f in zip(grad, first, strict=True))
        for acc, hg in zip(total, _grads(flow, params), strict=True):
            acc += hg
    return total


def _pruning_batch(
    model: nn.Module,
    device: torch.device,
    data: object,
    num_classes: int | None,
    take: Callable[[Iterator[pruning_data.Batch], int], pruning_data.Batch],
    method: str,
) -> pruning_data.Batch:
    """The pruning batch ``take(batches, num_classes)`` on ``device``; ``num_classes`` defaults to
    the width of the model's output on the first sample (call in eval mode)."""
    (x0, _), batches = pruning_data.peek(data, method)
    if num_classes is None:
        with torch.no_grad():
            num_classes = _logits(model, x0[:1].to(device), method).shape[1]
    x, y = take(batches, num_classes)
    return x.to(device), y.to(device)


@dataclass(frozen=True)
class Snip(InitPruner):
    """SNIP (Lee et al. 2019): keep the highest |∂L/∂w ⊙ w| of one pass over the pruning batch.

    Scores the model's actual initialization, in eval mode (see the module docstring).

    Options:
        samples_per_class: the pruning batch is the first ``samples_per_class × num_classes``
            samples of ``data`` (default 10, Synaptic-Flow's ``prune_dataset_ratio``; SNIP's
            paper used one training batch of 100–128). Not class-balanced.
        num_classes: default: the width of the model's output.
        batch_size: samples per forward pass (all at once by default); the scores do not depend on it.
    """

    name: ClassVar[str] = "snip"
    samples_per_class: int = 10
    num_classes: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        _check_options(self.name, self.samples_per_class, self.num_classes, self.batch_size)

    def scores(self, model: nn.Module, names: Sequence[str], data: object) -> dict[str, torch.Tensor]:
        params = target_params(model, names)
        device = next(iter(params.values())).device

        def take(batches: Iterator[pruning_data.Batch], classes: int) -> pruning_data.Batch:
            return pruning_data.first_samples(batches, self.samples_per_class * classes, self.name)

        with evaluating(model):
            x, y = _pruning_batch(model, device, data, self.num_classes, take, self.name)
            plist = _requiring_grad(params, self.name)
            grads = loss_gradient(model, plist, x, y, batch_size=self.batch_size, method=self.name)
        return {n: snip(p, g) for (n, p), g in zip(params.items(), grads, strict=True)}


@dataclass(frozen=True)
class GraSP(InitPruner):
    """GraSP (Wang et al. 2020): remove the highest −w ⊙ (H g), i.e. keep the lowest.

    g and H g are taken of the cross-entropy of the logits divided by ``temperature`` over a
    class-balanced batch (the first ``samples_per_class`` samples of each class in ``data``).
    Scores the model's actual initialization, in eval mode; the reference re-initializes the
    Linear layers of its copy (Xavier-normal) and runs in train mode (see the module docstring).

    Options:
        samples_per_class: default 10 (the reference configs').
        num_classes: default: the width of the model's output.
        temperature: the logits are divided by it (default 200, as the reference).
        batch_size: samples per forward pass (all at once by default); the scores do not depend on it.
    """

    name: ClassVar[str] = "grasp"
    samples_per_class: int = 10
    num_classes: int | None = None
    temperature: float = 200.0
    batch_size: int | None = None

    def __post_init__(self) -> None:
        _check_options(self.name, self.samples_per_class, self.num_classes, self.batch_size)
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise SparsenetsError(f"grasp option temperature must be a positive number, got {self.temperature!r}")

    def grasp_scores(self, model: nn.Module, names: Sequence[str], data: object) -> dict[str, torch.Tensor]:
        """GraSP's own scores −w ⊙ (H g) per target (higher = *remove*)."""
        params = target_params(model, names)
        device = next(iter(params.values())).device

        def take(batches: Iterator[pruning_data.Batch], classes: int) -> pruning_data.Batch:
            return pruning_data.balanced_samples(batches, self.samples_per_class, classes, self.name)

        with evaluating(model):
            x, y = _pruning_batch(model, device, data, self.num_classes, take, self.name)
            plist = _requiring_grad(params, self.name)
            options = {"temperature": float(self.temperature), "batch_size": self.batch_size, "method": self.name}
            grad = loss_gradient(model, plist, x, y, **options)
            hg = hessian_gradient(model, plist, x, y, grad, **options)
        return {n: grasp(p, h) for (n, p), h in zip(params.items(), hg, strict=True)}

    def scores(self, model: nn.Module, names: Sequence[str], data: object) -> dict[str, torch.Tensor]:
        """Keep scores: the negated GraSP scores, so the highest GraSP scores are removed."""
        return {n: -s for n, s in self.grasp_scores(model, names, data).items()}
