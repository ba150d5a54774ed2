"""Measurements of a sparse network: density, FLOPs, ITOP rate, topology churn (pure functions).

FLOPs convention
----------------
FLOPs are counted for **one forward pass of one sample** and only for ``nn.Linear`` and
``nn.Conv1d/2d/3d`` layers: ``FLOPs = 2 × multiply-accumulates`` of the weight product. Bias
additions, activations, normalization and pooling are ignored (they are the same for the dense
and the sparse network and small next to the weight products).

For a layer whose weight has ``numel`` entries (``nnz`` of them active) and that produces
``positions`` output vectors per sample:

* dense FLOPs  = ``2 · numel · positions``
* sparse FLOPs = ``2 · nnz · positions``

``positions = output.numel() / out_features / batch`` — 1 for a Linear on ``(B, in)``, ``T`` for
a Linear on ``(B, T, in)``, ``H_out · W_out`` for a Conv2d. A conv weight already holds
``C_in / groups`` input channels, so ``numel`` is the per-position MAC count for any ``groups``.
A module called several times in one forward pass (weight sharing) accumulates its positions; a
module never called counts 0.

Layers are asked through their :class:`~sparsenets.layers.WeightLayer` view, whatever their
storage: a CSR :class:`~sparsenets.sparse.SparseLinear` counts as a Linear layer whose weight is
named ``<module>.weight`` (its dense shape), with its stored values as the active weights.

Stored bytes
------------
:func:`stored_bytes` gives what a weight (plus its bias) takes stored dense and stored as CSR:
dense ``= numel · itemsize``; CSR ``= nnz · itemsize`` (values) ``+ nnz · index itemsize``
(column indices) ``+ (rows + 1) · index itemsize`` (row pointers); the bias, when present,
adds the same to both. A weight of more than two dimensions is stored as the
``(out, numel / out)`` matrix.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import SparsenetsError
from .layers import DENSE_WEIGHT_TYPES, WeightLayer, weight_layer, weight_layers
from .masks import MaskStore
from .sparse.csr import stored_bytes

__all__ = [
    "FLOP_MODULE_TYPES", "TOTAL", "churn", "density_by_layer", "flop_modules", "itop_rates",
    "layer_bytes", "layer_flops", "mask_nnz", "measured_density", "module_dims", "output_positions",
    "stored_bytes", "weight_shape", "weight_shapes",
]

log = logging.getLogger(__name__)

#: Standard module types whose FLOPs are counted (plus any layer implementing
#: :class:`~sparsenets.layers.WeightLayer`).
FLOP_MODULE_TYPES: tuple[type[nn.Module], ...] = DENSE_WEIGHT_TYPES
#: Key of the all-layers entry in :func:`layer_flops`'s result (never a weight's name).
TOTAL = "total"

ExampleInput = torch.Tensor | Sequence[torch.Tensor]


def flop_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: module}`` of every Linear/Conv/CSR layer of ``model``."""
    return {name: module for name, (module, _view) in weight_layers(model).items()}


def _view(module: nn.Module) -> WeightLayer:
    view = weight_layer(module)
    if view is None:
        raise SparsenetsError(f"{type(module).__name__} has no Linear/Conv weight to measure")
    return view


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The (dense) weight shape of a Linear/Conv/CSR module."""
    return tuple(_view(module).shape)


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every parameter, plus ``<module>.weight`` of each layer whose
    weight is not a parameter of its dense shape (CSR layers)."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, (_module, view) in weight_layers(model).items():
        shapes.setdefault(name, tuple(view.shape))
    return shapes


def mask_nnz(masks: Mapping[str, torch.Tensor], name: str) -> int:
    """Active positions of ``masks[name]`` (a MaskStore answers without materializing)."""
    return masks.nnz(name) if isinstance(masks, MaskStore) else _mask_nnz(masks[name])


def _count(value: int, batch: int) -> int | float:
    """``value / batch``, as an int when it divides evenly."""
    return value // batch if value % batch == 0 else value / batch


def _batch_size(example_input: ExampleInput) -> int:
    first = example_input if isinstance(example_input, torch.Tensor) else example_input[0]
    return int(first.shape[0]) if first.dim() > 1 else 1


def _to_device(example_input: ExampleInput, model: nn.Module) -> tuple[torch.Tensor, ...]:
    inputs = (example_input,) if isinstance(example_input, torch.Tensor) else tuple(example_input)
    param = next(model.parameters(), None)
    if param is None:
        return inputs
    return tuple(x.to(param.device) if isinstance(x, torch.Tensor) else x for x in inputs)


@torch.no_grad()
def output_positions(
    model: nn.Module, modules: Mapping[str, nn.Module], example_input: ExampleInput
) -> dict[str, int | float]:
    """Output vectors per sample of each module in one forward pass of ``example_input``.

    Runs ``model`` once in eval mode (no BatchNorm statistics updates, no dropout) with forward
    hooks on ``modules``; hooks are removed and every submodule's train/eval flag restored after.

    Args:
        model: the network.
        modules: ``{key: module}`` to measure (submodules of ``model``).
        example_input: ``(B, ...)`` tensor, or a tuple of tensors passed as ``model(*inputs)``;
            the first dimension of the (first) tensor is the batch size.

    Returns:
        ``{key: output.numel() / out_features_or_channels / B}`` summed over the calls.
    """
    totals = {key: 0 for key in modules}

    def make_hook(key: str):
        width = _view(modules[key]).out_width

        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            totals[key] += output.numel() // width

        return hook

    modes = {module: module.training for module in model.modules()}
    handles = [m.register_forward_hook(make_hook(key)) for key, m in modules.items()]
    try:
        model.eval()
        model(*_to_device(example_input, model))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    batch = _batch_size(example_input)
    return {key: _count(total, batch) for key, total in totals.items()}


def module_dims(module: nn.Module) -> int:
    """Spatial dimensions of a conv module (1, 2 or 3); 0 for a Linear."""
    return _view(module).spatial_dims


def _mask_nnz(mask: torch.Tensor) -> int:
    return int(torch.count_nonzero(mask))


def layer_flops(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor] | None,
    example_input: ExampleInput | None = None,
) -> dict[str, dict[str, Any]]:
    """FLOPs of one forward pass per sample, per masked Linear/Conv layer and in total.

    See the module docstring for the convention (2 × MACs, biases ignored).

    Args:
        model: the network.
        masks: ``{weight name: mask}`` (bool or 0/1, the weight's shape); a MaskStore works.
            Linear/Conv layers whose weight has no mask count as dense. ``None``: all dense.
        example_input: a batch ``(B, ...)`` (or tuple of tensors) to measure output sizes with
            one ``torch.no_grad()`` forward pass. Without it a Linear counts one position per
            sample and conv layers raise.

    Returns:
        ``{weight name: {"kind", "positions", "numel", "nnz", "flops_dense", "flops_sparse"}}``
        for the masked Linear/Conv layers, plus ``TOTAL`` (``"total"``):
        ``{"flops_dense", "flops_sparse", "flops_ratio"}`` over **all** Linear/Conv layers
        (``flops_ratio`` is None when the dense count is 0).

    Raises:
        SparsenetsError: conv layers without ``example_input``.
    """
    masks = {} if masks is None else masks
    layers = weight_layers(model)
    modules = {name: module for name, (module, _view) in layers.items()}
    if example_input is None:
        convs = [name for name, (_module, view) in layers.items() if view.spatial_dims > 0]
        if convs:
            raise SparsenetsError(
                f"FLOPs of conv layers need example_input (a batch the model accepts) to know "
                f"their output sizes; conv weights: {', '.join(convs)}"
            )
        positions: dict[str, int | float] = dict.fromkeys(modules, 1)
    else:
        positions = output_positions(model, modules, example_input)
    result: dict[str, dict[str, Any]] = {}
    total_dense: int | float = 0
    total_sparse: int | float = 0
    for name, (module, view) in layers.items():
        numel = math.prod(view.shape)
        nnz = mask_nnz(masks, name) if name in masks else view.stored_nnz
        dense, sparse = 2 * numel * positions[name], 2 * nnz * positions[name]
        total_dense += dense
        total_sparse += sparse
        if name in masks:
            result[name] = {
                "kind": type(module).__name__,
                "positions": positions[name],
                "numel": numel,
                "nnz": nnz,
                "flops_dense": dense,
                "flops_sparse": sparse,
            }
    result[TOTAL] = {
        "flops_dense": total_dense,
        "flops_sparse": total_sparse,
        "flops_ratio": total_sparse / total_dense if total_dense else None,
    }
    log.debug("FLOPs per sample: dense=%s sparse=%s", total_dense, total_sparse)
    return result


def density_by_layer(masks: Mapping[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
    """``{name: {"numel", "nnz", "density"}}`` of each mask (bool or 0/1 tensor)."""
    out = {}
    for name in masks:
        if isinstance(masks, MaskStore):
            numel, nnz = masks.numel(name), masks.nnz(name)
        else:
            numel, nnz = masks[name].numel(), _mask_nnz(masks[name])
        out[name] = {"numel": numel, "nnz": nnz, "density": nnz / numel if numel else 0.0}
    return out


def itop_rates(masks: MaskStore) -> dict[str, float]:
    """Per-layer In-Time Over-Parameterization rate: fraction of positions ever active.

    The global rate (over all masked positions) is ``masks.itop_rate()``.
    """
    return {name: masks.itop_rate(name) for name in masks}


def churn(history: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One ``{"step", "churn", "itop_rate", "grown"}`` per topology update.

    Args:
        history: ``DynamicSparsity.history`` (records with ``step``, ``grown``, ``churn`` =
            grown / nnz after the update, global ``itop_rate``).
    """
    return [
        {
            "step": int(record["step"]),
            "churn": float(record["churn"]),
            "itop_rate": float(record["itop_rate"]),
            "grown": int(record["grown"]),
        }
        for record in history
    ]


def measured_density(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, float]:
    """Fraction of values that are actually nonzero in the named parameters (ignores masks).

    Args:
        model: the network.
        names: parameter names; default every Linear/Conv weight.

    Raises:
        SparsenetsError: a name that is not a parameter of ``model``.
    """
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    layers = weight_layers(model)
    for name, (_module, view) in layers.items():
        if name not in params:  # a weight not stored as a dense parameter (CSR)
            params[name] = view.dense_weight()
    names = list(layers) if names is None else list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise SparsenetsError(
            f"no parameter named {unknown[0]!r} in the model (parameters: {', '.join(params)})"
        )
    return {n: _mask_nnz(params[n].detach()) / max(params[n].numel(), 1) for n in names}


def layer_bytes(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """:func:`stored_bytes` of every masked weight of ``model`` (at the real dtypes).

    Each layer answers for itself (:meth:`~sparsenets.layers.WeightLayer.stored_bytes`): a CSR
    layer counts its own value and index dtypes, a dense weight the CSR it would be stored as
    with the mask's nonzeros. The bias of the weight's module is included on both sides. A
    masked parameter that is no Linear/Conv weight counts alone (no bias).
    """
    layers = weight_layers(model)
    params = dict(model.named_parameters())
    out = {}
    for name in masks:
        nnz = mask_nnz(masks, name)
        if name in layers:
            view = layers[name][1]
            out[name] = view.stored_bytes(None if view.backend == "sparse" else nnz)
        else:
            param = params[name]
            out[name] = stored_bytes(tuple(param.shape), nnz, param.dtype)
    return out
