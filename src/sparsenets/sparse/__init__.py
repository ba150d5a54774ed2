"""Truly sparse execution: CSR linear layers, exact conversion and sparse model files."""

from .convert import (
    load_sparse,
    save_sparse,
    sparse_layers,
    sparsify_linear_,
    to_dense,
    to_sparse,
)
from .csr import CSRStructure, build_structure, csr_to_mask, flat_index, remap, structure_from_csr
from .functional import SparseLinearFunction, sparse_linear
from .layer import SparseLinear, fuse_relu

__all__ = [
    "CSRStructure",
    "SparseLinear",
    "SparseLinearFunction",
    "build_structure",
    "csr_to_mask",
    "flat_index",
    "fuse_relu",
    "load_sparse",
    "remap",
    "save_sparse",
    "sparse_layers",
    "sparse_linear",
    "sparsify_linear_",
    "structure_from_csr",
    "to_dense",
    "to_sparse",
]
