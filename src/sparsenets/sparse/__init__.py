"""Truly sparse execution: CSR linear layers, exact conversion and sparse model files."""

from .convert import load_sparse, save_sparse, sparse_layers, to_dense, to_sparse
from .csr import CSRStructure, build_structure, csr_to_mask, structure_from_csr
from .functional import SparseLinearFunction, sparse_linear
from .layer import SparseLinear

__all__ = [
    "CSRStructure",
    "SparseLinear",
    "SparseLinearFunction",
    "build_structure",
    "csr_to_mask",
    "load_sparse",
    "save_sparse",
    "sparse_layers",
    "sparse_linear",
    "structure_from_csr",
    "to_dense",
    "to_sparse",
]
