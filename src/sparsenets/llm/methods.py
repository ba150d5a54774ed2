"""One-shot pruning methods for one Linear layer.

A method is a :class:`LayerPruner`: which input statistics it needs (a factory, or ``None``) and a
function ``prune_weight(weight, stat, sparsity, structure) -> keep mask``. The comparison group is
the output row (paper default for both methods here): every row of W (out_features, in_features)
loses exactly ``round(sparsity · in_features)`` weights, or, for N:M, every group of M consecutive
input weights of a row keeps exactly N. Selection and structures live in :mod:`sparsenets.select`
(here the sparsity is turned into a keep count per row, :func:`~sparsenets.select.keep_count`);
scores in :mod:`sparsenets.scores`. Methods that also *update* the kept weights (SparseGPT's
OBS reconstruction) fit the same signature: they modify ``weight`` in place and return the mask.

* magnitude: S = |W|.
* Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"):
  S_ij = |W_ij| · ‖X_j‖₂, ‖X_j‖₂ the L2 norm of input feature j over all calibration tokens.
* SparseGPT (Frantar & Alistarh 2023): blocked OBS pruning with weight reconstruction from
  H = X Xᵀ, see :mod:`.sparsegpt`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SparsenetsError, choice_error
from ..scores import magnitude, wanda
from ..select import NM, Structure, keep_count, parse_structure, select
from .adapters import in_features
from .sparsegpt import _sparsegpt
from .stats import GramStats, InputNormStats, InputStats

#: Old name of :func:`sparsenets.scores.wanda` (same function).
wanda_scores = wanda

__all__ = ["METHODS", "LayerPruner", "Structure", "get_method", "keep_mask", "nm_keep_mask", "parse_structure",
           "row_keep_mask", "wanda_scores"]


def keep_mask(scores: torch.Tensor, sparsity: float, structure: Structure) -> torch.Tensor:
    """Keep mask for ``scores`` (out, in) in the row group: ``round(sparsity · in)`` pruned per row, or N:M."""
    if structure.is_nm:
        return select(scores, structure=structure)
    return select(scores, keep_count(scores.shape[1], sparsity), group="row")


def row_keep_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask pruning the ``round(sparsity · in)`` lowest scores of every row of ``scores`` (out, in).

    Same as ``select(scores, keep_count(in, sparsity), group="row")`` (ties pruned by position).
    """
    return select(scores, keep_count(scores.shape[1], sparsity), group="row")


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask with exactly ``n`` True in every group of ``m`` consecutive inputs of a row.

    Same as ``select(scores, structure=NM(n, m))``; ``scores`` (out, in), ``in`` a multiple of ``m``.
    """
    return select(scores, structure=NM(n, m))


PruneFn = Callable[[torch.Tensor, torch.Tensor | None, float, Structure], torch.Tensor]


@dataclass(frozen=True)
class LayerPruner:
    """A pruning method for one Linear layer.

    Attributes:
        name: method name.
        stats: builds the input-statistics accumulator of a layer, or ``None`` if the method
            needs no calibration data.
        prune_weight: ``(weight (out, in), finalized stat or None, sparsity, structure)`` →
            bool keep mask (out, in); may update ``weight`` in place (reconstruction methods).
    """

    name: str
    stats: Callable[[nn.Linear], InputStats] | None
    prune_weight: PruneFn


def _magnitude(weight: torch.Tensor, _stat: torch.Tensor | None, sparsity: float, structure: Structure) -> torch.Tensor:
    return keep_mask(magnitude(weight), sparsity, structure)


def _wanda(weight: torch.Tensor, stat: torch.Tensor | None, sparsity: float, structure: Structure) -> torch.Tensor:
    if stat is None:
        raise SparsenetsError("wanda needs calibration data (input feature norms)")
    return keep_mask(wanda(weight, stat), sparsity, structure)


METHODS: dict[str, LayerPruner] = {
    "magnitude": LayerPruner("magnitude", None, _magnitude),
    "wanda": LayerPruner("wanda", lambda layer: InputNormStats(in_features(layer)), _wanda),
    "sparsegpt": LayerPruner("sparsegpt", lambda layer: GramStats(in_features(layer)), _sparsegpt),
}


def get_method(name: str) -> LayerPruner:
    """The :class:`LayerPruner` called ``name`` (see :data:`METHODS`)."""
    if name not in METHODS:
        raise choice_error("method", name, METHODS)
    return METHODS[name]
