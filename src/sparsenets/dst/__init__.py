"""Dynamic sparse training: the sparsifier and its method presets."""

from .base import (
    DropAndGrow,
    Method,
    MethodState,
    Regrowing,
    Scheduled,
    SparsityContext,
    TopologyChange,
    drop_and_grow,
    drop_count,
)
from .methods import CTRE, MEST, SET, SNFS, RigL, Static
from .pruning import GMP, GraNet
from .registry import METHODS, make_method, method_options
from .seft import SEFT, swap_per_group, swap_per_row
from .sparsifier import DynamicSparsity
from .wrapper import SparseOptimizer

__all__ = [
    "CTRE", "GMP", "MEST", "METHODS", "SET", "SNFS", "DropAndGrow", "DynamicSparsity",
    "GraNet", "Method", "MethodState", "Regrowing", "RigL", "SEFT", "Scheduled", "SparseOptimizer", "SparsityContext", "TopologyChange",
    "Static", "drop_and_grow", "drop_count", "make_method", "method_options", "swap_per_group", "swap_per_row",
]
