"""The sparse linear operator ``y = x Wᵀ + b`` with ``W`` held in CSR, and its gradients.

Kernels (torch CSR; MKL inside the CPU wheel):

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

from ..errors import SparsenetsError
from .csr import SUPPORTED_DTYPES


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # torch warns that CSR support is "beta"; the ops used here are stable. The filter is scoped
    # to this call so importing sparsenets leaves the user's warning filters untouched.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


class SparseLinearFunction(torch.autograd.Function):
    """Autograd function for ``y = x Wᵀ + b`` with ``W`` given by CSR values and structure.

    ``apply(x, values, bias, crow, col, t_crow, t_col, perm, out_features)`` with
    ``x (N, in)``, ``values (nnz,)``, ``bias (out,) or None``, the structure of
    :class:`sparsenets.sparse.csr.CSRStructure`; returns ``y (N, out)`` row-major.
    Gradients flow to ``x``, ``values`` and ``bias`` only.
    """

    @staticmethod
    def forward(ctx, x, values, bias, crow, col, t_crow, t_col, perm, out_features):  # noqa: D102
        in_features = x.shape[1]
        weight = _csr(crow, col, values, (out_features, in_features))
        if bias is None:
            y_t = torch.sparse.mm(weight, x.t())  # (out, N) row-major
        else:
            y_t = torch.addmm(bias.unsqueeze(1), weight, x.t())
        ctx.save_for_backward(x, values, crow, col, t_crow, t_col, perm)
        ctx.out_features = out_features
        ctx.has_bias = bias is not None
        return y_t.t().contiguous()

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        x, values, crow, col, t_crow, t_col, perm = ctx.saved_tensors
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
        return grad_x, grad_values, grad_bias, None, None, None, None, None, None


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
) -> torch.Tensor:
    """``x Wᵀ + b`` for ``x (..., in)``: leading dims are flattened, returns ``(..., out)``.

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
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_features)
    y2 = SparseLinearFunction.apply(x2, values, bias, crow, col, t_crow, t_col, perm, out_features)
    return y2.reshape(*lead, out_features)
