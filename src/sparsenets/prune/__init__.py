"""Pruning dense networks: masks from pruning at initialization (SNIP, GraSP, SynFlow, random,
magnitude), returned as a :class:`~sparsenets.MaskStore` that ``DynamicSparsity(masks=...)`` trains.

See ``docs/pruning.md`` for each method, its defaults and what the reference code does.
"""

from .api import METHODS, make_pruner, prune_at_init
from .base import ALLOCATIONS, InitPruner, PruneTask
from .baselines import Magnitude, Random
from .saliency import GraSP, Snip
from .synflow import SynFlow

__all__ = [
    "ALLOCATIONS", "METHODS", "GraSP", "InitPruner", "Magnitude", "PruneTask", "Random", "Snip", "SynFlow",
    "make_pruner", "prune_at_init",
]
