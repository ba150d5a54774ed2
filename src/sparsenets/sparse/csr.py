"""CSR structure of a sparse weight matrix, built from a boolean mask (pure functions).

A weight ``W`` of shape ``(out, in)`` is stored as a values vector of shape ``(nnz,)`` in
row-major CSR order (the order of ``W[mask]``) plus its structure:

* ``crow_indices`` ``(out + 1,)`` and ``col_indices`` ``(nnz,)``: the CSR of ``W``;
* ``t_crow_indices`` ``(in + 1,)`` and ``t_col_indices`` ``(nnz,)``: the CSR of ``Wᵀ``;
* ``perm`` ``(nnz,)`` int64: ``values[perm]`` are the values of ``Wᵀ`` in its CSR order.

Keeping the structure of ``Wᵀ`` lets grad-input run a CSR matmul without transposing the
sparse matrix each step (transposing CSR in the hot path is 2-3x slower on CPU).

Indices are int32 when every index fits (MKL runs its LP64 kernels on them without a
conversion), int64 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SparsenetsError

SUPPORTED_DTYPES = (torch.float32, torch.float64)
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class CSRStructure:
    """The CSR structure of ``W`` (``out × in``) and of ``Wᵀ``, without values.

    Attributes:
        crow_indices: ``(out + 1,)`` row pointers of ``W``.
        col_indices: ``(nnz,)`` column of each stored value, sorted within each row.
        t_crow_indices: ``(in + 1,)`` row pointers of ``Wᵀ``.
        t_col_indices: ``(nnz,)`` columns of ``Wᵀ`` (= rows of ``W``).
        perm: ``(nnz,)`` int64, ``values[perm]`` is the values vector of ``Wᵀ``.
        shape: ``(out, in)``.
    """

    crow_indices: torch.Tensor
    col_indices: torch.Tensor
    t_crow_indices: torch.Tensor
    t_col_indices: torch.Tensor
    perm: torch.Tensor
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        """Number of stored values."""
        return int(self.col_indices.numel())


def index_dtype_for(shape: tuple[int, int], nnz: int) -> torch.dtype:
    """int32 when every index and count fits in int32, else int64."""
    return torch.int32 if max(shape[0], shape[1], nnz) < _INT32_MAX else torch.int64


def stored_bytes(
    shape: tuple[int, ...],
    nnz: int,
    value_dtype: torch.dtype,
    index_dtype: torch.dtype | None = None,
    bias: int = 0,
) -> dict[str, int]:
    """Bytes of a weight stored dense and stored as CSR (pure).

    Dense ``= numel · itemsize``; CSR ``= nnz · itemsize`` (values) ``+ nnz · index itemsize``
    (column indices) ``+ (rows + 1) · index itemsize`` (row pointers). A weight of more than two
    dimensions is stored as the ``(out, numel / out)`` matrix.

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
    numel = 1
    for dim in shape:
        numel *= dim
    cols = numel // rows if rows else 0
    index_dtype = index_dtype or index_dtype_for((rows, cols), int(nnz))
    value_size = torch.empty((), dtype=value_dtype).element_size()
    index_size = torch.empty((), dtype=index_dtype).element_size()
    bias_bytes = int(bias) * value_size
    return {
        "dense": numel * value_size + bias_bytes,
        "sparse": int(nnz) * (value_size + index_size) + (rows + 1) * index_size + bias_bytes,
    }


def check_mask(mask: object, shape: tuple[int, int] | None = None, what: str = "mask") -> torch.Tensor:
    """Validate a 2-D ``torch.bool`` mask (of ``shape`` when given) and return it."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise SparsenetsError(f"{what} must be a torch.bool tensor, got {got}")
    if mask.dim() != 2:
        raise SparsenetsError(f"{what} must be 2-D (out, in), got shape {tuple(mask.shape)}")
    if shape is not None and tuple(mask.shape) != tuple(shape):
        raise SparsenetsError(f"{what} has shape {tuple(mask.shape)}, expected {tuple(shape)}")
    return mask


def check_dtype(dtype: torch.dtype, what: str = "sparse layer") -> torch.dtype:
    """Raise unless ``dtype`` is float32 or float64 (the dtypes the CPU CSR kernels support)."""
    if dtype not in SUPPORTED_DTYPES:
        raise SparsenetsError(f"{what} dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def mask_to_csr(mask: torch.Tensor, index_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(crow_indices (out+1,), col_indices (nnz,))`` of a bool mask ``(out, in)``.

    The entry order is row-major, the order of ``weight[mask]``.
    """
    check_mask(mask)
    rows, cols = mask.nonzero(as_tuple=True)  # row-major order
    out_features = mask.shape[0]
    dtype = index_dtype or index_dtype_for(tuple(mask.shape), int(cols.numel()))
    counts = torch.bincount(rows, minlength=out_features)
    crow = torch.zeros(out_features + 1, dtype=torch.int64, device=mask.device)
    torch.cumsum(counts, 0, out=crow[1:])
    return crow.to(dtype), cols.to(dtype)


def row_indices(crow_indices: torch.Tensor) -> torch.Tensor:
    """``(nnz,)`` int64 row of each stored entry, expanded from ``crow_indices (out+1,)``."""
    counts = crow_indices.diff().to(torch.int64)
    rows = torch.arange(counts.numel(), device=crow_indices.device)
    return torch.repeat_interleave(rows, counts)


def transpose_structure(
    crow_indices: torch.Tensor, col_indices: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR structure of ``Wᵀ`` from that of ``W`` (``shape = (out, in)``).

    Returns:
        ``(t_crow_indices (in+1,), t_col_indices (nnz,), perm (nnz,) int64)`` where
        ``values[perm]`` are ``W``'s values in ``Wᵀ``'s CSR order. Index dtypes follow
        ``col_indices``.
    """
    return _transpose(row_indices(crow_indices), col_indices, shape)


def _transpose(
    rows: torch.Tensor, col_indices: torch.Tensor, shape: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`transpose_structure` from each entry's row ``(nnz,)`` int64 and column."""
    out_features, in_features = shape
    cols = col_indices.to(torch.int64)
    perm = torch.argsort(cols * out_features + rows)  # keys are unique: the order is total
    counts = torch.bincount(cols, minlength=in_features)
    t_crow = torch.zeros(in_features + 1, dtype=torch.int64, device=cols.device)
    torch.cumsum(counts, 0, out=t_crow[1:])
    dtype = col_indices.dtype
    return t_crow.to(dtype), rows[perm].to(dtype), perm


def build_structure(mask: torch.Tensor, index_dtype: torch.dtype | None = None) -> CSRStructure:
    """The full :class:`CSRStructure` (``W`` and ``Wᵀ``) of a bool mask ``(out, in)``."""
    crow, col = mask_to_csr(mask, index_dtype)
    return structure_from_csr(crow, col, tuple(mask.shape))


def structure_from_csr(
    crow_indices: torch.Tensor, col_indices: torch.Tensor, shape: tuple[int, int]
) -> CSRStructure:
    """A :class:`CSRStructure` from ``W``'s CSR indices (validated: sizes, sorted columns)."""
    out_features, in_features = (int(shape[0]), int(shape[1]))
    crow, col = crow_indices, col_indices
    if crow.dim() != 1 or crow.numel() != out_features + 1:
        raise SparsenetsError(
            f"crow_indices must have shape ({out_features + 1},), got {tuple(crow.shape)}"
        )
    nnz = int(col.numel())
    if int(crow[0]) != 0 or int(crow[-1]) != nnz or bool((crow.diff() < 0).any()):
        raise SparsenetsError(f"crow_indices are not valid row pointers for nnz={nnz}")
    if nnz and (int(col.min()) < 0 or int(col.max()) >= in_features):
        raise SparsenetsError(f"col_indices must lie in [0, {in_features})")
    rows = row_indices(crow)
    if nnz > 1:
        keys = rows * in_features + col.to(torch.int64)
        if bool((keys.diff() <= 0).any()):
            raise SparsenetsError("col_indices must be strictly increasing within each row")
    t_crow, t_col, perm = transpose_structure(crow, col, (out_features, in_features))
    return CSRStructure(crow, col, t_crow, t_col, perm, (out_features, in_features))


def structure_from_index(index: torch.Tensor, shape: tuple[int, int], index_dtype: torch.dtype | None = None) -> CSRStructure:
    """A :class:`CSRStructure` from the sorted flat positions ``index`` ``(nnz,)`` int64
    (``row * in + col``; validated: strictly increasing, inside the matrix), with no dense
    tensor and no second pass over the rows."""
    out_features, in_features = int(shape[0]), int(shape[1])
    index = index.to(torch.int64)
    nnz = int(index.numel())
    if nnz and (int(index[0]) < 0 or int(index[-1]) >= out_features * in_features):
        raise SparsenetsError(f"index holds positions outside the {(out_features, in_features)} matrix")
    if nnz > 1 and bool((index.diff() <= 0).any()):
        raise SparsenetsError("index must be strictly increasing")
    dtype = index_dtype or index_dtype_for((out_features, in_features), nnz)
    rows = index // in_features
    crow = torch.zeros(out_features + 1, dtype=torch.int64, device=index.device)
    torch.cumsum(torch.bincount(rows, minlength=out_features), 0, out=crow[1:])
    col = (index - rows * in_features).to(dtype)
    t_crow, t_col, perm = _transpose(rows, col, (out_features, in_features))
    return CSRStructure(crow.to(dtype), col, t_crow, t_col, perm, (out_features, in_features))


def csr_to_mask(crow_indices: torch.Tensor, col_indices: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The bool mask ``(out, in)`` of a CSR structure."""
    mask = torch.zeros(shape, dtype=torch.bool, device=col_indices.device)
    mask[row_indices(crow_indices), col_indices.to(torch.int64)] = True
    return mask


def csr_to_dense(
    crow_indices: torch.Tensor, col_indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """The dense ``(out, in)`` matrix with ``values (nnz,)`` at the CSR positions, zero elsewhere."""
    dense = torch.zeros(shape, dtype=values.dtype, device=values.device)
    dense[row_indices(crow_indices), col_indices.to(torch.int64)] = values
    return dense


def flat_index(crow_indices: torch.Tensor, col_indices: torch.Tensor, in_features: int) -> torch.Tensor:
    """``(nnz,)`` int64 flat positions ``row * in + col`` of the stored entries (sorted).

    CSR order is row-major with sorted columns, so the result is ascending and equals the flat
    indices of ``mask.nonzero()`` for the layer's mask.
    """
    return row_indices(crow_indices) * int(in_features) + col_indices.to(torch.int64)


def remap_plan(old_index: torch.Tensor, new_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each new position was in the old topology: ``(source (nnz_new,) int64, kept
    (nnz_new,) bool)``; ``source`` is meaningful where ``kept``. Compute once, apply with
    :func:`apply_remap` to the values and to every per-element optimizer state."""
    if old_index.numel() == 0:
        return torch.zeros_like(new_index), torch.zeros(new_index.shape, dtype=torch.bool, device=new_index.device)
    source = torch.searchsorted(old_index, new_index).clamp_(max=old_index.numel() - 1)
    return source, old_index[source] == new_index


def apply_remap(values: torch.Tensor, plan: tuple[torch.Tensor, torch.Tensor], fill: float = 0.0) -> torch.Tensor:
    """``values`` ``(nnz_old, ...)`` moved to the new topology of ``plan`` (:func:`remap_plan`):
    kept positions keep their entry, new ones get ``fill``."""
    source, kept = plan
    result = torch.full((source.numel(), *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    if values.shape[0]:
        result[kept] = values[source[kept]]
    return result


def remap(values: torch.Tensor, old_index: torch.Tensor, new_index: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """Move per-nonzero ``values`` from one topology to another (pure).

    Args:
        values: ``(nnz_old, ...)`` one entry per stored position of the old topology.
        old_index: ``(nnz_old,)`` sorted flat positions of the old topology.
        new_index: ``(nnz_new,)`` sorted flat positions of the new topology.
        fill: the value at positions that are new (not in ``old_index``).

    Returns:
        ``(nnz_new, ...)``: ``values`` of the kept positions, ``fill`` at the new ones; values at
        dropped positions are discarded.
    """
    return apply_remap(values, remap_plan(old_index, new_index), fill)
