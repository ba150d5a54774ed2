"""One-shot pruning methods for one Linear layer, and the N:M / per-row mask selection they share.

A method is a :class:`LayerPruner`: which input statistics it needs (a factory, or ``None``) and a
function ``prune_weight(weight, stat, sparsity, structure) -> keep mask``. The comparison group is
the output row (paper default for both methods here): every row of W (out_features, in_features)
loses exactly ``round(sparsity · in_features)`` weights, or, for N:M, every group of M consecutive
input weights of a row keeps exactly N. Methods that also *update* the kept weights (SparseGPT's
OBS reconstruction) fit the same signature: they modify ``weight`` in place and return the mask.

* magnitude: S = |W|.
* Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs"):
  S_ij = |W_ij| · ‖X_j‖₂, ‖X_j‖₂ the L2 norm of input feature j over all calibration tokens.
* SparseGPT (Frantar & Alistarh 2023): blocked OBS pruning with weight reconstruction from
  H = X Xᵀ, see :mod:`.sparsegpt`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SparsenetsError, choice_error
from .sparsegpt import _sparsegpt
from .stats import GramStats, InputNormStats, InputStats


@dataclass(frozen=True)
class Structure:
    """Sparsity structure: unstructured (``n == m == 0``) or N:M (keep n of every m inputs)."""

    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        """The sparsity an N:M pattern implies (1 − n/m)."""
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"


def parse_structure(structure: str | Structure) -> Structure:
    """``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``, ``"4:8"``; 0 < N < M) → :class:`Structure`."""
    if isinstance(structure, Structure):
        return structure
    text = str(structure).strip().lower()
    if text == "unstructured":
        return Structure()
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise SparsenetsError(f"unknown structure {structure!r} (valid: unstructured, N:M with 0 < N < M, e.g. 2:4, 4:8)")
    return Structure(int(match[1]), int(match[2]))


def row_keep_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep mask pruning the ``round(sparsity · in)`` lowest scores of every row.

    Args:
        scores: (out, in) float scores (higher = more important).
        sparsity: fraction of each row to remove, in [0, 1].

    Returns:
        (out, in) bool mask; every row has exactly ``in − round(sparsity · in)`` True entries.
        Ties are broken by position (stable sort), so the result is deterministic.
    """
    n_prune = int(round(sparsity * scores.shape[1]))
    keep = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        order = torch.argsort(scores.float(), dim=1, stable=True)  # (out, in), ascending
        keep.scatter_(1, order[:, :n_prune], False)
    return keep


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask with exactly ``n`` True in every group of ``m`` consecutive inputs of a row.

    Args:
        scores: (out, in) float scores; ``in`` must be a multiple of ``m``.

    Returns:
        (out, in) bool mask.
    """
    out_features, in_features = scores.shape
    if in_features % m:
        raise SparsenetsError(f"N:M structure {n}:{m} needs in_features divisible by {m}, got {in_features}")
    groups = scores.float().reshape(out_features, in_features // m, m)  # (out, in/m, m)
    order = torch.argsort(groups, dim=2, descending=True, stable=True)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, order[..., :n], True)
    return keep.reshape(out_features, in_features)


def keep_mask(scores: torch.Tensor, sparsity: float, structure: Structure) -> torch.Tensor:
    """Per-row (unstructured) or N:M keep mask for ``scores`` (out, in)."""
    if structure.is_nm:
        return nm_keep_mask(scores, structure.n, structure.m)
    return row_keep_mask(scores, sparsity)


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
    return keep_mask(weight.abs(), sparsity, structure)


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda scores |W_ij| · ‖X_j‖₂: weight (out, in), input_norms (in,) → (out, in) float32."""
    return weight.abs().float() * input_norms.to(weight.device).float().unsqueeze(0)


def _wanda(weight: torch.Tensor, stat: torch.Tensor | None, sparsity: float, structure: Structure) -> torch.Tensor:
    if stat is None:
        raise SparsenetsError("wanda needs calibration data (input feature norms)")
    return keep_mask(wanda_scores(weight, stat), sparsity, structure)


METHODS: dict[str, LayerPruner] = {
    "magnitude": LayerPruner("magnitude", None, _magnitude),
    "wanda": LayerPruner("wanda", lambda layer: InputNormStats(layer.in_features), _wanda),
    "sparsegpt": LayerPruner("sparsegpt", lambda layer: GramStats(layer.in_features), _sparsegpt),
}


def get_method(name: str) -> LayerPruner:
    """The :class:`LayerPruner` called ``name`` (see :data:`METHODS`)."""
    if name not in METHODS:
        raise choice_error("method", name, METHODS)
    return METHODS[name]
