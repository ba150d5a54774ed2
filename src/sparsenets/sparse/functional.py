"""The sparse linear operator ``y = x Wᵀ + b`` with ``W`` held in CSR, and its gradients.

Two implementations of the same mathematics; results agree to rounding.

Native (CPU, default when the C++ kernels build; see :mod:`sparsenets.sparse.kernels`):

* forward: ``x`` is packed feature-major once (``xᵀ`` with the batch padded to the vector
  width), then every nonzero of a row of ``W`` is one broadcast-FMA over a contiguous run of
  the batch; the result is written row-major ``(N, out)`` with the bias fused. The packed
  ``xᵀ`` is what backward keeps (not ``x``).
* backward: ``grad_out`` is packed the same way (its per-feature sums are the bias gradient);
  grad-values are dot products ``gt[row_k] · xt[col_k]`` at the nonzeros only; grad-input is
  the forward kernel over the stored CSR of ``Wᵀ`` (values gathered into its order through
  ``perm`` first), skipped when the input needs no gradient. MKL is not called at all (no
  hidden buffers).

Torch CSR (CUDA tensors, or ``SPARSENETS_SPARSE_KERNELS=torch``, or no compiler):

* forward: ``W_csr @ xᵀ`` (``addmm`` with the bias as a column), an ``(out, N)`` row-major
  result, copied once into a row-major ``(N, out)`` output. Handing the transposed view on
  would make the next dense layer run on a column-major input, several times slower.
* grad-input: ``Wᵀ_csr @ grad_outᵀ`` through the stored CSR of ``Wᵀ`` (values gathered with
  ``perm``), again returned row-major; skipped when the input needs no gradient.
* grad-values: ``torch.sparse.sampled_addmm`` of ``grad_outᵀ @ x`` at the nonzeros only.
* grad-bias: ``grad_out.sum(0)``.
"""

from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from ..errors import SparsenetsError
from . import kernels
from .csr import SUPPORTED_DTYPES


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # torch warns that CSR support is "beta"; the ops used here are stable. The filter is scoped
    # to this call so importing sparsenets leaves the user's warning filters untouched.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class SparseLinearFunction(torch.autograd.Function):
    """Autograd function for ``y = x Wᵀ + b`` (or ``relu(x Wᵀ + b)``) with ``W`` given by CSR
    values and structure.

    ``apply(x, values, bias, crow, col, t_crow, t_col, perm, out_features, relu)`` with
    ``x (N, in)``, ``values (nnz,)``, ``bias (out,) or None``, the structure of
    :class:`sparsenets.sparse.csr.CSRStructure`; returns ``y (N, out)`` row-major.
    Gradients flow to ``x``, ``values`` and ``bias`` only. With ``relu`` the activation is
    fused: the kernel writes ``max(0, ·)`` and the backward gates ``grad_out`` by ``y > 0``
    while packing it, so the pre-activation is never stored.
    """

    @staticmethod
    def forward(ctx, x, values, bias, crow, col, t_crow, t_col, perm, out_features, relu=False):  # noqa: D102
        lib = kernels.library() if x.device.type == "cpu" else None
        ctx.native = lib is not None
        ctx.out_features = out_features
        ctx.has_bias = bias is not None
        ctx.relu = bool(relu)
        if lib is not None:
            pl, tile = kernels.layer_plan(lib, x.shape[1], out_features, values.numel(), x.dtype)
            xp, _ = kernels.pack(lib, x, tile, width=pl.pack)  # x feature-major, in panels
            y = kernels.spmm(
                lib, crow, col, values, None, bias, xp, x.shape[0], tile, relu=ctx.relu, width=pl.spmm
            )
            ctx.save_for_backward(xp, values, crow, col, t_crow, t_col, perm, y if ctx.relu else None)
            ctx.batch, ctx.tile, ctx.plan = x.shape[0], tile, pl
            return y
        in_features = x.shape[1]
        weight = _csr(crow, col, values, (out_features, in_features))
        if bias is None:
            y_t = torch.sparse.mm(weight, x.t())  # (out, N) row-major
        else:
            y_t = torch.addmm(bias.unsqueeze(1), weight, x.t())
        y = y_t.t().contiguous()
        if ctx.relu:
            y.clamp_(min=0)
        ctx.save_for_backward(x, values, crow, col, t_crow, t_col, perm, y if ctx.relu else None)
        return y

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        if ctx.native:
            return SparseLinearFunction._native_backward(ctx, grad_out)
        x, values, crow, col, t_crow, t_col, perm, y = ctx.saved_tensors
        if ctx.relu:
            grad_out = grad_out.masked_fill(y <= 0, 0)
        out_features, in_features = ctx.out_features, x.shape[1]
        grad_x = grad_values = grad_bias = None
        if ctx.needs_input_grad[0]:
            weight_t = _csr(t_crow, t_col, values[perm], (in_features, out_features))
            grad_x = torch.sparse.mm(weight_t, grad_out.t()).t().contiguous()
        if ctx.needs_input_grad[1]:
            pattern = _csr(crow, col, values, (out_features, in_features))
            sampled = torch.sparse.sampled_addmm(pattern, grad_out.t(), x, beta=0.0)
            grad_values = sampled.values()
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_out.sum(0)
        return grad_x, grad_values, grad_bias, None, None, None, None, None, None, None

    @staticmethod
    @once_differentiable
    def _native_backward(ctx, grad_out):
        lib = kernels.library()
        xp, values, crow, col, t_crow, t_col, perm, y = ctx.saved_tensors
        pl = ctx.plan
        want_bias = ctx.has_bias and ctx.needs_input_grad[2]
        gp, grad_bias = kernels.pack(lib, grad_out, ctx.tile, sums=want_bias, gate=y, width=pl.pack)
        grad_x = grad_values = None
        if ctx.needs_input_grad[1]:
            grad_values = kernels.sddmm(lib, crow, col, gp, xp, ctx.tile, width=pl.sddmm)
        if ctx.needs_input_grad[0]:  # values in Wᵀ's order first: one parallel gather
            values_t = kernels.gather(lib, values, perm)
            grad_x = kernels.spmm(
                lib, t_crow, t_col, values_t, None, None, gp, ctx.batch, ctx.tile, width=pl.spmm
            )
        return grad_x, grad_values, grad_bias, None, None, None, None, None, None, None


def sparse_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    crow: torch.Tensor,
    col: torch.Tensor,
    t_crow: torch.Tensor,
    t_col: torch.Tensor,
    perm: torch.Tensor,
    out_features: int,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """``x Wᵀ + b`` (``relu(x Wᵀ + b)`` when ``relu``) for ``x (..., in)``: leading dims are
    flattened, returns ``(..., out)``.

    Raises:
        SparsenetsError: ``x`` is not float32/float64 or its dtype differs from ``values``.
    """
    if x.dtype not in SUPPORTED_DTYPES or x.dtype != values.dtype:
        raise SparsenetsError(
            f"sparse linear input dtype must equal the layer dtype {values.dtype} "
            f"(float32 or float64), got {x.dtype}"
        )
    in_features = int(t_crow.numel()) - 1
    if x.dim() == 0 or x.shape[-1] != in_features:
        raise SparsenetsError(
            f"sparse linear input must have shape (..., {in_features}), got {tuple(x.shape)}"
        )
    x2 = x if x.dim() == 2 else x.reshape(-1, in_features)
    lib = kernels.library() if x.device.type == "cpu" else None
    if lib is not None and not (
        torch.is_grad_enabled()
        and (x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad))
    ):  # inference: the kernels directly, without the autograd bookkeeping
        if x2.shape[0] == 1:  # serving one request: no packing, no padded lanes
            y2 = kernels.spmv(lib, crow, col, values, bias, x2, relu=relu)
        else:
            pl, tile = kernels.layer_plan(lib, in_features, out_features, values.numel(), x.dtype)
            width = kernels.inference_width(x2.shape[0], x.dtype, pl.spmm)  # no padded lanes
            xp, _ = kernels.pack(lib, x2, tile, width=width)
            y2 = kernels.spmm(
                lib, crow, col, values, None, bias, xp, x2.shape[0], tile, relu=relu, width=width
            )
    else:
        y2 = SparseLinearFunction.apply(
            x2, values, bias, crow, col, t_crow, t_col, perm, out_features, relu
        )
    return y2 if x.dim() == 2 else y2.reshape(*x.shape[:-1], out_features)
