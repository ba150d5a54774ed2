"""Saving a pruned causal LM as a plain Hugging Face directory, plus ``sparsity.json`` and its masks.

The directory holds what ``save_pretrained`` writes (``config.json``, ``model.safetensors``), the
tokenizer files, ``sparsity.json`` (the method, target sparsity, structure, allocation, the
calibration/evaluation protocol, the measured sparsity of every pruned layer and, when measured,
the perplexity) and, when masks are given, ``masks.safetensors``. It loads with plain
``transformers.AutoModelForCausalLM.from_pretrained(DIR)``; pruned weights are stored as zeros in
dense tensors, so no sparsenets code is needed to use it.

``masks.safetensors`` holds the :class:`~sparsenets.masks.MaskStore` state: ``mask/<param name>``
(bool, the weight's shape; one byte per prunable weight) for every pruned layer, and
``ever_active/<param name>`` only where that record differs from the mask (never right after
pruning). :func:`load_pruned_masks` reads it back, or derives the masks from ``weight != 0``
when the file is absent, and checks them against the recorded structure.

The directory is built in a temporary folder beside the target and renamed into place at the end:
an interrupted save leaves no half-written model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..errors import SparsenetsError
from ..io import check_output_dir, load_tensors, replace_dir, save_tensors, write_json
from ..masks import MaskStore
from ..select import NM, Structure, check_structure, keep_count, parse_structure
from .adapters import get_adapter, is_transposed

SPARSITY_FILE = "sparsity.json"
MASK_FILE = "masks.safetensors"


def layer_sparsity(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, float]:
    """``{name: fraction of exactly-zero weights}`` for every prunable layer of the decoder blocks
    (or only the layers ``names``)."""
    linears = get_adapter(model).prunable_linears(model)
    chosen = linears if names is None else {n: linears[n] for n in names}
    return {name: float((layer.weight == 0).sum()) / layer.weight.numel() for name, layer in chosen.items()}


def sparsity_summary(model: nn.Module) -> dict[str, Any]:
    """Overall figures over the prunable Linears: parameter count, zeros and their fraction.

    Also reports the zeros among *all* parameters (embeddings and ``lm_head`` included, counted
    once when tied), which is what a user sees in the saved file.
    """
    linears = get_adapter(model).prunable_linears(model)
    n_params = sum(layer.weight.numel() for layer in linears.values())
    n_zero = sum(int((layer.weight == 0).sum()) for layer in linears.values())
    all_params = {id(p): p for p in model.parameters()}.values()  # tied weights once
    total = sum(p.numel() for p in all_params)
    total_zero = sum(int((p == 0).sum()) for p in all_params)
    return {
        "pruned_layers": len(linears),
        "prunable_params": n_params,
        "prunable_zeros": n_zero,
        "prunable_sparsity": n_zero / max(n_params, 1),
        "model_params": total,
        "model_sparsity": total_zero / max(total, 1),
    }


def _mask_state(model: nn.Module, masks: MaskStore) -> dict[str, torch.Tensor]:
    """The tensors of ``masks.safetensors``, after checking ``masks`` fits the pruned layers of ``model``."""
    expected = {f"{name}.weight": layer.weight for name, layer in get_adapter(model).prunable_linears(model).items()}
    unexpected = sorted(set(masks) - set(expected))
    if unexpected or not len(masks):
        raise SparsenetsError(f"masks must name prunable layers of the decoder blocks (unexpected: {unexpected or 'no masks'})")
    expected = {name: expected[name] for name in masks}
    for name, weight in expected.items():
        outside = int((weight.detach()[~masks[name].to(weight.device)] != 0).sum())
        if outside:
            raise SparsenetsError(f"{name} has {outside} nonzero weights where its mask is False; apply the masks first")
    return mask_tensors(masks)


def mask_tensors(masks: MaskStore) -> dict[str, torch.Tensor]:
    """The tensors of ``masks.safetensors``: ``mask/<name>`` (bool, parameter layout) and
    ``ever_active/<name>`` where the ever-active record differs from the mask."""
    state: dict[str, torch.Tensor] = {}
    for name in masks:
        mask = masks[name]
        state[f"mask/{name}"] = mask
        ever = masks.ever_active(name)
        if not torch.equal(ever, mask):
            state[f"ever_active/{name}"] = ever
    return state


def save_pruned(model: nn.Module, directory: str | Path, info: dict[str, Any], *, tokenizer=None,
                masks: MaskStore | None = None, structure: str | Structure | None = None,
                overwrite: bool = False) -> Path:
    """Save ``model`` (and ``tokenizer``) with ``save_pretrained`` plus ``sparsity.json`` (and masks).

    Args:
        model: a Hugging Face causal LM (pruned in place by :func:`.prune.prune`).
        directory: output directory; it must not exist or be empty unless ``overwrite``.
        info: JSON-serializable facts to record (method, sparsity, protocol, …); the per-layer
            sparsity (``layers``: of the masks when given, else the share of zero weights) and
            overall figures (``summary``, zeros counted) are added here.
        tokenizer: saved beside the model when given, so the directory is self-contained.
        masks: the keep masks of every prunable layer (``PruneResult.masks``), written to
            ``masks.safetensors``; checked first: the weights must be 0 wherever a mask is False.
        structure: recorded as ``structure`` (``"unstructured"``, ``"2:4"``, …; e.g.
            ``PruneResult.structure``), replacing any ``structure`` in ``info``; it is what
            :func:`load_pruned_masks` checks.
        overwrite: replace an existing non-empty directory.

    Returns:
        The directory.
    """
    directory = Path(directory)
    check_pruned_output(directory, overwrite)
    record = dict(info)
    if structure is not None:
        record["structure"] = str(parse_structure(structure))
    mask_state = _mask_state(model, masks) if masks is not None else None  # validates the names first
    record["summary"] = sparsity_summary(model)
    if masks is None:
        record["layers"] = layer_sparsity(model)
    else:  # the masks' own sparsity: a kept weight may be exactly 0 (e.g. grown at 0 and not yet moved)
        record["layers"] = {name.removesuffix(".weight"): 1.0 - masks.nnz(name) / masks.numel(name) for name in masks}
    linears = {n: m for n, m in get_adapter(model).prunable_linears(model).items() if n in record["layers"]}
    transposed = sorted(name for name, layer in linears.items() if is_transposed(layer))
    if transposed:  # Conv1D: weight and mask stored (in, out); rows are checked on the transpose
        record["transposed_layers"] = transposed
    if mask_state is not None:
        record["mask_file"] = MASK_FILE

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if mask_state is not None:
            save_tensors(tmp / MASK_FILE, mask_state)
        write_json(tmp / SPARSITY_FILE, record)

    directory.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(directory, fill)
    return directory


def check_pruned_output(directory: str | Path, overwrite: bool) -> None:
    """Refuse an output that cannot be written, a non-empty one unless ``overwrite``, and, even
    with ``overwrite``, a non-empty directory that is not a previous ``prune-llm`` output (no
    ``sparsity.json``): the save replaces the whole directory, and must not delete what
    sparsenets did not write."""
    directory = Path(directory)
    check_output_dir(directory, overwrite, "output directory", not_empty_hint="use --overwrite to replace it")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / SPARSITY_FILE).is_file():
        foreign = sorted(p.name for p in directory.iterdir())[:3]
        raise SparsenetsError(
            f"output directory {str(directory)!r} holds files prune-llm did not write ({', '.join(foreign)}"
            f"{', …' if len(list(directory.iterdir())) > 3 else ''}); --overwrite replaces only a previous "
            f"prune-llm output: choose another --out"
        )


def read_sparsity_info(directory: str | Path) -> dict[str, Any] | None:
    """The ``sparsity.json`` of a saved model directory, or ``None`` when there is none."""
    path = Path(directory) / SPARSITY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SparsenetsError(f"{path} is not valid JSON: {error}") from None



def _saved_weights(directory: Path, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every name, read one at a time from the directory's safetensors weights."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        files = dict.fromkeys(names, single)
    elif index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = {n: directory / weight_map[n] for n in names if n in weight_map}
    else:
        raise SparsenetsError(f"{str(directory)!r} has no model.safetensors (or its index): not a saved model")
    missing = [n for n in names if n not in files]
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            for name in [n for n, f in files.items() if f == path]:
                if name not in keys:
                    missing.append(name)
                    continue
                yield name, handle.get_tensor(name)
    if missing:
        raise SparsenetsError(f"the saved weights of {str(directory)!r} lack {len(missing)} pruned layers, e.g. {missing[0]!r}")


def _check_layer(name: str, mask: torch.Tensor, structure: Structure | None, sparsity: float, at_most: bool) -> None:
    """One-line error unless ``mask`` (out, in) has the recorded structure: N:M, or the recorded per-row count."""
    if structure is None:
        return
    if isinstance(structure, NM):
        check_structure(mask, structure, at_most=at_most, name=name)
    else:
        check_structure(mask, structure, k=keep_count(mask.shape[1], sparsity), group="row", at_most=at_most, name=name)


def load_pruned_masks(directory: str | Path, *, device: str | torch.device = "cpu") -> MaskStore:
    """The keep masks of a directory written by :func:`save_pruned`, checked against its structure.

    The masks come from ``masks.safetensors`` when present (and the saved weights must then be 0
    wherever a mask is False), else from ``weight != 0`` of every layer listed in
    ``sparsity.json``. The recorded ``structure`` is then checked layer by layer: N:M means
    exactly N kept in every group of M consecutive inputs of every row; ``unstructured`` means
    every row keeps ``in − round(s · in)`` weights, ``s`` the layer's recorded sparsity (sparsenets
    prunes per row). Masks read from ``weight != 0`` may keep fewer (a kept weight can be exactly
    0), never more. No recorded structure: no check. Only safetensors and JSON are read.

    Args:
        directory: a pruned model directory (``sparsity.json`` beside the safetensors weights).
        device: where the masks live.

    Returns:
        A :class:`~sparsenets.masks.MaskStore` keyed ``<Linear name>.weight``, bool masks in
        the parameter's own layout ((out, in); (in, out) for Conv1D); its ever-active record is the saved one (the masks where none was saved).

    Raises:
        SparsenetsError: no ``sparsity.json``, masks that do not match the listed layers or the
            weights, a layer that breaks the recorded structure.
    """
    directory = Path(directory)
    info = read_sparsity_info(directory)
    if info is None or not isinstance(info.get("layers"), Mapping):
        raise SparsenetsError(f"{str(directory)!r} has no {SPARSITY_FILE} with the pruned layers: not saved by save_pruned")
    sparsity = {f"{layer}.weight": float(value) for layer, value in info["layers"].items()}
    transposed = {f"{layer}.weight" for layer in info.get("transposed_layers", [])}
    structure = parse_structure(info["structure"]) if info.get("structure") is not None else None
    mask_path = directory / MASK_FILE
    from_file = mask_path.is_file()
    state = dict(load_tensors(mask_path)) if from_file else {}
    if from_file:
        found = {key.partition("/")[2] for key in state if key.startswith("mask/")}
        if found != set(sparsity):
            raise SparsenetsError(f"{MASK_FILE} does not match the layers of {SPARSITY_FILE} "
                                  f"(missing: {sorted(set(sparsity) - found)}, unexpected: {sorted(found - set(sparsity))})")
    shapes: dict[str, tuple[int, ...]] = {}
    for name, weight in _saved_weights(directory, list(sparsity)):
        mask = state.setdefault(f"mask/{name}", weight != 0)
        if mask.dtype != torch.bool or mask.shape != weight.shape:
            raise SparsenetsError(f"{MASK_FILE}: mask/{name} must be bool of shape {tuple(weight.shape)}, "
                                  f"got {mask.dtype} {tuple(mask.shape)}")
        outside = int((weight[~mask] != 0).sum())
        if outside:
            raise SparsenetsError(f"{name} has {outside} nonzero saved weights where its mask is False: "
                                  f"{MASK_FILE} does not match the weights")
        _check_layer(name, mask.t() if name in transposed else mask, structure, sparsity[name], at_most=not from_file)
        state.setdefault(f"ever_active/{name}", mask)
        shapes[name] = tuple(weight.shape)
    store = MaskStore({n: shapes[n] for n in sparsity}, device=device)
    store.load_state_dict(state)
    return store
