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
from .sparsifier import DynamicSparsity
from .wrapper import SparseOptimizer

__all__ = [
    "CTRE", "GMP", "MEST", "METHODS", "SET", "SNFS", "DropAndGrow", "DynamicSparsity",
    "GraNet", "Method", "MethodState", "Regrowing", "RigL", "Scheduled", "SparseOptimizer", "SparsityContext", "TopologyChange",
    "Static", "drop_and_grow", "drop_count", "make_method", "method_options",
]
