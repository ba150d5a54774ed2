"""One-shot pruning of a Hugging Face causal LM: ``prune(model, calibration, method=..., ...)``.

Every ``nn.Linear`` inside the decoder blocks is pruned, block by block, with statistics gathered
by :func:`.calibrate.sequential_calibration` (the calibration set flows through the already
pruned earlier blocks). Embeddings and ``lm_head`` are never touched (they are often tied).

The parts, as everywhere in sparsenets: a per-block *allocation* of the target sparsity
(``uniform``, or ``owl`` from :func:`sparsenets.allocation.owl`, whose outlier ratios need one
extra statistics pass over the *dense* model, :mod:`.owl`), a per-layer *method* (score and
selection in the row group under the structure, :mod:`.methods`), and the keep masks gathered in
a :class:`~sparsenets.masks.MaskStore` returned in a :class:`PruneResult`.

Words: the public arguments speak of *sparsity* (fraction removed), as LLM-pruning papers do;
inside, each row's sparsity becomes a keep count (:func:`sparsenets.select.keep_count`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .. import allocation as allocations
from ..errors import SparsenetsError, check_sparsity, choice_error
from ..masks import MaskStore
from ..select import Structure, parse_structure
from .adapters import DecoderAdapter, get_adapter, to_parameter_layout, weight_matrix
from .calibrate import BlockLoader, sequential_calibration
from .dsnot import DSnoTOptions, PairedStats, check_recover, dsnot_keep_mask, initial_scores
from .methods import get_method
from .owl import owl_outlier_ratios
from .stats import InputStats

log = logging.getLogger(__name__)

#: Layer-wise sparsity allocations accepted by :func:`prune`.
ALLOCATIONS = ("uniform", "owl")


@dataclass(frozen=True, eq=False)
class PruneResult(Mapping[str, float]):
    """What :func:`prune` did: the keep masks, the measured sparsity, the structure and the targets.

    It is also a read-only mapping ``{Linear name: measured sparsity}`` (the same as
    :attr:`sparsity`), so ``result[name]``, ``len(result)``, iteration and ``.values()`` work as on
    the dict :func:`prune` returned before it had masks.

    Attributes:
        masks: a :class:`~sparsenets.masks.MaskStore` with the bool keep mask (out, in) of every
            pruned Linear, keyed by parameter name ``<Linear name>.weight`` (e.g.
            ``model.layers.0.self_attn.q_proj.weight``), on the weights' device, its ever-active
            record equal to the masks. Weights are exactly 0 wherever the mask is False; the mask
            equals ``weight != 0`` except where a *kept* weight is exactly 0: a weight that was
            already 0 (SmolLM2's dequantized 4-bit weights hold a few hundred per layer, so a 2:4
            group with three zeros must keep one), or a SparseGPT input column that no calibration
            token activates. Such a position stays kept (trainable), so the structure is exact.
        sparsity: ``{Linear name (no .weight): fraction of exactly-zero weights}``, measured.
        structure: the structure every mask satisfies (:class:`~sparsenets.select.Unstructured`
            with a per-row keep count, or :class:`~sparsenets.select.NM`).
        targets: ``{decoder block name: target sparsity}`` from the allocation.
        recovery: with ``recover="dsnot"``: the options used, the swaps made per layer
            (``swaps``) and the layers that kept the initial mask (``skipped``); else ``None``.
    """

    masks: MaskStore
    sparsity: dict[str, float]
    structure: Structure
    targets: dict[str, float]
    recovery: dict | None = None

    def __getitem__(self, name: str) -> float:
        return self.sparsity[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.sparsity)

    def __len__(self) -> int:
        return len(self.sparsity)


def resolve_sparsity(sparsity: float | None, structure: str | Structure) -> tuple[float, Structure]:
    """(target sparsity, parsed structure): N:M implies 1 − N/M; unstructured defaults to 0.5."""
    parsed = parse_structure(structure)
    if parsed.is_nm:
        if sparsity is not None and abs(check_sparsity(sparsity) - parsed.sparsity) > 1e-9:
            raise SparsenetsError(
                f"sparsity {sparsity} contradicts structure {parsed} (which means sparsity {parsed.sparsity:g}); omit sparsity"
            )
        return parsed.sparsity, parsed
    return check_sparsity(0.5 if sparsity is None else sparsity), parsed


def check_allocation(allocation: str, structure: Structure) -> None:
    """Reject an unknown allocation, and OWL with N:M (where every layer is at 1 − N/M)."""
    if allocation not in ALLOCATIONS:
        raise choice_error("allocation", allocation, ALLOCATIONS)
    if allocation == "owl" and structure.is_nm:
        raise SparsenetsError(f"allocation 'owl' does not apply to N:M structure {structure} (every layer is at 1 - N/M); use allocation='uniform'")


def block_sparsities(
    model: nn.Module,
    calibration: torch.Tensor | None,
    sparsity: float,
    allocation: str,
    *,
    adapter: DecoderAdapter,
    loader: BlockLoader | None = None,
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, float]:
    """``{decoder block name: target sparsity}`` under ``allocation`` (validated by :func:`check_allocation`).

    ``uniform`` gives every block ``sparsity``; ``owl`` first computes the outlier ratio of every
    block of the dense model (one statistics pass over ``calibration``).
    """
    names = [adapter.block_name(i) for i in range(len(adapter.blocks(model)))]
    if allocation == "uniform":
        return dict.fromkeys(names, sparsity)
    if calibration is None:
        raise SparsenetsError("allocation 'owl' needs calibration token ids (Wanda scores of the dense model)")
    if not owl_m > 0:
        raise SparsenetsError(f"owl_m must be > 0, got {owl_m!r}")
    ratios = owl_outlier_ratios(model, calibration, m=owl_m, batch_size=batch_size, adapter=adapter, progress=progress,
                                loader=loader)
    return allocations.owl(ratios, sparsity, owl_lambda)


def same_statistic_groups(layers: dict[str, nn.Module], stats: dict[str, torch.Tensor | None]) -> list[list[str]]:
    """Names of ``layers`` grouped by identical input statistic (equal tensors) and weight dtype
    and device, in first-appearance order; layers without a statistic stay alone."""
    groups: list[list[str]] = []
    for name, layer in layers.items():
        stat, weight = stats[name], weight_matrix(layer)
        for group in groups:
            first = stats[group[0]]
            other = weight_matrix(layers[group[0]])
            if (stat is not None and first is not None and first.shape == stat.shape and first.dtype == stat.dtype
                    and other.dtype == weight.dtype and other.device == weight.device and torch.equal(first, stat)):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


@torch.no_grad()
def prune(
    model: nn.Module,
    calibration: torch.Tensor | None = None,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    structure: str | Structure = "unstructured",
    allocation: str = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    batch_size: int = 8,
    targets: str | list[str] | None = None,
    ignore: str | list[str] | None = None,
    progress: bool = True,
    loader: BlockLoader | None = None,
    calib_dtype: torch.dtype | None = None,
    recover: str | None = None,
    dsnot: DSnoTOptions | None = None,
) -> PruneResult:
    r"""Prune every Linear (and HF ``Conv1D``) inside the decoder blocks of ``model`` in place.

    Args:
        model: a Hugging Face causal LM of any family whose decoder blocks are an
            ``nn.ModuleList`` (found from the model itself, see :mod:`.adapters`).
        calibration: (n_samples, seq_len) int64 token ids (e.g. from
            :func:`.data.calibration_batches`); required by ``wanda``, ignored by ``magnitude``.
        method: ``"wanda"`` (|W|·‖X_j‖₂, Sun et al. 2023), ``"magnitude"`` (|W|) or
            ``"sparsegpt"`` (blocked OBS with weight reconstruction, Frantar & Alistarh 2023).
        sparsity: fraction of weights removed from every output row, in [0, 1); default 0.5.
            With N:M structures it is implied (1 − N/M) and may be omitted.
        structure: ``"unstructured"`` (per-row exact sparsity) or ``"N:M"`` such as ``"2:4"``,
            ``"4:8"`` (N kept of every M consecutive input weights of each row), or a structure
            object (:class:`~sparsenets.select.Unstructured`, :class:`~sparsenets.select.NM`).
        allocation: layer-wise sparsity allocation; ``"uniform"`` (every layer at ``sparsity``)
            or ``"owl"`` (per-block sparsity from the dense model's outlier ratios, mean
            ``sparsity``, each within ± ``owl_lambda``; unstructured only, needs calibration
            data for every method).
        owl_m: OWL outlier threshold M (scores above M · mean count as outliers).
        owl_lambda: OWL λ, the largest deviation of a block's sparsity from ``sparsity``.
        batch_size: calibration sequences per forward call.
        targets: regular expression(s) a layer's full name must match (``re.search``) to be
            pruned, e.g. ``"mlp"``; default every prunable layer of the blocks.
        ignore: regular expression(s) of layers left dense, e.g. ``r"\.0\."`` or ``"o_proj"``.
        progress: show progress bars.
        loader: blocks not in memory are loaded and released one at a time through it
            (:class:`.lowmem.BlockStreamer`, ``--low-memory``); its ``device`` holds the masks.
        calib_dtype: dtype of the calibration forwards (e.g. ``torch.bfloat16``; see
            :func:`.calibrate.sequential_calibration`); the weights are pruned in their own.
        recover: ``"dsnot"``: repair every layer's mask with DSnoT (:mod:`.dsnot`) right after
            the method chose it, on the dense weights, before the block's outputs feed the next
            block; needs calibration data for every method. DSnoT moves the mask only: the kept
            weights keep their dense values (SparseGPT's reconstruction is dropped in the
            layers DSnoT processes, as in the reference; skipped layers keep it).
        dsnot: DSnoT's options (:class:`.dsnot.DSnoTOptions`; default: the reference's).

    Returns:
        A :class:`PruneResult`: ``.masks`` (keep masks keyed ``<Linear name>.weight``),
        ``.sparsity`` (``{Linear name: measured sparsity}``, also what the result reads as a
        mapping), ``.structure`` and ``.targets`` (per-block target sparsity).
    """
    pruner = get_method(method)
    target, parsed = resolve_sparsity(sparsity, structure)
    check_allocation(allocation, parsed)
    dsnot = check_recover(recover, dsnot)
    if (pruner.stats is not None or dsnot is not None) and calibration is None:
        needs = "DSnoT" if pruner.stats is None else f"method {method!r}"
        raise SparsenetsError(f"{needs} needs calibration token ids (see sparsenets.llm.calibration_batches)")
    adapter = get_adapter(model, targets=targets, ignore=ignore)
    block_targets = block_sparsities(model, calibration, target, allocation, adapter=adapter, loader=loader, owl_m=owl_m,
                               owl_lambda=owl_lambda, batch_size=batch_size, progress=progress)
    if allocation != "uniform":
        log.info("%s block sparsities: %s", allocation, ", ".join(f"{t:.3f}" for t in block_targets.values()))
    linears = adapter.prunable_linears(model)
    weights = {f"{name}.weight": layer.weight for name, layer in linears.items()}
    if not weights:
        raise SparsenetsError(f"{type(model).__name__} has no prunable Linear inside its decoder blocks")
    masks = MaskStore({name: tuple(w.shape) for name, w in weights.items()},
                      device=loader.device if loader is not None else next(iter(weights.values())).device)
    measured: dict[str, float] = {}
    swaps: dict[str, int] = {}
    skipped: list[str] = []

    def repair(name: str, fqn: str, weight: torch.Tensor, dense: torch.Tensor, keep: torch.Tensor,
               stat: torch.Tensor | None, moments) -> torch.Tensor:
        """DSnoT on one layer: the new keep mask; ``weight`` gets the dense values back."""
        if dsnot.skips(name):
            skipped.append(fqn)
            return keep
        scores = initial_scores(method, dense, stat) if parsed.is_nm else None
        keep, swaps[fqn] = dsnot_keep_mask(dense, keep, moments, parsed, initial_scores=scores, options=dsnot)
        weight.copy_(dense)
        return keep

    def record(fqn: str, layer: nn.Module, weight: torch.Tensor, keep: torch.Tensor) -> None:
        """Store a pruned layer's keep mask (in the parameter's own layout) and measured sparsity."""
        masks.set(f"{fqn}.weight", to_parameter_layout(layer, keep))
        measured[fqn] = float((weight == 0).sum()) / weight.numel()

    def on_block(index: int, block: nn.Module, stats: dict[str, InputStats]) -> None:
        block_name = adapter.block_name(index)
        layers = adapter.linears(block, index)
        finalized = {name: stats[name].finalize() if name in stats else None for name in layers}
        if dsnot is not None:  # one layer at a time, each with (method statistic, input moments)
            for name, layer in layers.items():
                weight = weight_matrix(layer)
                stat, moments = finalized[name]
                dense = weight.detach().clone()
                keep = pruner.prune_weight(weight, stat, block_targets[block_name], parsed)
                fqn = f"{block_name}.{name}"
                keep = repair(name, fqn, weight, dense, keep, stat, moments)
                weight.mul_(keep.to(weight.device, weight.dtype))
                record(fqn, layer, weight, keep)
            log.info("block %d pruned (%s + DSnoT, %s, target sparsity %.3f)", index, method, parsed,
                     block_targets[block_name])
            return
        for group in same_statistic_groups(layers, finalized):
            views = [weight_matrix(layers[name]) for name in group]  # (out_i, in), views of the parameters
            # Layers that read the same input (q/k/v, gate/up) have identical statistics: every
            # method here decides row by row, so their rows are pruned as one matrix (SparseGPT
            # then factors the Hessian once and walks the columns once for all of them).
            weight = views[0] if len(views) == 1 else torch.cat(views)
            keep = pruner.prune_weight(weight, finalized[group[0]], block_targets[block_name], parsed)  # (out, in) bool
            weight.mul_(keep.to(weight.device, weight.dtype))
            start = 0
            for name, view in zip(group, views):
                rows = slice(start, start + view.shape[0])
                start = rows.stop
                if view is not weight:
                    view.copy_(weight[rows])
                record(f"{block_name}.{name}", layers[name], view, keep[rows])
        log.info("block %d pruned (%s, %s, target sparsity %.3f)", index, method, parsed, block_targets[block_name])

    stats_factory = pruner.stats
    if dsnot is not None:
        method_stats = pruner.stats
        stats_factory = lambda layer: PairedStats(method_stats(layer) if method_stats else None,  # noqa: E731
                                                  weight_matrix(layer).shape[1])
    sequential_calibration(
        model,
        calibration if stats_factory is not None else None,
        stats_factory=stats_factory,
        on_block=on_block,
        batch_size=batch_size,
        adapter=adapter,
        progress=progress,
        loader=loader,
        calib_dtype=calib_dtype,
    )
    masks.reset_ever_active()
    recovery = None
    if dsnot is not None:
        recovery = {"method": "dsnot", "max_cycles": dsnot.max_cycles, "threshold": dsnot.threshold,
                    "var_power": dsnot.var_power, "same_sign": dsnot.same_sign, "skip": list(dsnot.skip_patterns()),
                    "swaps": swaps, "skipped": skipped}
    return PruneResult(masks, measured, parsed, block_targets, recovery)


def recover(
    model: nn.Module,
    calibration: torch.Tensor,
    *,
    method: str = "dsnot",
    initial: str = "wanda",
    sparsity: float | None = None,
    structure: str | Structure = "unstructured",
    options: DSnoTOptions | None = None,
    **prune_options,
) -> PruneResult:
    """Prune the *dense* ``model`` with ``initial`` and repair every layer's mask without training.

    ``method="dsnot"`` (the only one so far): DSnoT (:mod:`.dsnot`) swaps pruned and kept weights
    of each row to shrink the row's expected reconstruction error; per-row counts and N:M
    groups stay exact. DSnoT revives pruned weights with their dense values, so it runs inside
    the sequential pruning pass (each block's repaired outputs feed the next block) on a model
    that is still dense: ``recover(model, calib, initial="wanda", sparsity=0.7)`` is
    ``prune(model, calib, method="wanda", sparsity=0.7, recover="dsnot")``.

    Args:
        model, calibration, sparsity, structure: as in :func:`prune`.
        method: the recovery method, ``"dsnot"``.
        initial: the one-shot method that chooses the initial mask (magnitude, wanda, sparsegpt).
        options: :class:`.dsnot.DSnoTOptions` (default: the reference's).
        **prune_options: any other :func:`prune` argument (allocation, batch_size, targets, ...).

    Raises:
        SparsenetsError: an unknown method, or a model whose layers are already pruned.
    """
    if method != "dsnot":
        raise SparsenetsError(f"unknown recovery method {method!r} (valid: 'dsnot')")
    target, _ = resolve_sparsity(sparsity, structure)
    adapter = get_adapter(model, targets=prune_options.get("targets"), ignore=prune_options.get("ignore"))
    layers = adapter.prunable_linears(model)
    if layers and target > 0:
        name, layer = next(iter(layers.items()))
        if not weight_matrix(layer).is_meta:
            zeros = float((weight_matrix(layer) == 0).sum()) / weight_matrix(layer).numel()
            if zeros >= 0.9 * target:
                raise SparsenetsError(
                    f"{name} is already {zeros:.1%} zeros: DSnoT needs the dense model (it revives pruned weights "
                    f"with their dense values); load the original checkpoint and call recover() on it"
                )
    return prune(model, calibration, method=initial, sparsity=sparsity, structure=structure, recover=method,
                 dsnot=options, **prune_options)
