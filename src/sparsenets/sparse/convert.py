"""Exact conversion between masked dense models and truly sparse models, and sparse files.

* :func:`to_sparse` replaces every ``nn.Linear`` whose ``<name>.weight`` has a mask by a
  :class:`SparseLinear`; other masked parameters (convolutions) stay dense, multiplied by
  their mask.
* :func:`to_dense` turns every ``SparseLinear`` back into an ``nn.Linear`` (zeros outside the
  mask), so a masked model converted there and back has the same ``state_dict``.
* :func:`save_sparse` / :func:`load_sparse` write/read a safetensors file holding the model's
  ``state_dict`` (CSR parts for sparse layers) plus metadata (format version, layer shapes).
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import SparsenetsError
from ..io import load_tensors, safetensors_metadata, save_tensors
from .layer import SparseLinear

log = logging.getLogger(__name__)

FORMAT_NAME = "sparsenets-sparse"
FORMAT_VERSION = "1"


def _replace(root: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at dotted ``name`` in ``root`` (``name == ""`` replaces the root)."""
    if name == "":
        return new
    root.set_submodule(name, new)
    return root


def to_sparse(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of ``model`` with masked ``nn.Linear`` layers replaced by ``SparseLinear``.

    Args:
        model: a dense model.
        masks: ``{parameter name: bool mask}`` (a ``MaskStore`` works). Keys must name
            parameters of ``model``; masks must match their shapes.

    Returns:
        The converted copy; ``model`` is untouched. Masked parameters of other module types
        are copied multiplied by their mask.
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise SparsenetsError(f"mask {name!r} names no parameter of the model")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise SparsenetsError(f"mask for {name!r} must be a torch.bool tensor")
        if tuple(mask.shape) != tuple(params[name].shape):
            raise SparsenetsError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, "
                f"expected {tuple(params[name].shape)}"
            )
    result = copy.deepcopy(model)
    converted: set[str] = set()
    for name, module in list(result.named_modules()):
        key = f"{name}.weight" if name else "weight"
        if type(module) is nn.Linear and key in masks:
            result = _replace(result, name, SparseLinear.from_dense(module, masks[key]))
            converted.add(key)
    with torch.no_grad():
        new_params = dict(result.named_parameters())
        for key, mask in masks.items():
            if key not in converted:
                param = new_params[key]
                param.masked_fill_(~mask.to(param.device), 0)
    log.debug("to_sparse: %d linear layers converted", len(converted))
    return result


def sparsify_linear_(model: nn.Module, name: str, mask: torch.Tensor) -> SparseLinear:
    """Replace the ``nn.Linear`` at module path ``name`` of ``model`` in place by a ``SparseLinear``.

    The new layer holds ``weight[mask]`` (``mask``: bool ``(out, in)``) and shares the
    original ``bias`` Parameter (so an optimizer holding it keeps it and its state). The old
    weight Parameter is no longer referenced by the model. Returns the new layer.

    Raises:
        SparsenetsError: ``name`` is not an ``nn.Linear`` inside ``model`` (the root itself cannot
            be replaced in place).
    """
    module = model.get_submodule(name) if name else model
    if name == "" or type(module) is not nn.Linear:
        raise SparsenetsError(
            f"module {name!r} cannot be made sparse in place: it must be an nn.Linear inside the "
            f"model, got {type(module).__name__}{' (the model itself)' if name == '' else ''}"
        )
    layer = SparseLinear.from_dense(module, mask)
    if module.bias is not None:
        layer.bias = module.bias
    model.set_submodule(name, layer)
    return layer


def to_dense(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with every ``SparseLinear`` replaced by an exact ``nn.Linear``."""
    result = copy.deepcopy(model)
    for name, module in list(result.named_modules()):
        if isinstance(module, SparseLinear):
            result = _replace(result, name, module.to_dense())
    return result


def sparse_layers(model: nn.Module) -> dict[str, SparseLinear]:
    """``{module name: SparseLinear}`` of ``model``, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SparseLinear)}


def save_sparse(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s ``state_dict`` (CSR parts of sparse layers) to safetensors, atomically.

    Metadata: ``format``, ``format_version`` and ``sparse_layers`` (JSON of
    ``{module name: {in_features, out_features, bias, nnz, dtype}}``).
    """
    layers = {name: layer.structure_state() for name, layer in sparse_layers(model).items()}
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "sparse_layers": json.dumps(layers),
    }
    save_tensors(path, tensors, metadata)


def _read_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise SparsenetsError(f"sparse model file not found: {path}")
    metadata = safetensors_metadata(path)
    if metadata.get("format") != FORMAT_NAME:
        raise SparsenetsError(f"{path} is not a sparsenets sparse model file")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise SparsenetsError(
            f"{path} has sparse format version {metadata.get('format_version')!r}, "
            f"this sparsenets reads {FORMAT_VERSION!r}"
        )
    return metadata


def load_sparse(
    model: nn.Module | Callable[[], nn.Module], path: str | Path, device: str | torch.device = "cpu"
) -> nn.Module:
    """Load a file written by :func:`save_sparse` into a copy of ``model`` (or ``model()``).

    ``model`` is the architecture: a dense skeleton (its ``nn.Linear`` layers are replaced by
    ``SparseLinear`` where the file holds sparse layers) or a factory returning one. The
    skeleton itself is not modified.
    """
    path = Path(path)
    metadata = _read_metadata(path)
    layers: dict[str, dict] = json.loads(metadata["sparse_layers"])
    result = copy.deepcopy(model) if isinstance(model, nn.Module) else model()
    if not isinstance(result, nn.Module):
        raise SparsenetsError(f"load_sparse needs an nn.Module or a factory, got {type(result).__name__}")
    tensors = load_tensors(path, device)
    modules = dict(result.named_modules())
    for name, info in layers.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear | SparseLinear):
            raise SparsenetsError(f"sparse layer {name!r} of {path} is not a linear layer of the model")
        shape = (module.out_features, module.in_features)
        if shape != (info["out_features"], info["in_features"]):
            raise SparsenetsError(
                f"sparse layer {name!r} of {path} has shape "
                f"{(info['out_features'], info['in_features'])}, the model has {shape}"
            )
        prefix = f"{name}." if name else ""
        empty = torch.zeros(shape, dtype=torch.bool)  # the file's structure is loaded below
        layer = SparseLinear(
            shape[1], shape[0], empty, bias=info["bias"],
            dtype=tensors[prefix + "values"].dtype, device=device,
        )
        result = _replace(result, name, layer)
    result.load_state_dict(tensors, strict=True)
    return result
