"""sparsenets — sparse neural networks on PyTorch.

The public API: build a :class:`DynamicSparsity` around a model and its optimizer, call
``sparsifier.step()`` after ``loss.backward()``, and print :func:`report` for per-layer density,
FLOPs and ITOP rate.
"""

from .allocation import allocate, allocate_counts
from .dst import (
    CTRE,
    GMP,
    MEST,
    METHODS,
    SET,
    SNFS,
    DropAndGrow,
    DynamicSparsity,
    GraNet,
    Method,
    MethodState,
    Regrowing,
    RigL,
    Scheduled,
    SparseOptimizer,
    SparsityContext,
    Static,
)
from .errors import SparsenetsError
from .masks import MaskStore
from .prune import prune_at_init
from .report import LayerReport, Report, report
from .rng import Stream
from .select import NM, Unstructured, check_structure, parse_structure
from .sparse import SparseLinear, load_sparse, save_sparse, to_dense, to_sparse
from .targets import find_targets

__version__ = "0.1.0"

__all__ = [
    "CTRE", "GMP", "MEST", "METHODS", "NM", "SET", "SNFS", "DropAndGrow", "DynamicSparsity", "GraNet",
    "LayerReport", "MaskStore", "Method", "MethodState", "Regrowing", "Report", "RigL", "Scheduled",
    "SparseLinear", "SparseOptimizer", "SparsenetsError", "SparsityContext", "Static", "Stream", "Unstructured", "allocate",
    "allocate_counts", "check_structure", "find_targets", "load_sparse", "parse_structure", "prune_at_init", "report",
    "save_sparse", "to_dense", "to_sparse", "__version__",
]
