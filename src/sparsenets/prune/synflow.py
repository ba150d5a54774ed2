"""SynFlow: iterative, data-free pruning by synaptic flow (Tanaka et al. 2020, "Pruning neural
networks without any data by iteratively conserving synaptic flow").

On a deep copy of the model with every parameter and buffer replaced by its absolute value, in
``eval()`` mode, the input is all ones (1, *input_shape) and R = Σ outputs. A weight's score is
|w ⊙ ∂R/∂w| (:func:`sparsenets.scores.synflow`). Scoring and pruning alternate for ``rounds``
rounds (100 by default); in round k = 1 … n the masked copy is scored again and the kept share
is d^(k/n) (the reference's exponential schedule), so the last round lands exactly on d.
Pruned weights stay pruned (each round selects among the survivors), so the masks are nested.

Allocation: ``"global"`` (the reference's scope) keeps ``round(total · d^(k/n))`` weights in
round k by one threshold. Any other allocation fixes the final per-layer counts c_l once (from
the initial weights or the shapes) and round k keeps ``round(numel_l · (c_l / numel_l)^(k/n))``
in each layer, the same schedule per layer.

Numerics: R and the scores are products along paths through every layer, so in a deep network
they leave float32's range: float32 flushes them to exactly zero (and they tie, and the mask
depends on tie-breaking), or overflows them to inf. The copy is therefore scored in float64 by
default (``dtype``), and the selection compares float64 scores in float64; non-finite scores
raise an error naming ``dtype``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import SparsenetsError
from ..scores import synflow
from ..targets import DEFAULT_TARGET_TYPES
from . import data as pruning_data
from .base import InitPruner, PruneTask, keep_masks, target_params


def absolute_copy(model: nn.Module, dtype: torch.dtype, zero_biases: bool = False) -> nn.Module:
    """A deep copy of ``model`` in ``dtype`` and ``eval()`` mode whose parameters and numeric
    buffers (batch-norm statistics included) are their absolute values; with ``zero_biases``
    every parameter named ``bias`` is zero instead."""
    flow = copy.deepcopy(model).to(dtype).eval()
    with torch.no_grad():
        for tensor in [*flow.parameters(), *flow.buffers()]:
            if tensor.dtype != torch.bool and not tensor.is_complex():
                tensor.abs_()
        if zero_biases:
            for name, param in flow.named_parameters():
                if name.rsplit(".", 1)[-1] == "bias":
                    param.zero_()
    return flow


def _input_shape(model: nn.Module, given: Sequence[int] | None, data: object) -> tuple[int, ...]:
    if given is not None:
        return tuple(int(d) for d in given)
    if data is not None:
        (x, _), _ = pruning_data.peek(data, "synflow")
        return tuple(x.shape[1:])
    first = next((m for m in model.modules() if isinstance(m, DEFAULT_TARGET_TYPES)), None)
    if isinstance(first, nn.Linear):
        return (first.in_features,)
    raise SparsenetsError(
        f"synflow needs input_shape=(...) (one sample's shape) or data for a model whose first layer is "
        f"{type(first).__name__ if first is not None else 'not a Linear/Conv'}"
    )


def flow_scores(
    flow: nn.Module, names: Sequence[str], masks: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], ones: torch.Tensor
) -> dict[str, torch.Tensor]:
    """|w ⊙ ∂R/∂w| of the absolute-valued copy ``flow`` with its targets set to ``weights ⊙ masks``.

    Args:
        flow: the copy from :func:`absolute_copy`.
        names: target parameter names.
        masks: ``{name: bool mask}`` of the surviving weights.
        weights: ``{name: |w|}`` of the copy at initialization (the copy's dtype).
        ones: the input (1, *input_shape) of ones.

    Returns:
        ``{name: scores}`` in the copy's dtype, 0 at pruned positions.
    """
    params = target_params(flow, names)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name] * masks[name])
    out = flow(ones)
    if not isinstance(out, torch.Tensor):
        raise SparsenetsError(f"synflow needs a model returning a tensor, got {type(out).__name__}")
    grads = torch.autograd.grad(out.sum(), list(params.values()), allow_unused=True)
    return {
        n: synflow(p, torch.zeros_like(p) if g is None else g)
        for (n, p), g in zip(params.items(), grads, strict=True)
    }


@dataclass(frozen=True)
class SynFlow(InitPruner):
    """SynFlow (see the module docstring). Data-free: ``data`` only supplies the input shape.

    Options:
        rounds: number of score-and-prune rounds (default 100, the reference's).
        dtype: the dtype the copy is scored in (default float64; float32 underflows in deep nets).
        input_shape: one sample's shape, e.g. ``(1, 28, 28)``; default: from the first batch of
            ``data``, else ``(in_features,)`` of a first ``nn.Linear``.
        zero_biases: zero the biases of the copy instead of taking their absolute value (default
            False, the reference code). The paper's objective R = 1ᵀ(Π_l |W_l|) 1 has no biases;
            with PyTorch's nonzero default biases, the flow through |b| dominates deep narrow
            networks and the early layers collapse (see ``docs/pruning.md``); True avoids it.
    """

    name: ClassVar[str] = "synflow"
    rounds: int = 100
    dtype: torch.dtype = torch.float64
    input_shape: tuple[int, ...] | None = None
    zero_biases: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or isinstance(self.rounds, bool) or self.rounds < 1:
            raise SparsenetsError(f"synflow option rounds must be a positive integer, got {self.rounds!r}")
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise SparsenetsError(f"synflow option dtype must be a floating torch.dtype, got {self.dtype!r}")

    def prune(self, task: PruneTask) -> dict[str, torch.Tensor]:
        names, density = task.names, task.density
        shape = _input_shape(task.model, self.input_shape, task.data)
        final = task.counts()
        flow = absolute_copy(task.model, self.dtype, self.zero_biases)
        weights = {n: p.detach().clone() for n, p in target_params(flow, names).items()}
        for param in target_params(flow, names).values():
            param.requires_grad_(True)
        device = next(iter(weights.values())).device
        ones = torch.ones((1, *shape), dtype=self.dtype, device=device)
        masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
        for k in range(1, self.rounds + 1):
            scores = flow_scores(flow, names, masks, weights, ones)
            self._check_finite(scores, masks, k)
            fraction = k / self.rounds
            budget = density**fraction if final is None else {
                n: round(w.numel() * (final[n] / w.numel()) ** fraction) for n, w in weights.items()
            }
            masks = keep_masks(scores, budget, seed=task.seed, round_=k, eligible=masks)
        return masks

    def _check_finite(self, scores: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], k: int) -> None:
        for name, score in scores.items():
            if not bool(torch.isfinite(score[masks[name]]).all()):
                raise SparsenetsError(
                    f"synflow scores of {name} overflowed in round {k} with dtype {self.dtype}; "
                    f"score in a wider dtype (dtype=torch.float64)"
                )

