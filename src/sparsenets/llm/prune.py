"""One-shot pruning of a Hugging Face causal LM: ``prune(model, calibration, method=..., ...)``.

Every ``nn.Linear`` inside the decoder blocks is pruned, block by block, with statistics gathered
by :func:`.calibrate.sequential_calibration` (the calibration set flows through the already
pruned earlier blocks). Embeddings and ``lm_head`` are never touched (they are often tied).

With ``allocation="owl"`` a first sequential pass over the *dense* model computes each block's
outlier ratio and from it the block's sparsity (:mod:`.owl`); the pruning pass then uses it.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ..errors import SparsenetsError, choice_error
from .adapters import get_adapter
from .calibrate import sequential_calibration
from .methods import Structure, get_method, parse_structure
from .owl import owl_allocation
from .stats import InputStats

log = logging.getLogger(__name__)

#: Layer-wise sparsity allocations accepted by :func:`prune`.
ALLOCATIONS = ("uniform", "owl")


def _check_sparsity(sparsity: float) -> float:
    try:
        value = float(sparsity)
    except (TypeError, ValueError):
        raise SparsenetsError(f"sparsity must be a number in [0, 1), got {sparsity!r}") from None
    if not 0.0 <= value < 1.0:
        raise SparsenetsError(f"sparsity must be in [0, 1), got {sparsity!r}")
    return value


def resolve_sparsity(sparsity: float | None, structure: str | Structure) -> tuple[float, Structure]:
    """(target sparsity, parsed structure): N:M implies 1 − N/M; unstructured defaults to 0.5."""
    parsed = parse_structure(structure)
    if parsed.is_nm:
        if sparsity is not None and abs(_check_sparsity(sparsity) - parsed.sparsity) > 1e-9:
            raise SparsenetsError(
                f"sparsity {sparsity} contradicts structure {parsed} (which means sparsity {parsed.sparsity:g}); omit sparsity"
            )
        return parsed.sparsity, parsed
    return _check_sparsity(0.5 if sparsity is None else sparsity), parsed


def check_allocation(allocation: str, structure: Structure) -> None:
    """Reject an unknown allocation, and OWL with N:M (where every layer is at 1 − N/M)."""
    if allocation not in ALLOCATIONS:
        raise choice_error("allocation", allocation, ALLOCATIONS)
    if allocation == "owl" and structure.is_nm:
        raise SparsenetsError(f"allocation 'owl' does not apply to N:M structure {structure} (every layer is at 1 - N/M); use allocation='uniform'")


@torch.no_grad()
def prune(
    model: nn.Module,
    calibration: torch.Tensor | None = None,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    structure: str = "unstructured",
    allocation: str = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, float]:
    """Prune every Linear inside the decoder blocks of ``model`` in place.

    Args:
        model: a Hugging Face causal LM (LLaMA family or OPT, see :mod:`.adapters`).
        calibration: (n_samples, seq_len) int64 token ids (e.g. from
            :func:`.data.calibration_batches`); required by ``wanda``, ignored by ``magnitude``.
        method: ``"wanda"`` (|W|·‖X_j‖₂, Sun et al. 2023), ``"magnitude"`` (|W|) or
            ``"sparsegpt"`` (blocked OBS with weight reconstruction, Frantar & Alistarh 2023).
        sparsity: fraction of weights removed from every output row, in [0, 1); default 0.5.
            With N:M structures it is implied (1 − N/M) and may be omitted.
        structure: ``"unstructured"`` (per-row exact sparsity) or ``"N:M"`` such as ``"2:4"``,
            ``"4:8"`` (N kept of every M consecutive input weights of each row).
        allocation: layer-wise sparsity allocation; ``"uniform"`` (every layer at ``sparsity``)
            or ``"owl"`` (per-block sparsity from the dense model's outlier ratios, mean
            ``sparsity``, each within ± ``owl_lambda``; unstructured only, needs calibration
            data for every method).
        owl_m: OWL outlier threshold M (scores above M · mean count as outliers).
        owl_lambda: OWL λ, the largest deviation of a block's sparsity from ``sparsity``.
        batch_size: calibration sequences per forward call.
        progress: show progress bars.

    Returns:
        ``{fully qualified Linear name: measured sparsity (fraction of zero weights)}``.
    """
    pruner = get_method(method)
    target, parsed = resolve_sparsity(sparsity, structure)
    check_allocation(allocation, parsed)
    if pruner.stats is not None and calibration is None:
        raise SparsenetsError(f"method {method!r} needs calibration token ids (see sparsenets.llm.calibration_batches)")
    adapter = get_adapter(model)
    n_blocks = len(adapter.blocks(model))
    targets = [target] * n_blocks
    if allocation == "owl":
        if calibration is None:
            raise SparsenetsError("allocation 'owl' needs calibration token ids (Wanda scores of the dense model)")
        if not owl_m > 0:
            raise SparsenetsError(f"owl_m must be > 0, got {owl_m!r}")
        targets = owl_allocation(model, calibration, target, m=owl_m, lam=owl_lambda, batch_size=batch_size,
                                 adapter=adapter, progress=progress)
        log.info("OWL block sparsities: %s", ", ".join(f"{t:.3f}" for t in targets))
    measured: dict[str, float] = {}

    def on_block(index: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        for name, layer in adapter.linears(block).items():
            weight = layer.weight.data  # (out, in)
            stat = stats[name].finalize() if name in stats else None
            keep = pruner.prune_weight(weight, stat, targets[index], parsed)
            weight.mul_(keep.to(weight.device, weight.dtype))
            fqn = f"{adapter.block_name(index)}.{name}"
            measured[fqn] = float((weight == 0).sum()) / weight.numel()
        log.info("block %d pruned (%s, %s, target sparsity %.3f)", index, method, parsed, targets[index])

    sequential_calibration(
        model,
        calibration if pruner.stats is not None else None,
        stats_factory=pruner.stats,
        on_block=on_block,
        batch_size=batch_size,
        adapter=adapter,
        progress=progress,
    )
    return measured
