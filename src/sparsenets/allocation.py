"""Layer-wise allocation: how much of each sparsified layer (or block) is kept.

Uniform, ER and ERK take the layers' *shapes* and return *integer* counts whose sum equals
``round(density * total)`` exactly (custom allocations excepted: they fix each layer on its own).
Real-valued budgets are turned into counts by largest-remainder rounding, so no layer is off by
more than one weight from its real budget and the global budget holds to the weight.

:func:`global_counts` and :func:`lamp_counts` take per-weight *scores* or *weights* instead and
split the same exact budget by one threshold across layers (global magnitude, LAMP): the
allocations of one-shot magnitude pruning and of every round of iterative magnitude pruning.

:func:`owl` takes per-block *statistics* instead (outlier ratios from a calibration pass) and
returns per-block sparsities, the word of LLM pruning (sparsity = 1 − density).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from .errors import SparsenetsError, check_density, choice_error
from .scores import lamp
from .select import select

Shape = tuple[int, ...]
CustomAllocation = Mapping[str, float] | Callable[[str, Shape], float]

#: Names accepted by :func:`allocate_counts` (a mapping or callable is also accepted).
DISTRIBUTIONS = ("uniform", "er", "erk")


def _numel(shape: Shape) -> int:
    return math.prod(shape)


def er_raw_density(shape: Shape) -> float:
    """Erdős–Rényi scale (n_in + n_out) / (n_in · n_out); kernel dims ignored (Mocanu et al.)."""
    if len(shape) < 2:
        raise SparsenetsError(f"ER allocation needs weights with >= 2 dims, got shape {shape}")
    n_out, n_in = shape[0], shape[1]
    return (n_in + n_out) / (n_in * n_out)


def erk_raw_density(shape: Shape) -> float:
    """ER-Kernel scale sum(shape) / prod(shape) (Evci et al., RigL); equals ER for Linear."""
    return sum(shape) / _numel(shape)


def round_to_total(budgets: Mapping[str, float], total: int) -> dict[str, int]:
    """Largest-remainder rounding of real budgets (summing to ``total``) to integers.

    Each count is ``floor(b)`` or ``floor(b) + 1``; the counts sum to ``total``. Ties in the
    remainder go to the earlier layer, so the result is deterministic.
    """
    floors = {name: math.floor(b + 1e-9) for name, b in budgets.items()}
    missing = total - sum(floors.values())
    order = sorted(budgets, key=lambda n: -(budgets[n] - floors[n]))
    for name in order[: max(missing, 0)]:
        floors[name] += 1
    return floors


def _scaled_budgets(shapes: Mapping[str, Shape], total: int, raw: Mapping[str, float]) -> dict[str, float]:
    """Solve ε so that Σ min(numel, ε·raw·numel) = total; layers that would exceed 1 go dense.

    This is the ERK derivation of RigL: densities are ε·raw_l; any layer whose density would be
    above 1 is made dense and removed from the pool, and ε is solved again on the rest until no
    density exceeds 1.
    """
    dense: set[str] = set()
    while True:
        dense_total = sum(_numel(shapes[n]) for n in dense)
        pool = [n for n in shapes if n not in dense]
        denom = sum(raw[n] * _numel(shapes[n]) for n in pool)
        if not pool or denom == 0:
            return {n: float(_numel(shapes[n])) for n in shapes}
        eps = (total - dense_total) / denom
        over = [n for n in pool if eps * raw[n] > 1.0]
        if not over:
            budgets = {n: float(_numel(shapes[n])) for n in dense}
            budgets.update({n: eps * raw[n] * _numel(shapes[n]) for n in pool})
            return {n: budgets[n] for n in shapes}
        dense.add(max(over, key=lambda n: raw[n]))


def allocate_counts(
    shapes: Mapping[str, Shape],
    density: float,
    distribution: str | CustomAllocation = "erk",
) -> dict[str, int]:
    """Number of active weights per layer.

    Args:
        shapes: ``{name: weight shape}`` of the sparsified layers, e.g. ``{"fc1.weight": (300, 784)}``.
        density: global density in (0, 1] over these layers.
        distribution: ``"uniform"``, ``"er"``, ``"erk"``, a ``{name: density}`` mapping covering
            every layer, or a callable ``(name, shape) -> density``.

    Returns:
        ``{name: nnz}``. For uniform/ER/ERK the counts sum to ``round(density * total)`` exactly.
    """
    density = check_density(density)
    if not shapes:
        raise SparsenetsError("allocation needs at least one layer")
    total = round(density * sum(_numel(s) for s in shapes.values()))
    if isinstance(distribution, str):
        key = distribution.lower()
        if key == "uniform":
            budgets = _scaled_budgets(shapes, total, {n: 1.0 for n in shapes})
        elif key == "er":
            budgets = _scaled_budgets(shapes, total, {n: er_raw_density(s) for n, s in shapes.items()})
        elif key == "erk":
            budgets = _scaled_budgets(shapes, total, {n: erk_raw_density(s) for n, s in shapes.items()})
        else:
            raise choice_error("distribution", distribution, DISTRIBUTIONS + ("<dict of densities>",))
        return round_to_total(budgets, total)
    return _custom_counts(shapes, distribution)


def _custom_counts(shapes: Mapping[str, Shape], custom: CustomAllocation) -> dict[str, int]:
    if callable(custom):
        densities = {n: custom(n, s) for n, s in shapes.items()}
    elif isinstance(custom, Mapping):
        missing = [n for n in shapes if n not in custom]
        unknown = [n for n in custom if n not in shapes]
        if missing or unknown:
            raise SparsenetsError(
                f"custom densities must name exactly the sparsified layers "
                f"(missing: {missing}, unknown: {unknown}; layers: {list(shapes)})"
            )
        densities = dict(custom)
    else:
        raise choice_error("distribution", custom, DISTRIBUTIONS + ("<dict of densities>",))
    return {
        n: round(check_density(densities[n], f"density of {n}") * _numel(s))
        for n, s in shapes.items()
    }


def allocate(
    shapes: Mapping[str, Shape],
    density: float,
    distribution: str | CustomAllocation = "erk",
) -> dict[str, float]:
    """Per-layer densities (``nnz / numel``) of :func:`allocate_counts`."""
    counts = allocate_counts(shapes, density, distribution)
    return {n: counts[n] / _numel(shapes[n]) for n in shapes}


#: Allocations computed from the weights (or scores) rather than from the shapes.
WEIGHT_ALLOCATIONS = ("global", "lamp")


def global_counts(
    scores: Mapping[str, torch.Tensor],
    density: float,
    *,
    eligible: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, int]:
    """Per-layer keep counts of one threshold across layers ("global" allocation).

    The ``round(density · total)`` highest scores of all layers together are kept (ties at the
    threshold broken with ``generator``), ``total`` counting every position of every layer. With
    ``|w|`` as scores this is global magnitude pruning (Frankle & Carbin 2019; open_lth's
    ``sparse_global``).

    Args:
        scores: ``{name: scores}`` of any shapes, higher = keep; float64 is compared in float64.
        density: kept share of all positions, in (0, 1].
        eligible: ``{name: bool mask}`` of the positions that may be kept (e.g. the survivors
            of the previous round); ``None`` means all.
        generator: CPU generator for ties at the threshold.

    Returns:
        ``{name: count}`` summing to ``round(density · total)`` exactly.

    Raises:
        SparsenetsError: the budget exceeds the eligible positions.
    """
    return {n: int(m.sum()) for n, m in global_masks(scores, density, eligible=eligible, generator=generator).items()}


def global_masks(
    scores: Mapping[str, torch.Tensor],
    density: float,
    *,
    eligible: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """The keep masks behind :func:`global_counts` (same arguments): ``{name: bool mask}``."""
    density = check_density(density)
    if not scores:
        raise SparsenetsError("allocation needs at least one layer")
    total = sum(s.numel() for s in scores.values())
    keep = round(density * total)
    if eligible is not None:
        available = sum(int(eligible[n].sum()) for n in scores)
        if keep > available:
            raise SparsenetsError(
                f"density {density:g} keeps {keep} weights but only {available} of {total} are eligible"
            )
        scores = {n: s.masked_fill(~eligible[n].to(s.device), float("-inf")) for n, s in scores.items()}
    return select(scores, keep, group="global", generator=generator)


def lamp_counts(
    weights: Mapping[str, torch.Tensor],
    density: float,
    *,
    eligible: Mapping[str, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, int]:
    """Per-layer keep counts of LAMP (Lee et al. 2021): a global selection on the LAMP scores
    (:func:`sparsenets.scores.lamp`) of each layer's eligible weights.

    Inside a layer LAMP ranks like |w|, so keeping each layer's top count by magnitude gives
    LAMP's mask (as the reference does). Every layer keeps its largest weight whenever the budget
    is at least the number of layers.

    Args:
        weights: ``{name: weight}`` of any shapes.
        density: kept share of all positions, in (0, 1].
        eligible: ``{name: bool mask}`` of the positions that compete; ``None`` means all.
        generator: CPU generator, first for the order of equal weights in each layer's sort
            (layer by layer), then for ties at the global threshold.

    Returns:
        ``{name: count}`` summing to ``round(density · total)`` exactly.
    """
    scores = {
        n: lamp(w, None if eligible is None else eligible[n], generator) for n, w in weights.items()
    }
    return global_counts(scores, density, eligible=eligible, generator=generator)


def proportional_counts(total: int, weights: Mapping[str, float], caps: Mapping[str, int]) -> dict[str, int]:
    """Split ``total`` into integers ∝ ``weights``, none above its cap, summing to the total.

    Layers that would exceed their cap are filled to it and the rest is split again among the
    others (used by SNFS to redistribute regrowth across layers). If the caps sum to less than
    ``total``, every layer gets its cap.
    """
    total = min(total, sum(caps.values()))
    full: dict[str, int] = {}
    while True:
        rest = [n for n in weights if n not in full]
        remaining = total - sum(full.values())
        weight_sum = sum(max(weights[n], 0.0) for n in rest)
        if weight_sum <= 0:
            shares = {n: remaining * caps[n] / max(sum(caps[m] for m in rest), 1) for n in rest}
        else:
            shares = {n: remaining * max(weights[n], 0.0) / weight_sum for n in rest}
        over = [n for n in rest if shares[n] > caps[n]]
        if not over:
            counts = round_to_total(shares, remaining)
            counts.update(full)
            return {n: counts[n] for n in weights}
        for name in over:
            full[name] = caps[name]


def owl(outlier_ratios: Mapping[str, float], sparsity: float, lam: float = 0.08) -> dict[str, float]:
    """OWL: Outlier Weighed Layerwise sparsity (Yin et al. 2024) from per-block outlier ratios.

    The layer outlier distribution LOD_l (fraction of a block's Wanda scores above M · their mean,
    see :func:`sparsenets.llm.owl.outlier_ratio`) is min-max normalised to r ∈ [0, 2λ] and

        sparsity_l = 1 − (r_l − mean(r) + (1 − S)) = S − (r_l − mean(r)),

    so blocks with more outliers are pruned *less* and the mean over blocks is exactly S.

    Bound: the reference formula keeps every block within S ± λ only when r is spread evenly; with
    a skewed LOD a block can land up to 2λ from S. Here the centred deviations r_l − mean(r) are
    additionally scaled down (never up) so that the largest one is at most λ: the mean stays S, the
    order of blocks is kept, every block lies in [S − λ, S + λ], and the result equals the
    reference whenever the reference already stays within that range. All-equal ratios (or λ = 0)
    give the uniform allocation. Arithmetic in float64.

    Args:
        outlier_ratios: ``{block name: LOD}`` in block order.
        sparsity: mean target sparsity S (fraction removed).
        lam: λ, the largest deviation of a block's sparsity from S (>= 0).

    Returns:
        ``{block name: sparsity}`` in the order of ``outlier_ratios``, each in [0, 1).
    """
    if lam < 0:
        raise SparsenetsError(f"OWL lambda must be >= 0, got {lam!r}")
    names = list(outlier_ratios)
    if not names:
        raise SparsenetsError("OWL needs at least one decoder block")
    ratios = torch.as_tensor([outlier_ratios[n] for n in names], dtype=torch.float64)
    spread = float(ratios.max() - ratios.min())
    if spread == 0.0 or lam == 0.0:
        return dict.fromkeys(names, float(sparsity))
    r = (ratios - ratios.min()) / spread * (2.0 * lam)  # [0, 2λ]
    deviation = r - r.mean()
    largest = float(deviation.abs().max())
    if largest > lam:
        deviation = deviation * (lam / largest)
    result = {n: float(sparsity - d) for n, d in zip(names, deviation, strict=True)}
    low, high = min(result.values()), max(result.values())
    if low < 0.0 or high >= 1.0:
        raise SparsenetsError(
            f"OWL allocation leaves [0, 1): sparsity {sparsity:g} with lambda {lam:g} gives block sparsities "
            f"from {low:.3f} to {high:.3f}; lower owl_lambda"
        )
    return result
