"""``SparseLinear``: a linear layer that stores only the nonzeros of its weight (CSR)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import SparsenetsError
from .csr import (
    CSRStructure,
    build_structure,
    check_dtype,
    check_mask,
    csr_to_dense,
    csr_to_mask,
    flat_index,
    index_dtype_for,
    stored_bytes,
    structure_from_csr,
    structure_from_index,
)
from .functional import sparse_linear

ACTIVATIONS = (None, "relu")
_STRUCTURE = ("crow_indices", "col_indices", "t_crow_indices", "t_col_indices", "perm")


class SparseLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W (out, in)`` stored as CSR: only the nonzeros are kept.

    Trainable: ``values (nnz,)`` (the nonzeros of ``W`` in row-major order, i.e. the order of
    ``W[mask]``) and the optional ``bias (out,)``. Buffers: ``crow_indices (out+1,)`` and
    ``col_indices (nnz,)`` (saved in the ``state_dict``), plus the CSR of ``Wᵀ`` and the
    permutation ``perm`` (derived, not saved). The forward and all gradients equal those of a
    dense ``nn.Linear`` whose weight is zero outside the mask.

    Args:
        in_features, out_features: the dense shape is ``(out_features, in_features)``.
        mask: bool ``(out, in)`` active positions; all True when omitted.
        bias: whether to add a trainable bias.
        dtype: float32 (default) or float64.
        device: where parameters and buffers live.
        activation: ``None`` (default) or ``"relu"``: ``relu(x Wᵀ + b)`` fused into the kernel
            (the output written through ``max(0, ·)``, the backward gated by ``y > 0`` while
            the gradient is packed), one pass over ``(N, out)`` less each way and no stored
            pre-activation. :func:`fuse_relu` sets it on a model's ``SparseLinear → ReLU``
            pairs.

    Values and bias start as in ``nn.Linear`` (uniform in ``±1/sqrt(in_features)``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mask: torch.Tensor | None = None,
        *,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        activation: str | None = None,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise SparsenetsError(f"SparseLinear activation must be None or 'relu', got {activation!r}")
        self.activation = activation
        dtype = check_dtype(dtype or torch.get_default_dtype())
        self.in_features, self.out_features = int(in_features), int(out_features)
        if mask is None:
            mask = torch.ones(self.out_features, self.in_features, dtype=torch.bool, device=device)
        check_mask(mask, (self.out_features, self.in_features))
        structure = build_structure(mask.to(device) if device is not None else mask)
        bound = 1.0 / math.sqrt(self.in_features) if self.in_features else 0.0
        values = torch.empty(structure.nnz, dtype=dtype, device=structure.col_indices.device)
        self.values = nn.Parameter(values.uniform_(-bound, bound))
        if bias:
            b = torch.empty(self.out_features, dtype=dtype, device=values.device)
            self.bias = nn.Parameter(b.uniform_(-bound, bound))
        else:
            self.register_parameter("bias", None)
        for name in _STRUCTURE:
            self.register_buffer(name, getattr(structure, name), persistent=name in _STRUCTURE[:2])

    # -- construction / conversion ---------------------------------------------------------
    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: torch.Tensor) -> SparseLinear:
        """A ``SparseLinear`` holding ``linear.weight[mask]`` (and a copy of its bias).

        Weights outside ``mask`` are dropped; the layer computes ``linear`` with its weight
        multiplied by ``mask``. The global random state is left untouched.
        """
        if not isinstance(linear, nn.Linear):
            raise SparsenetsError(f"from_dense needs an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight
        check_mask(mask, tuple(weight.shape))
        # The random initialisation is overwritten below: do not advance the global RNG.
        devices = [weight.device] if weight.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            layer = cls(
                linear.in_features,
                linear.out_features,
                mask.to(weight.device),
                bias=linear.bias is not None,
                dtype=weight.dtype,
                device=weight.device,
            )
        with torch.no_grad():
            layer.values.copy_(weight.detach()[mask.to(weight.device)])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.detach())
        return layer

    def to_dense(self) -> nn.Module:
        """An ``nn.Linear`` with the same function: weight zero outside the mask (exact); with
        a fused activation, ``nn.Sequential(linear, nn.ReLU())``."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            dtype=self.values.dtype,
            device=self.values.device,
        )
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias.detach())
        return nn.Sequential(linear, nn.ReLU()) if self.activation == "relu" else linear

    def dense_weight(self) -> torch.Tensor:
        """The dense weight ``(out, in)`` (a new tensor, detached; zeros outside the mask)."""
        return csr_to_dense(
            self.crow_indices, self.col_indices, self.values.detach(), self.shape
        )

    def mask(self) -> torch.Tensor:
        """The bool mask ``(out, in)`` of the stored positions (a new tensor)."""
        return csr_to_mask(self.crow_indices, self.col_indices, self.shape)

    def flat_index(self) -> torch.Tensor:
        """``(nnz,)`` int64 sorted flat positions ``row * in + col`` of the stored values."""
        return flat_index(self.crow_indices, self.col_indices, self.in_features)

    # -- topology --------------------------------------------------------------------------
    @torch.no_grad()
    def set_topology(self, new_mask: torch.Tensor, new_values: torch.Tensor) -> None:
        """Rebuild the CSR structure in place for ``new_mask`` and set the values.

        Args:
            new_mask: bool ``(out, in)``.
            new_values: either ``(nnz_new,)`` values in row-major order of ``new_mask``
                (the order of ``W[new_mask]``), or a dense ``(out, in)`` weight whose entries
                at ``new_mask`` are taken.

        The ``values`` Parameter keeps its identity (``values.data`` is replaced), so an
        optimizer keeps holding it, but per-value optimizer state (momentum, Adam moments)
        refers to the OLD positions: the caller must remap or reset it (its shape changes if
        nnz changes). ``values.grad`` is cleared.
        """
        check_mask(new_mask, self.shape, what="new_mask")
        new_mask = new_mask.to(self.values.device)
        if tuple(new_values.shape) == self.shape:
            new_values = new_values.to(new_mask.device)[new_mask]
        self.set_topology_index(new_mask.reshape(-1).nonzero().squeeze(1), new_values)

    @torch.no_grad()
    def set_topology_index(self, new_index: torch.Tensor, new_values: torch.Tensor) -> None:
        """:meth:`set_topology` from the sorted flat positions ``new_index`` ``(nnz_new,)``
        int64 (``row * in + col``) and their ``new_values`` ``(nnz_new,)``; builds nothing of
        the dense shape."""
        nnz = int(new_index.numel())
        if tuple(new_values.shape) != (nnz,):
            raise SparsenetsError(
                f"new_values must have shape ({nnz},) or {self.shape}, got {tuple(new_values.shape)}"
            )
        new_index = new_index.to(self.values.device)
        self._set_structure(structure_from_index(new_index, self.shape, index_dtype_for(self.shape, nnz)))
        _replace_data(self.values, new_values.detach().to(self.values.device, self.values.dtype).clone())
        self.values.grad = None

    def _set_structure(self, structure: CSRStructure) -> None:
        for name in _STRUCTURE:
            setattr(self, name, getattr(structure, name))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """Accept a state with a different topology (nnz) than the current one."""
        keys = [prefix + k for k in ("crow_indices", "col_indices", "values")]
        if all(k in state_dict for k in keys):
            crow, col, values = (state_dict[k] for k in keys)
            device = self.values.device
            try:
                structure = structure_from_csr(crow.to(device), col.to(device), self.shape)
            except SparsenetsError as exc:
                errors.append(f"{prefix}: {exc}")
                return
            self._set_structure(structure)
            _replace_data(self.values, self.values.data.new_empty(values.shape))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    # -- forward / info --------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in) -> (..., out)``."""
        return sparse_linear(
            x, self.values, self.bias, self.crow_indices, self.col_indices,
            self.t_crow_indices, self.t_col_indices, self.perm, self.out_features,
            relu=self.activation == "relu",
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Dense weight shape ``(out, in)``."""
        return (self.out_features, self.in_features)

    @property
    def nnz(self) -> int:
        """Number of stored weights."""
        return int(self.values.numel())

    @property
    def density(self) -> float:
        """``nnz / (out * in)``."""
        total = self.out_features * self.in_features
        return self.nnz / total if total else 0.0

    # -- the WeightLayer view (sparsenets.layers): what measurements ask of a layer ----------
    #: how the weight is held (a masked dense layer says ``"masked"``)
    backend = "sparse"
    #: a Linear has no spatial dimensions
    spatial_dims = 0

    @property
    def stored_nnz(self) -> int:
        """Weights stored (``nnz``)."""
        return self.nnz

    @property
    def out_width(self) -> int:
        """Features of one output position (``out_features``)."""
        return self.out_features

    def nonzero_mask(self) -> torch.Tensor:
        """The stored positions ``(out, in)`` bool (see :meth:`mask`)."""
        return self.mask()

    def stored_bytes(self, nnz: int | None = None) -> dict[str, int]:
        """Bytes of this layer dense vs as its CSR (own value and index dtypes), bias included."""
        bias = 0 if self.bias is None else self.bias.numel()
        count = self.nnz if nnz is None else nnz
        return stored_bytes(self.shape, count, self.values.dtype, self.col_indices.dtype, bias)

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, nnz={self.nnz}, density={self.density:.4f}"
            + (f", activation={self.activation}" if self.activation else "")
        )

    def structure_state(self) -> dict[str, Any]:
        """Metadata describing the layer (for saving): features, bias, nnz, dtype."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
            "nnz": self.nnz,
            "dtype": str(self.values.dtype).removeprefix("torch."),
        }


def _replace_data(param: nn.Parameter, data: torch.Tensor) -> None:
    """``param.data = data`` when the number of values may change.

    Autograd caches a leaf's gradient accumulator, with the leaf's shape, for as long as any
    graph that used the leaf is alive — e.g. the previous batch's ``loss`` that a training loop
    still holds while it runs the next forward. A forward on the new, differently sized data
    would then fail in backward ("expected shape compatible with …"). PyTorch drops the cached
    accumulator when the data's dtype changes, so the data passes through another dtype first.
    """
    if data.shape != param.data.shape:
        other = torch.float64 if data.dtype != torch.float64 else torch.float32
        param.data = torch.empty(0, dtype=other, device=data.device)
    param.data = data



def fuse_relu(model: nn.Module) -> int:
    """Fuse every ``SparseLinear`` directly followed by ``nn.ReLU`` inside an ``nn.Sequential``
    of ``model``: the layer computes the ReLU itself (``activation="relu"``) and the ReLU module
    becomes ``nn.Identity`` (same indices, same function). Returns how many pairs were fused.

    Only ``nn.Sequential`` order is trusted: in any other module the forward may use the layer's
    output elsewhere, so nothing is changed there.
    """
    fused = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            layer, act = module._modules[first], module._modules[second]
            if isinstance(layer, SparseLinear) and layer.activation is None and type(act) is nn.ReLU:
                layer.activation = "relu"
                module._modules[second] = nn.Identity()
                fused += 1
    return fused
