"""A per-layer report of a sparse network: density, nnz, FLOPs, ITOP rate, topology churn.

Usage::

    print(report(model, sparsifier, example_input=x[:1]))   # fixed-width text table
    report(model, masks=masks).to_dict()                     # JSON-serializable
    report(pruned_model).to_markdown()                       # masks from ``weight != 0``

FLOPs follow :mod:`sparsenets.metrics`: one forward pass of one sample, 2 × MACs of the
Linear/Conv weight products, biases ignored. Totals of FLOPs cover every Linear/Conv layer
(unmasked ones counted dense); totals of numel/nnz/density cover the masked layers only.

Stored bytes (:func:`sparsenets.metrics.stored_bytes`) compare each masked weight (with its
module's bias) stored dense against stored as CSR (values + column indices + row pointers);
totals cover the masked layers. The ``backend`` column says how a layer holds its weight now, as
the layer itself answers (:class:`~sparsenets.layers.WeightLayer`): ``sparse`` for a CSR
:class:`~sparsenets.sparse.SparseLinear`, ``masked`` for dense storage.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch import nn

from .errors import SparsenetsError
from .layers import weight_layers
from .masks import MaskStore
from .metrics import (
    TOTAL,
    ExampleInput,
    churn,
    density_by_layer,
    itop_rates,
    layer_bytes,
    layer_flops,
    weight_shapes,
)

if TYPE_CHECKING:
    from .dst.sparsifier import DynamicSparsity

log = logging.getLogger(__name__)

Number = int | float
COLUMNS = (
    "layer", "backend", "shape", "density", "nnz/numel", "FLOPs dense", "FLOPs sparse",
    "bytes dense", "bytes CSR", "ITOP",
)


@dataclass
class LayerReport:
    """One masked parameter.

    ``flops_*`` are per sample and forward pass (None for a masked parameter that is not a
    Linear/Conv weight); ``itop_rate`` is None when no ever-active record is known (masks given
    as a plain mapping, or derived from ``weight != 0``). ``bytes_dense``/``bytes_sparse``: the
    weight and its bias stored dense / as CSR; ``backend``: ``masked`` or ``sparse`` (None in
    reports written before these fields existed).
    """

    name: str
    shape: tuple[int, ...]
    numel: int
    nnz: int
    density: float
    flops_dense: Number | None
    flops_sparse: Number | None
    itop_rate: float | None = None
    backend: str | None = None
    bytes_dense: int | None = None
    bytes_sparse: int | None = None


class Totals(TypedDict):
    """Whole-network numbers of a :class:`Report` (see the module docstring for the scope)."""

    numel: int
    nnz: int
    density: float
    flops_dense: Number
    flops_sparse: Number
    flops_ratio: float | None
    itop_rate: float | None
    bytes_dense: int | None
    bytes_sparse: int | None


@dataclass
class Report:
    """Per-layer and total density / FLOPs / ITOP rate, plus the topology-update history.

    Attributes:
        layers: one :class:`LayerReport` per masked parameter, in mask order.
        totals: see :class:`Totals`.
        updates: ``[{"step", "churn", "itop_rate", "grown"}]`` per topology update (may be empty).
        step: the sparsifier's step count, None without a sparsifier.
    """

    layers: list[LayerReport]
    totals: Totals
    updates: list[dict[str, Any]] = field(default_factory=list)
    step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict (shapes as lists)."""
        layers = []
        for layer in self.layers:
            entry = asdict(layer)
            entry["shape"] = list(layer.shape)
            layers.append(entry)
        return {
            "step": self.step,
            "layers": layers,
            "totals": dict(self.totals),
            "updates": [dict(update) for update in self.updates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Rebuild a report written by :meth:`to_dict` (e.g. from a run's ``summary.json``)."""
        layers = [LayerReport(**{**layer, "shape": tuple(layer["shape"])}) for layer in data["layers"]]
        return cls(
            layers=layers,
            totals=Totals(**data["totals"]),
            updates=[dict(update) for update in data.get("updates", [])],
            step=data.get("step"),
        )

    def _rows(self) -> list[tuple[str, ...]]:
        rows = [
            (
                layer.name,
                layer.backend or "-",
                format_shape(layer.shape),
                format_percent(layer.density),
                f"{human(layer.nnz)}/{human(layer.numel)}",
                human(layer.flops_dense),
                human(layer.flops_sparse),
                human_bytes(layer.bytes_dense),
                human_bytes(layer.bytes_sparse),
                format_percent(layer.itop_rate),
            )
            for layer in self.layers
        ]
        t = self.totals
        rows.append(
            (
                "TOTAL",
                "",
                "",
                format_percent(t["density"]),
                f"{human(t['nnz'])}/{human(t['numel'])}",
                human(t["flops_dense"]),
                human(t["flops_sparse"]),
                human_bytes(t.get("bytes_dense")),
                human_bytes(t.get("bytes_sparse")),
                format_percent(t["itop_rate"]),
            )
        )
        return rows

    def summary_lines(self) -> list[str]:
        """The text lines under the table: FLOPs ratio and topology updates."""
        ratio = self.totals["flops_ratio"]
        ratio_text = "-" if ratio is None else f"{ratio:.3f}"
        flops_line = (
            "FLOPs per sample and forward pass (2 x MACs, all Linear/Conv layers): "
            f"sparse/dense = {ratio_text}"
        )
        lines = [flops_line]
        dense, sparse = self.totals.get("bytes_dense"), self.totals.get("bytes_sparse")
        if dense and sparse is not None:
            lines.append(
                "stored bytes of the masked weights and their biases: dense "
                f"{human_bytes(dense)}, CSR (values + col + crow indices) {human_bytes(sparse)} "
                f"= {sparse / dense:.3f} of dense"
            )
        return [*lines, self._updates_line()]

    def _updates_line(self) -> str:
        itop = self.totals["itop_rate"]
        itop_text = f"; global ITOP rate {format_percent(itop)}" if itop is not None else ""
        step_text = f" (step {self.step})" if self.step is not None else ""
        if not self.updates:
            return f"topology updates: none{step_text}{itop_text}"
        last = self.updates[-1]
        return (
            f"topology updates: {len(self.updates)}{step_text}; last at step {last['step']}, "
            f"churn {format_percent(last['churn'])}{itop_text}"
        )

    def __str__(self) -> str:
        rows = [COLUMNS, *self._rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

        def line(row: Sequence[str]) -> str:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            return "  ".join(cells).rstrip()

        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        body = [line(row) for row in rows[1:-1]]
        return "\n".join(
            [line(COLUMNS), rule, *body, rule, line(rows[-1]), *self.summary_lines()]
        )

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured Markdown, followed by the summary lines."""
        rows = self._rows()
        total = tuple(f"**{cell}**" if cell else "" for cell in rows[-1])
        lines = [
            "| " + " | ".join(COLUMNS) + " |",
            "|" + "|".join([":---"] + ["---:"] * (len(COLUMNS) - 1)) + "|",
            *("| " + " | ".join(row) + " |" for row in [*rows[:-1], total]),
            "",
            *self.summary_lines(),
        ]
        return "\n".join(lines)


# -- formatting ------------------------------------------------------------------------------
_UNITS = ("", "K", "M", "G", "T", "P", "E")


def human(value: Number | None) -> str:
    """``1234 -> "1.23K"``, ``45600 -> "45.6K"``, ``24 -> "24"``, None -> ``"-"``."""
    if value is None:
        return "-"
    scaled = float(value)
    for unit in _UNITS:
        if abs(scaled) < 999.5 or unit == _UNITS[-1]:
            return f"{scaled:.3g}{unit}"
        scaled /= 1000.0
    raise AssertionError("unreachable")


def human_bytes(value: Number | None) -> str:
    """``1234 -> "1.23KB"``, None -> ``"-"`` (decimal units)."""
    return "-" if value is None else f"{human(value)}B"


def format_percent(value: float | None) -> str:
    """``0.1 -> "10.0%"``, ``0.0005 -> "0.05%"``, None -> ``"-"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    digits = 2 if 0 < abs(value) < 0.01 else 1
    return f"{100 * value:.{digits}f}%"


def format_shape(shape: Sequence[int]) -> str:
    """``(64, 3, 3, 3) -> "64x3x3x3"``."""
    return "x".join(str(s) for s in shape)


# -- building --------------------------------------------------------------------------------
def _nonzero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Masks ``weight != 0`` of every Linear/Conv weight (for pruned models without masks)."""
    masks = {name: view.nonzero_mask() for name, (_module, view) in weight_layers(model).items()}
    if not masks:
        raise SparsenetsError(
            "the model has no nn.Linear/nn.Conv weight to report on; pass masks={name: mask}"
        )
    return masks


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Raise unless every mask names a parameter of ``model`` and has its shape."""
    if len(masks) == 0:
        raise SparsenetsError("masks is empty: nothing to report")
    params = weight_shapes(model)
    shapes = masks.shapes if isinstance(masks, MaskStore) else {n: tuple(m.shape) for n, m in masks.items()}
    for name, shape in shapes.items():
        if name not in params:
            raise SparsenetsError(
                f"mask {name!r} names no parameter of the model (parameters: {', '.join(params)})"
            )
        if tuple(shape) != tuple(params[name]):
            raise SparsenetsError(
                f"mask for {name!r} has shape {tuple(shape)}, expected {tuple(params[name])}"
            )


def _totals(
    layers: Sequence[LayerReport], flops_total: Mapping[str, Any], store: MaskStore | None
) -> Totals:
    numel = sum(layer.numel for layer in layers)
    nnz = sum(layer.nnz for layer in layers)
    return Totals(
        numel=numel,
        nnz=nnz,
        density=nnz / numel if numel else 0.0,
        flops_dense=flops_total["flops_dense"],
        flops_sparse=flops_total["flops_sparse"],
        flops_ratio=flops_total["flops_ratio"],
        itop_rate=store.itop_rate() if store is not None else None,
        bytes_dense=sum(layer.bytes_dense or 0 for layer in layers),
        bytes_sparse=sum(layer.bytes_sparse or 0 for layer in layers),
    )


def report(
    model: nn.Module,
    sparsifier: DynamicSparsity | None = None,
    *,
    masks: Mapping[str, torch.Tensor] | None = None,
    example_input: ExampleInput | None = None,
) -> Report:
    """Density, nnz, FLOPs and ITOP rate per masked layer and in total.

    Args:
        model: the network.
        sparsifier: a :class:`~sparsenets.dst.DynamicSparsity`; its masks, history (topology
            updates) and step count are used.
        masks: instead of a sparsifier, ``{parameter name: mask}`` (bool or 0/1, the
            parameter's shape); a :class:`~sparsenets.masks.MaskStore` also gives ITOP rates.
            With neither, every Linear/Conv weight is masked by its pattern ``weight != 0``.
        example_input: a batch ``(B, ...)`` (or a tuple of tensors) the model accepts; run once
            in eval mode under ``torch.no_grad()`` to measure output sizes. Required when the
            model has conv layers; without it a Linear counts one position per sample.

    Raises:
        SparsenetsError: both ``sparsifier`` and ``masks``; masks that do not fit the model;
            conv layers without ``example_input``.
    """
    if sparsifier is not None and masks is not None:
        raise SparsenetsError("give either a sparsifier or masks to report(), not both")
    updates: list[dict[str, Any]] = []
    step: int | None = None
    if sparsifier is not None:
        masks, updates, step = sparsifier.masks, churn(sparsifier.history), sparsifier.step_count
    elif masks is None:
        masks = _nonzero_masks(model)
    _check_masks(model, masks)
    store = masks if isinstance(masks, MaskStore) else None
    flops = layer_flops(model, masks, example_input)
    flops_total = flops.pop(TOTAL)  # other keys are Linear/Conv weight names, never "total"
    itop = itop_rates(store) if store is not None else {}
    stored = layer_bytes(model, masks)
    views = {name: view for name, (_module, view) in weight_layers(model).items()}
    layers = [
        LayerReport(
            name=name,
            shape=tuple(store.shapes[name] if store is not None else masks[name].shape),
            numel=counts["numel"],
            nnz=counts["nnz"],
            density=counts["density"],
            flops_dense=flops[name]["flops_dense"] if name in flops else None,
            flops_sparse=flops[name]["flops_sparse"] if name in flops else None,
            itop_rate=itop.get(name),
            backend=views[name].backend if name in views else "masked",
            bytes_dense=stored[name]["dense"],
            bytes_sparse=stored[name]["sparse"],
        )
        for name, counts in density_by_layer(masks).items()
    ]
    result = Report(layers, _totals(layers, flops_total, store), updates, step)
    log.debug("report: %d layers, density %.4f", len(layers), result.totals["density"])
    return result
