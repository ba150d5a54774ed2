"""Saving a pruned causal LM as a plain Hugging Face directory, plus ``sparsity.json``.

The directory holds what ``save_pretrained`` writes (``config.json``, ``model.safetensors``), the
tokenizer files, and ``sparsity.json``: the method, target sparsity, structure, allocation, the
calibration/evaluation protocol, the measured sparsity of every pruned layer and (when measured)
the perplexity. It loads with plain ``transformers.AutoModelForCausalLM.from_pretrained(DIR)``;
pruned weights are stored as zeros in dense tensors, so no sparsenets code is needed to use it.

The directory is built in a temporary folder beside the target and renamed into place at the end:
an interrupted save leaves no half-written model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import SparsenetsError
from ..io import replace_dir, write_json
from .adapters import get_adapter

SPARSITY_FILE = "sparsity.json"


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """``{name: fraction of exactly-zero weights}`` for every prunable Linear of the decoder blocks."""
    return {
        name: float((layer.weight == 0).sum()) / layer.weight.numel()
        for name, layer in get_adapter(model).prunable_linears(model).items()
    }


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


def save_pruned(model: nn.Module, directory: str | Path, info: dict[str, Any], *, tokenizer=None,
                overwrite: bool = False) -> Path:
    """Save ``model`` (and ``tokenizer``) with ``save_pretrained`` plus ``sparsity.json``.

    Args:
        model: a Hugging Face causal LM (pruned in place by :func:`.prune.prune`).
        directory: output directory; it must not exist or be empty unless ``overwrite``.
        info: JSON-serializable facts to record (method, sparsity, protocol, …); the measured
            per-layer sparsity (``layers``) and overall figures (``summary``) are added here.
        tokenizer: saved beside the model when given, so the directory is self-contained.
        overwrite: replace an existing non-empty directory.

    Returns:
        The directory.
    """
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SparsenetsError(f"output {str(directory)!r} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise SparsenetsError(f"output directory {str(directory)!r} is not empty (use --overwrite to replace it)")
    record = dict(info)
    record["summary"] = sparsity_summary(model)
    record["layers"] = layer_sparsity(model)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_json(tmp / SPARSITY_FILE, record)

    directory.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(directory, fill)
    return directory


def read_sparsity_info(directory: str | Path) -> dict[str, Any] | None:
    """The ``sparsity.json`` of a saved model directory, or ``None`` when there is none."""
    path = Path(directory) / SPARSITY_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise SparsenetsError(f"{path} is not valid JSON: {error}") from None

