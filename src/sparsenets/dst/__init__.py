"""Dynamic sparse training: the sparsifier and its method presets."""

from .base import DropAndGrow, Method, drop_and_grow
from .methods import CTRE, MEST, SET, SNFS, RigL, Static
from .pruning import GMP, GraNet
from .registry import METHODS, make_method, method_options
from .sparsifier import DynamicSparsity

__all__ = [
    "CTRE", "GMP", "MEST", "METHODS", "SET", "SNFS", "DropAndGrow", "DynamicSparsity",
    "GraNet", "Method", "RigL", "Static", "drop_and_grow", "make_method", "method_options",
]
