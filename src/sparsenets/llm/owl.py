"""OWL's statistics pass: the outlier ratio (LOD) of every decoder block of the dense model.

OWL (Yin et al. 2024) is a layer-wise allocation: :func:`sparsenets.allocation.owl` turns
per-block outlier ratios into per-block sparsities (mean S, each within S ± λ; the mathematics
is stated there). This module computes those ratios. For each decoder block l, take the Wanda
scores |W_ij|·‖X_j‖₂ of all its prunable Linear layers together; LOD_l is the fraction of those
scores above ``M · mean(scores)`` (M = 5).

The ratios are computed from the *dense* model (one sequential calibration pass gathering input
feature norms, before any block is pruned), as in the paper's code, which scores the dense model
before pruning with a uniform or OWL allocation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .. import allocation
from ..errors import SparsenetsError
from ..scores import wanda
from .adapters import DecoderAdapter, get_adapter, in_features, weight_matrix
from .calibrate import BlockLoader, sequential_calibration
from .stats import InputNormStats, InputStats


def outlier_ratio(scores: Iterable[torch.Tensor], m: float = 5.0) -> float:
    """LOD of one block: fraction of all entries of ``scores`` (any shapes) above ``m`` · their mean."""
    flat = torch.cat([s.detach().reshape(-1).double() for s in scores])
    if flat.numel() == 0:
        raise SparsenetsError("OWL: a decoder block has no prunable weights")
    return float((flat > m * flat.mean()).double().mean())


def owl_sparsities(lod: Sequence[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities from outlier ratios ``lod`` (a list): :func:`sparsenets.allocation.owl`."""
    return list(allocation.owl({str(i): v for i, v in enumerate(lod)}, sparsity, lam).values())


@torch.no_grad()
def owl_outlier_ratios(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    m: float = 5.0,
    batch_size: int = 8,
    adapter: DecoderAdapter | None = None,
    progress: bool = True,
    loader: BlockLoader | None = None,
) -> dict[str, float]:
    """``{block name: LOD}`` for every decoder block of the *dense* ``model`` (nothing is modified).

    One sequential calibration pass gathers ‖X_j‖₂ for each prunable Linear; the Wanda scores of
    all Linear layers of a block give that block's outlier ratio (:func:`outlier_ratio`).
    """
    adapter = adapter or get_adapter(model)
    ratios: dict[str, float] = {}

    def on_block(index: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        linears = adapter.linears(block, index)
        scores = (wanda(weight_matrix(layer), stats[name].finalize()) for name, layer in linears.items())
        ratios[adapter.block_name(index)] = outlier_ratio(scores, m)

    sequential_calibration(
        model,
        calibration,
        stats_factory=lambda layer: InputNormStats(in_features(layer)),
        on_block=on_block,
        batch_size=batch_size,
        adapter=adapter,
        progress=progress,
        loader=loader,
    )
    return ratios


def owl_allocation(
    model: nn.Module,
    calibration: torch.Tensor,
    sparsity: float,
    *,
    m: float = 5.0,
    lam: float = 0.08,
    batch_size: int = 8,
    adapter: DecoderAdapter | None = None,
    progress: bool = True,
) -> list[float]:
    """OWL per-block sparsities of ``model`` (dense-model outlier ratios), mean ``sparsity``, in block order."""
    lod = owl_outlier_ratios(model, calibration, m=m, batch_size=batch_size, adapter=adapter, progress=progress)
    return list(allocation.owl(lod, sparsity, lam).values())
