"""OWL: Outlier Weighed Layerwise sparsity (Yin et al. 2024).

For each decoder block l, take the Wanda scores |W_ij|·‖X_j‖₂ of all its prunable Linear layers
together; the layer outlier distribution LOD_l is the fraction of those scores above
``M · mean(scores)`` (M = 5). LOD is min-max normalised to r ∈ [0, 2λ] (λ = 0.08) and

    sparsity_l = 1 − (r_l − mean(r) + (1 − S)) = S − (r_l − mean(r)),

so blocks with more outliers are pruned *less* and the mean sparsity over blocks is exactly S.

Bound: the reference formula keeps every block within S ± λ only when r is spread evenly; with a
skewed LOD (say one low block among many high ones) a block can land up to 2λ from S. Here the
centred deviations r_l − mean(r) are additionally scaled down (never up) so that the largest one
is at most λ: the mean stays S, the order of blocks is kept, every block lies in [S − λ, S + λ],
and the result equals the reference whenever the reference already stays within that range.

The ratios are computed from the *dense* model (one sequential calibration pass gathering input
feature norms, before any block is pruned), as in the paper's code, which scores the dense model
before pruning with a uniform or OWL allocation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..errors import SparsenetsError
from .adapters import DecoderAdapter, get_adapter
from .calibrate import sequential_calibration
from .methods import wanda_scores
from .stats import InputNormStats, InputStats


def outlier_ratio(scores: Iterable[torch.Tensor], m: float = 5.0) -> float:
    """LOD of one block: fraction of all entries of ``scores`` (any shapes) above ``m`` · their mean."""
    flat = torch.cat([s.detach().reshape(-1).double() for s in scores])
    if flat.numel() == 0:
        raise SparsenetsError("OWL: a decoder block has no prunable weights")
    return float((flat > m * flat.mean()).double().mean())


def owl_sparsities(lod: Sequence[float], sparsity: float, lam: float = 0.08) -> list[float]:
    """Per-block sparsities from outlier ratios ``lod``: mean exactly ``sparsity``, each within ± ``lam``.

    Higher LOD → lower sparsity. All-equal ratios give the uniform allocation.
    """
    if lam < 0:
        raise SparsenetsError(f"OWL lambda must be >= 0, got {lam!r}")
    ratios = torch.as_tensor(list(lod), dtype=torch.float64)
    if ratios.numel() == 0:
        raise SparsenetsError("OWL needs at least one decoder block")
    spread = float(ratios.max() - ratios.min())
    if spread == 0.0 or lam == 0.0:
        return [float(sparsity)] * ratios.numel()
    r = (ratios - ratios.min()) / spread * (2.0 * lam)  # [0, 2λ]
    deviation = r - r.mean()
    largest = float(deviation.abs().max())
    if largest > lam:
        deviation = deviation * (lam / largest)
    result = [float(sparsity - d) for d in deviation]
    if min(result) < 0.0 or max(result) >= 1.0:
        raise SparsenetsError(
            f"OWL allocation leaves [0, 1): sparsity {sparsity:g} with lambda {lam:g} gives block sparsities "
            f"from {min(result):.3f} to {max(result):.3f}; lower owl_lambda"
        )
    return result


@torch.no_grad()
def owl_outlier_ratios(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    m: float = 5.0,
    batch_size: int = 8,
    adapter: DecoderAdapter | None = None,
    progress: bool = True,
) -> list[float]:
    """LOD of every decoder block of the *dense* ``model`` (nothing is modified).

    One sequential calibration pass gathers ‖X_j‖₂ for each prunable Linear; the Wanda scores of
    all Linear layers of a block give that block's outlier ratio (:func:`outlier_ratio`).
    """
    adapter = adapter or get_adapter(model)
    ratios: list[float] = []

    def on_block(_index: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        linears = adapter.linears(block)
        ratios.append(outlier_ratio((wanda_scores(layer.weight, stats[name].finalize()) for name, layer in linears.items()), m))

    sequential_calibration(
        model,
        calibration,
        stats_factory=lambda layer: InputNormStats(layer.in_features),
        on_block=on_block,
        batch_size=batch_size,
        adapter=adapter,
        progress=progress,
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
    """OWL per-block sparsities of ``model`` (dense-model outlier ratios), mean ``sparsity``."""
    lod = owl_outlier_ratios(model, calibration, m=m, batch_size=batch_size, adapter=adapter, progress=progress)
    return owl_sparsities(lod, sparsity, lam)
