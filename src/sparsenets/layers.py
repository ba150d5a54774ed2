"""What a weight-carrying layer holds, asked the same way whatever its storage.

Measurements (:mod:`sparsenets.metrics`, :mod:`sparsenets.report`) never check layer types:
they ask each layer's :class:`WeightLayer` view for its dense shape, stored entries, dense
weight and storage bytes. A layer type that stores its weight in its own format (such as the
CSR :class:`~sparsenets.sparse.SparseLinear`) implements the protocol itself; ``nn.Linear``
and ``nn.Conv1d/2d/3d`` are viewed through :class:`DenseWeight`. A new storage format is
measured everywhere once its module implements the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from .sparse.csr import stored_bytes

#: Standard module types whose ``weight`` is viewed as a dense weight.
DENSE_WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@runtime_checkable
class WeightLayer(Protocol):
    """The questions measurements ask of a layer with a weight.

    Attributes:
        backend: how the weight is held: ``"masked"`` (dense storage) or ``"sparse"`` (CSR).
        shape: the dense weight shape ``(out, in, *kernel)``.
        stored_nnz: weights the layer stores (every entry for dense storage).
        out_width: features (Linear) or channels (conv) of one output position.
        spatial_dims: 0 for a Linear, 1–3 for a conv.
    """

    backend: str
    shape: tuple[int, ...]
    stored_nnz: int
    out_width: int
    spatial_dims: int

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor of ``shape`` (detached; do not edit it in place)."""
        ...

    def nonzero_mask(self) -> torch.Tensor:
        """Bool tensor of ``shape``: the positions holding a nonzero (or stored) weight."""
        ...

    def stored_bytes(self, nnz: int | None = None) -> dict[str, int]:
        """``{"dense", "sparse"}`` bytes of the weight and its bias stored dense / as CSR with
        ``nnz`` active weights (default: the stored ones), see
        :func:`sparsenets.sparse.csr.stored_bytes`."""
        ...


@dataclass(frozen=True)
class DenseWeight:
    """The :class:`WeightLayer` view of an ``nn.Linear`` / ``nn.ConvNd`` (dense storage)."""

    module: nn.Module
    backend = "masked"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.module.weight.shape)

    @property
    def stored_nnz(self) -> int:
        return self.module.weight.numel()

    @property
    def out_width(self) -> int:
        return int(self.module.weight.shape[0])

    @property
    def spatial_dims(self) -> int:
        return self.module.weight.dim() - 2

    def dense_weight(self) -> torch.Tensor:
        return self.module.weight.detach()

    def nonzero_mask(self) -> torch.Tensor:
        return self.module.weight.detach() != 0

    def stored_bytes(self, nnz: int | None = None) -> dict[str, int]:
        weight, bias = self.module.weight, getattr(self.module, "bias", None)
        bias_numel = bias.numel() if isinstance(bias, torch.Tensor) else 0
        count = weight.numel() if nnz is None else nnz
        return stored_bytes(tuple(weight.shape), count, weight.dtype, None, bias_numel)


def weight_layer(module: nn.Module) -> WeightLayer | None:
    """The :class:`WeightLayer` view of ``module``, or None when it carries no such weight."""
    if isinstance(module, WeightLayer):
        return module
    if isinstance(module, DENSE_WEIGHT_TYPES) and isinstance(getattr(module, "weight", None), torch.Tensor):
        return DenseWeight(module)
    return None


def weight_name(module_name: str) -> str:
    """The parameter name of a module's weight: ``"fc1" -> "fc1.weight"`` (root: ``"weight"``)."""
    return f"{module_name}.weight" if module_name else "weight"


def weight_layers(model: nn.Module) -> dict[str, tuple[nn.Module, WeightLayer]]:
    """``{weight name: (module, view)}`` of every Linear/Conv/CSR layer of ``model``, in order."""
    found = {}
    for name, module in model.named_modules():
        view = weight_layer(module)
        if view is not None:
            found[weight_name(name)] = (module, view)
    return found
