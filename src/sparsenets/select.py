"""Selection of the positions to keep: top-k under a structure, within a comparison group.

One vocabulary for every method (DST and LLM pruning alike):

* a **structure** says which keep patterns are allowed: :class:`Unstructured` (any pattern) or
  :class:`NM` (exactly N kept of every M consecutive inputs of a row, e.g. 2:4);
* a **comparison group** says which scores compete with each other: ``"row"`` (each output row of
  a weight on its own, Wanda/SparseGPT's choice), ``"layer"`` (the whole tensor, DST's choice) or
  ``"global"`` (all layers together);
* ``k`` is always a *keep count per group*; callers convert densities or sparsities at their edge.

:func:`select` is the entry point; :func:`check_structure` (raising) and
:func:`structure_violation` (the reason, or ``None``) verify a mask.
The lower-level :func:`select_topk` (eligible positions, preference, random ties) is what DST's
drop and grow steps use.

Pure functions. Ties at the k-th value are broken at random with the given generator, or by
position when none is given, so selections are exact in count and reproducible.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from .errors import SparsenetsError, choice_error

# ------------------------------------------------------------------------------- structures


class Structure:
    """Base of the structure types (:class:`Unstructured`, :class:`NM`); ``is_nm`` tells them apart."""

    is_nm: bool = False


@dataclass(frozen=True)
class Unstructured(Structure):
    """Any keep pattern: every position competes with the others of its comparison group."""

    def __str__(self) -> str:
        return "unstructured"


@dataclass(frozen=True)
class NM(Structure):
    """N:M semi-structured sparsity: exactly ``n`` kept of every ``m`` consecutive inputs of a row.

    For a weight (out, in) the groups are ``W[r, j·m:(j+1)·m]``; ``in`` must be a multiple of ``m``.
    """

    n: int
    m: int

    is_nm = True

    def __post_init__(self) -> None:
        if not (isinstance(self.n, int) and isinstance(self.m, int) and 0 < self.n < self.m):
            raise SparsenetsError(f"N:M structure needs integers 0 < N < M, got {self.n!r}:{self.m!r}")

    @property
    def density(self) -> float:
        """Fraction kept, n / m."""
        return self.n / self.m

    @property
    def sparsity(self) -> float:
        """Fraction removed, 1 − n / m."""
        return 1.0 - self.n / self.m

    def check_fits(self, in_features: int) -> None:
        """Raise unless rows of ``in_features`` inputs split into whole groups of ``m``."""
        if in_features % self.m:
            raise SparsenetsError(
                f"N:M structure {self} needs in_features divisible by {self.m}, got {in_features}"
            )

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


UNSTRUCTURED = Unstructured()


def parse_structure(structure: str | Structure) -> Unstructured | NM:
    """``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``, ``"4:8"``; 0 < N < M) → a structure object.

    A structure object is returned as is.
    """
    if isinstance(structure, (Unstructured, NM)):
        return structure
    text = str(structure).strip().lower()
    if text == "unstructured":
        return UNSTRUCTURED
    match = re.fullmatch(r"(\d+):(\d+)", text)
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise SparsenetsError(f"unknown structure {structure!r} (valid: unstructured, N:M with 0 < N < M, e.g. 2:4, 4:8)")
    return NM(int(match[1]), int(match[2]))


# ------------------------------------------------------------------------- comparison groups

#: Which scores compete: each output row, the whole layer, or all layers together.
Group = Literal["row", "layer", "global"]
GROUPS: tuple[str, ...] = get_args(Group)


def check_group(group: str) -> Group:
    """Return ``group`` if it is one of :data:`GROUPS`, else raise a one-line error."""
    if group not in GROUPS:
        raise choice_error("comparison group", group, GROUPS)
    return group  # type: ignore[return-value]


def keep_count(n: int, sparsity: float) -> int:
    """Entries kept of ``n`` when removing the fraction ``sparsity``: ``n − round(sparsity · n)``."""
    return n - int(round(sparsity * n))


def kth_largest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest value of a 1-D float tensor (1 <= k <= n), as a 0-d tensor.

    On CPU this uses NumPy's introselect (``np.partition``), several times faster than
    ``torch.topk`` for large k; elsewhere ``torch.topk``.
    """
    n = scores.numel()
    if scores.device.type == "cpu":
        values = scores.detach().numpy()
        return torch.as_tensor(np.partition(values, n - k)[n - k])
    return torch.topk(scores, k, sorted=False).values.min()


def topk_indices(scores: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of the ``k`` largest entries of a 1-D ``scores`` (ties broken at random).

    Args:
        scores: (n,) float tensor; NaN counts as the lowest value.
        k: number of indices, clipped to [0, n].
        generator: CPU generator for tie-breaking; ``None`` breaks ties by position.

    Returns:
        (k,) int64 tensor of distinct indices (unordered).
    """
    chosen = _topk_flat(scores.reshape(-1), k, None, generator)
    return chosen.nonzero().squeeze(1)


def _compare_dtype(scores: torch.Tensor) -> torch.Tensor:
    """Scores as compared: float64 stays float64 (e.g. SynFlow's), everything else becomes float32."""
    return scores if scores.dtype == torch.float64 else scores.float()


def _topk_flat(
    scores: torch.Tensor, k: int, eligible: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Bool (n,) mask of the k highest eligible scores; k must not exceed the eligible count."""
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    scores = torch.nan_to_num(_compare_dtype(scores), nan=float("-inf"))
    if eligible is None:
        if k >= n:
            return torch.ones(n, dtype=torch.bool, device=scores.device)
        kth = kth_largest(scores, k)
    else:
        # The threshold comes from the eligible values only (compacting is cheap, and a
        # selection over many equal fill values is slow).
        kth = kth_largest(scores[eligible], k)
    kth = kth.to(scores.device)
    chosen = scores > kth
    ties = scores == kth
    if eligible is not None:
        chosen &= eligible
        ties &= eligible
    need = k - int(torch.count_nonzero(chosen))
    tie_index = ties.nonzero().squeeze(1)
    if generator is not None and tie_index.numel() > need:
        tie_index = tie_index[torch.randperm(tie_index.numel(), generator=generator).to(tie_index.device)]
    chosen[tie_index[:need]] = True
    return chosen


def select_topk(
    scores: torch.Tensor,
    k: int,
    eligible: torch.Tensor | None = None,
    *,
    prefer: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask of the ``k`` highest-scoring eligible positions.

    Args:
        scores: float tensor of any shape.
        k: how many positions to select (clipped to the number of eligible positions).
        eligible: bool tensor of ``scores``' shape; ``None`` means every position.
        prefer: bool tensor; preferred eligible positions are all taken before any other
            (used by ITOP exploration to grow never-active positions first).
        generator: CPU generator for tie-breaking.

    Returns:
        bool tensor of ``scores``' shape with exactly ``min(k, eligible.sum())`` True entries.
    """
    flat = scores.reshape(-1)
    pool = None if eligible is None else eligible.reshape(-1)
    available = flat.numel() if pool is None else int(torch.count_nonzero(pool))
    k = max(0, min(int(k), available))
    if prefer is not None and k > 0:
        preferred = prefer.reshape(-1) if pool is None else prefer.reshape(-1) & pool
        n_preferred = int(torch.count_nonzero(preferred))
        if n_preferred >= k:
            return _topk_flat(flat, k, preferred, generator).reshape(scores.shape)
        rest = ~preferred if pool is None else pool & ~preferred
        chosen = preferred | _topk_flat(flat, k - n_preferred, rest, generator)
        return chosen.reshape(scores.shape)
    return _topk_flat(flat, k, pool, generator).reshape(scores.shape)


def select_bottomk(
    scores: torch.Tensor,
    k: int,
    eligible: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask of the ``k`` lowest-scoring eligible positions (see :func:`select_topk`)."""
    return select_topk(-scores, k, eligible, generator=generator)


def random_mask(shape: tuple[int, ...], k: int, generator: torch.Generator, device=None) -> torch.Tensor:
    """Boolean mask of ``shape`` with exactly ``k`` True positions drawn uniformly at random."""
    numel = 1
    for dim in shape:
        numel *= dim
    chosen = torch.zeros(numel, dtype=torch.bool)
    chosen[torch.randperm(numel, generator=generator)[: max(0, min(int(k), numel))]] = True
    return chosen.reshape(shape).to(device) if device is not None else chosen.reshape(shape)


# ------------------------------------------------------------------ selection under a structure


def _ascending_order(scores: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Stable ascending argsort along the last dim; ties by position, or at random with ``generator``."""
    if generator is None:
        return torch.argsort(scores, dim=-1, stable=True)
    shuffle = torch.argsort(torch.rand(scores.shape, generator=generator), dim=-1).to(scores.device)
    order = torch.argsort(scores.gather(-1, shuffle), dim=-1, stable=True)
    return shuffle.gather(-1, order)


def _rows(scores: torch.Tensor) -> torch.Tensor:
    if scores.dim() < 2:
        raise SparsenetsError(f"the row group needs scores with >= 2 dims (out, in, ...), got shape {tuple(scores.shape)}")
    return scores.reshape(scores.shape[0], -1)


def _select_rows(scores: torch.Tensor, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """Keep the ``k`` highest of every row of ``scores`` (out, in): the ``in − k`` lowest are pruned.

    Ties are pruned in position order (stable ascending sort), so among equal scores the later
    positions are kept.
    """
    rows = _rows(scores).float()  # (out, in)
    n_prune = rows.shape[1] - max(0, min(int(k), rows.shape[1]))
    if n_prune <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    if generator is None and not rows.isnan().any():
        return ~_lowest_in_rows(rows, n_prune).reshape(scores.shape)
    keep = torch.ones_like(rows, dtype=torch.bool)
    keep.scatter_(1, _ascending_order(rows, generator)[:, :n_prune], False)
    return keep.reshape(scores.shape)


def _lowest_in_rows(rows: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` lowest entries of every row of ``rows`` (out, in), ties taken in position order:
    the same positions as the first ``n`` of a stable ascending sort, found with a k-th-value
    threshold (about twice as fast on CPU as the sort)."""
    threshold = rows.kthvalue(n, dim=1, keepdim=True).values  # (out, 1)
    below = rows < threshold
    tied = rows == threshold
    wanted = n - below.sum(1, keepdim=True)  # ties to take from each row, earliest first
    return below | (tied & (tied.cumsum(1) <= wanted))


def _select_nm(scores: torch.Tensor, structure: NM, generator: torch.Generator | None) -> torch.Tensor:
    """Keep the ``n`` highest of every group of ``m`` consecutive inputs of a row.

    Ties are kept in position order (stable descending sort): among equal scores the earlier
    positions are kept.
    """
    rows = _rows(scores)
    out_features, in_features = rows.shape
    structure.check_fits(in_features)
    groups = rows.float().reshape(out_features, in_features // structure.m, structure.m)  # (out, in/m, m)
    if generator is None:
        order = torch.argsort(groups, dim=2, descending=True, stable=True)
    else:
        order = _ascending_order(-groups, generator)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, order[..., : structure.n], True)
    return keep.reshape(scores.shape)


def _select_global(
    scores: Mapping[str, torch.Tensor], k: int, generator: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """Keep the ``k`` highest scores of all tensors together, compared on one scale: float64
    when any tensor is float64 (scores that float32 would flush to zero stay apart), else float32."""
    names = list(scores)
    wide = any(scores[n].dtype == torch.float64 for n in names)
    flat = torch.cat([scores[n].reshape(-1).to(torch.float64 if wide else torch.float32) for n in names])
    chosen = select_topk(flat, k, generator=generator)
    sizes = [scores[n].numel() for n in names]
    return {n: part.reshape(scores[n].shape) for n, part in zip(names, chosen.split(sizes), strict=True)}


def select(
    scores: torch.Tensor | Mapping[str, torch.Tensor],
    k: int | None = None,
    structure: Structure = UNSTRUCTURED,
    group: Group | None = None,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Keep mask of the highest ``scores`` under ``structure``, compared within ``group``.

    Args:
        scores: float scores, higher = more important. A tensor of any shape for the ``"layer"``
            group; (out, in, ...) for ``"row"`` and N:M (trailing dims are flattened into ``in``);
            ``{name: tensor}`` for ``"global"``.
        k: entries kept per group, clipped to the group's size: per row (``"row"``), per tensor
            (``"layer"``) or in total (``"global"``). For :class:`NM` the structure fixes the
            count: ``k`` may be omitted or must equal ``n``.
        structure: :class:`Unstructured` (default) or :class:`NM`.
        group: ``"row"``, ``"layer"`` or ``"global"``; default ``"layer"`` for unstructured (the
            DST choice) and ``"row"`` for N:M (the only group N:M is defined in).
        generator: CPU generator for random tie-breaking; ``None`` breaks ties by position. In
            the layer/global groups the earliest tied positions are kept (see :func:`select_topk`);
            in a row the earliest tied positions are pruned, in an N:M group the earliest kept.

    Returns:
        bool keep mask of ``scores``' shape (``{name: mask}`` for ``"global"``) with exactly
        ``min(k, size)`` True per group, or exactly ``n`` per group of ``m`` for N:M.

    Raises:
        SparsenetsError: an unknown group, a structure/group/k that do not go together, a row
            length not divisible by M.
    """
    if isinstance(structure, NM):
        if group not in (None, "row"):
            raise SparsenetsError(
                f"N:M structure {structure} selects within groups of {structure.m} consecutive inputs of a row; "
                f"group must be 'row', got {group!r}"
            )
        if k is not None and k != structure.n:
            raise SparsenetsError(f"N:M structure {structure} keeps exactly {structure.n} per group; got k={k!r}")
        return _select_nm(_tensor(scores, "N:M"), structure, generator)
    if not isinstance(structure, Unstructured):
        raise choice_error("structure", structure, ("Unstructured()", "NM(n, m)"))
    group = check_group("layer" if group is None else group)
    if k is None:
        raise SparsenetsError(f"unstructured selection in the {group} group needs k (entries kept per group)")
    if group == "global":
        if not isinstance(scores, Mapping):
            raise SparsenetsError("the global group needs scores as {name: tensor}")
        return _select_global(scores, k, generator)
    if group == "row":
        return _select_rows(_tensor(scores, "row"), k, generator)
    return select_topk(_tensor(scores, "layer"), k, generator=generator)


def _tensor(scores: object, group: str) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        raise SparsenetsError(f"the {group} group needs scores as one tensor, got {type(scores).__name__}")
    return scores


# ------------------------------------------------------------------------- checking structure


def structure_violation(
    mask: torch.Tensor,
    structure: Structure,
    *,
    k: int | None = None,
    group: Group | None = None,
    at_most: bool = False,
) -> str | None:
    """Why ``mask`` breaks ``structure`` (a one-line reason), or ``None`` when it satisfies it.

    Args:
        mask: bool keep mask, (out, in, ...) for the row group and N:M.
        structure: :class:`NM`: exactly ``n`` True in every group of ``m`` consecutive inputs of
            every row. :class:`Unstructured`: with ``k``, exactly ``k`` True in every row
            (``group="row"``, the default) or in the tensor (``group="layer"``); without ``k``
            any pattern passes.
        k: expected keep count per group (unstructured only).
        group: ``"row"`` (default) or ``"layer"``.
        at_most: accept fewer than the expected count (``≤ n`` / ``≤ k``), e.g. for masks read
            back as ``weight != 0`` where a kept weight may be exactly zero.
    """
    if mask.dtype != torch.bool:
        return f"mask must be torch.bool, got {mask.dtype}"
    if isinstance(structure, NM):
        rows = _rows(mask)
        try:
            structure.check_fits(rows.shape[1])
        except SparsenetsError as error:
            return str(error)
        counts = rows.reshape(rows.shape[0], -1, structure.m).sum(-1)  # (out, in/m)
        expected, where, plural = structure.n, "group", f"groups of {structure.m}"
    else:
        group = check_group("row" if group is None else group)
        if k is None:
            return None
        if group == "global":
            raise SparsenetsError("check the global group on each layer's count (group='layer')")
        counts = _rows(mask).sum(1) if group == "row" else mask.sum().reshape(1)
        expected, where, plural = k, group, f"{group}s"
    bad = counts > expected if at_most else counts != expected
    if bool(bad.any()):
        first = int(bad.reshape(-1).nonzero()[0])
        relation = "at most" if at_most else "exactly"
        return (f"{int(bad.sum())} of {bad.numel()} {plural} break structure {structure}: "
                f"{where} {first} keeps {int(counts.reshape(-1)[first])}, expected {relation} {expected}")
    return None


def check_structure(
    mask: torch.Tensor,
    structure: Structure,
    *,
    k: int | None = None,
    group: Group | None = None,
    at_most: bool = False,
    name: str = "mask",
) -> None:
    """Raise a one-line :class:`SparsenetsError` naming ``name`` unless ``mask`` satisfies ``structure``.

    Arguments as in :func:`structure_violation`.
    """
    reason = structure_violation(mask, structure, k=k, group=group, at_most=at_most)
    if reason is not None:
        raise SparsenetsError(f"{name}: {reason}")

