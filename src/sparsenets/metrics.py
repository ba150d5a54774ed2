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

A :class:`~sparsenets.sparse.SparseLinear` counts as a Linear layer whose weight is named
``<module>.weight`` (its dense shape), with its stored values as the active weights.

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
from .masks import MaskStore
from .sparse import SparseLinear
from .sparse.csr import index_dtype_for

log = logging.getLogger(__name__)

#: Module types whose FLOPs are counted.
FLOP_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: Key of the all-layers entry in :func:`layer_flops`'s result (never a weight's name).
TOTAL = "total"

ExampleInput = torch.Tensor | Sequence[torch.Tensor]


def _weight_name(module_name: str) -> str:
    return f"{module_name}.weight" if module_name else "weight"


def flop_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{weight name: module}`` of every Linear/Conv/SparseLinear layer of ``model``."""
    return {
        _weight_name(name): module
        for name, module in model.named_modules()
        if isinstance(module, SparseLinear)
        or (isinstance(module, FLOP_MODULE_TYPES) and getattr(module, "weight", None) is not None)
    }


def weight_shape(module: nn.Module) -> tuple[int, ...]:
    """The (dense) weight shape of a Linear/Conv/SparseLinear module."""
    return module.shape if isinstance(module, SparseLinear) else tuple(module.weight.shape)


def weight_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every parameter, plus ``<module>.weight`` of each SparseLinear."""
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            shapes[_weight_name(name)] = module.shape
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
        def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            totals[key] += output.numel() // _out_width(module)

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


def _out_width(module: nn.Module) -> int:
    """Output features (Linear) or channels (conv) of one output position."""
    return module.out_features if isinstance(module, nn.Linear | SparseLinear) else module.out_channels


def module_dims(module: nn.Module) -> int:
    """Spatial dimensions of a conv module (1, 2 or 3); 0 for a Linear."""
    for dims, cls in enumerate((nn.Conv1d, nn.Conv2d, nn.Conv3d), start=1):
        if isinstance(module, cls):
            return dims
    return 0


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
    modules = flop_modules(model)
    if example_input is None:
        convs = [name for name, module in modules.items() if module_dims(module) > 0]
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
    for name, module in modules.items():
        numel = math.prod(weight_shape(module))
        if name in masks:
            nnz = mask_nnz(masks, name)
        else:
            nnz = module.nnz if isinstance(module, SparseLinear) else numel
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
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            params[_weight_name(name)] = module.dense_weight()
    names = list(flop_modules(model)) if names is None else list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise SparsenetsError(
            f"no parameter named {unknown[0]!r} in the model (parameters: {', '.join(params)})"
        )
    return {n: _mask_nnz(params[n].detach()) / max(params[n].numel(), 1) for n in names}


def stored_bytes(
    shape: Sequence[int],
    nnz: int,
    value_dtype: torch.dtype,
    index_dtype: torch.dtype | None = None,
    bias: int = 0,
) -> dict[str, int]:
    """Bytes of a weight stored dense and stored as CSR (pure; see the module docstring).

    Args:
        shape: the dense weight shape ``(out, ...)``.
        nnz: stored (active) weights.
        value_dtype: dtype of the weights (and of the bias).
        index_dtype: dtype of the CSR indices; default what a ``SparseLinear`` would use
            (int32 when every index fits, else int64).
        bias: entries of the bias (0 without one); counted on both sides.

    Returns:
        ``{"dense": numel · itemsize + bias, "sparse": values + col indices + row pointers + bias}``.
    """
    shape = tuple(int(d) for d in shape) or (1,)
    rows = shape[0] if len(shape) > 1 else 1
    numel = math.prod(shape)
    cols = numel // rows if rows else 0
    index_dtype = index_dtype or index_dtype_for((rows, cols), int(nnz))
    value_size = torch.empty((), dtype=value_dtype).element_size()
    index_size = torch.empty((), dtype=index_dtype).element_size()
    bias_bytes = int(bias) * value_size
    return {
        "dense": numel * value_size + bias_bytes,
        "sparse": int(nnz) * (value_size + index_size) + (rows + 1) * index_size + bias_bytes,
    }


def layer_bytes(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, dict[str, int]]:
    """:func:`stored_bytes` of every masked weight of ``model`` (at the real dtypes).

    A ``SparseLinear`` counts its own value and index dtypes; a dense parameter counts the CSR
    it would be stored as. The bias of the weight's module is included on both sides.
    """
    modules = flop_modules(model)
    params = dict(model.named_parameters())
    out = {}
    for name in masks:
        module = modules.get(name)
        bias = getattr(module, "bias", None) if module is not None else None
        bias_numel = bias.numel() if isinstance(bias, torch.Tensor) else 0
        if isinstance(module, SparseLinear):
            out[name] = stored_bytes(
                module.shape, module.nnz, module.values.dtype, module.col_indices.dtype, bias_numel
            )
        else:
            param = params[name]
            out[name] = stored_bytes(param.shape, mask_nnz(masks, name), param.dtype, None, bias_numel)
    return out
