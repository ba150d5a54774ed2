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
    SEFT,
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
    TopologyChange,
)
from .errors import SparsenetsError
from .lean_optim import LeanAdamW
from .masks import MaskStore
from .prune import prune_at_init
from .report import LayerReport, Report, report
from .rng import Stream
from .select import NM, Unstructured, check_structure, parse_structure
from .sparse import SparseLinear, load_sparse, save_sparse, to_dense, to_sparse
from .targets import find_targets

__version__ = "0.1.0"

#: Feature selectors, imported on first use (they load scikit-learn).
_FEATSEL = ("QuickSelection", "WAST", "NeuroFS", "NeuronAttribution")


def __getattr__(name: str):
    if name in _FEATSEL:
        from . import featsel

        return getattr(featsel, name)
    raise AttributeError(f"module 'sparsenets' has no attribute {name!r}")

__all__ = [
    "LeanAdamW",
    "CTRE", "GMP", "MEST", "METHODS", "NM", "SET", "SNFS", "DropAndGrow", "DynamicSparsity", "GraNet",
    "LayerReport", "MaskStore", "NeuroFS", "NeuronAttribution", "QuickSelection", "WAST", "Method", "MethodState", "Regrowing", "Report", "RigL", "SEFT", "Scheduled",
    "SparseLinear", "SparseOptimizer", "SparsenetsError", "SparsityContext", "Static", "Stream", "TopologyChange", "Unstructured", "allocate",
    "allocate_counts", "check_structure", "find_targets", "load_sparse", "parse_structure", "prune_at_init", "report",
    "save_sparse", "to_dense", "to_sparse", "__version__",
]
