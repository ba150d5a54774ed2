"""The fine-tuning job as ``sparsenets finetune-llm`` runs it: load a pruned directory, fine-tune
it (SEFT or a fixed mask), evaluate, save it with its ``sparsity.json`` extended.

The output is a directory of the same kind as ``prune-llm``'s: it loads with plain
``transformers.AutoModelForCausalLM.from_pretrained``, its ``masks.safetensors`` holds the final
masks (and the ever-active record where it differs), and ``sparsity.json`` keeps the pruning
record with one more entry in ``recovery`` (method, options, data, perplexity before/during/after,
topology updates, optimizer-state bytes, time). Checkpoints go to ``<out>-checkpoint`` beside the
output while the run lasts; ``resume=True`` continues from there, and the checkpoint is removed
once the output is saved.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import SparsenetsError, choice_error
from ..io import recover_dir
from .data import SPLIT, TRAIN_NOVEL, bos_token, training_tokens
from .export import check_pruned_output, load_pruned_masks, read_sparsity_info, save_pruned
from .finetune import FinetuneOptions, checkpoint_exists, finetune
from .models import check_tokenizer, checkpoint_dtype, load_causal_lm, load_tokenizer, progress_bars
from .pipeline import EvalProtocol, _source_name, sample_text

#: What ``finetune-llm`` offers (``dense`` re-densifies: a library baseline only).
CLI_METHODS = ("seft", "masked")
#: ``sparsity.json`` entries that describe the saved weights and are measured again on saving.
_MEASURED = ("layers", "summary", "transposed_layers", "mask_file", "peak_rss_mib")


def checkpoint_dir_for(out: str | Path) -> Path:
    """Where the checkpoints of a run writing ``out`` go: ``<out>-checkpoint`` beside it."""
    out = Path(out)
    return out.with_name(f"{out.name}-checkpoint")


def describe_training_text(source: str | None) -> str:
    return f"austen:{TRAIN_NOVEL}" if source is None else f"file:{source} (first {SPLIT:.0%} of tokens)"


def finetune_pretrained(
    model_dir: str | Path,
    out: str | Path,
    *,
    method: str = "seft",
    data: str | Path | None = None,
    options: FinetuneOptions | None = None,
    seft: dict[str, Any] | None = None,
    evaluation: EvalProtocol | None = None,
    bos: str | bool = "auto",
    device: str | torch.device = "cpu",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the pruned model in ``model_dir`` and save it to ``out``.

    Args:
        model_dir: a directory written by ``prune-llm`` (``sparsity.json``, masks, weights).
        out: the output directory (must not exist or be empty unless ``overwrite``; even then
            only a previous sparsenets output is replaced).
        method: ``"seft"`` (default) or ``"masked"``.
        data: training text: ``None`` (*Mansfield Park*, used neither for calibration nor for
            evaluation) or a local text / ``.jsonl`` file or saved dataset (its first 80 %).
        options: :class:`~sparsenets.llm.finetune.FinetuneOptions`.
        seft: SEFT's options (``update_every``, ``grow_fraction``, …); the structure comes
            from ``sparsity.json``.
        evaluation: held-out perplexity protocol (before, every ``eval_every`` steps, after).
        bos: start training windows with the BOS token: ``auto`` (as the tokenizer does), on, off.
        device: where the model trains.
        resume: continue from ``<out>-checkpoint``.
        overwrite: replace ``out`` (and start again even when a checkpoint exists).

    Returns:
        The record written to ``out/sparsity.json`` (with ``out`` added).
    """
    if method not in CLI_METHODS:
        raise choice_error("fine-tuning method", method, CLI_METHODS)
    out = Path(out)
    model_dir = Path(model_dir)
    if out.resolve() == model_dir.resolve():
        raise SparsenetsError(f"--out {str(out)!r} is the model being fine-tuned; choose another directory")
    check_pruned_output(out, overwrite)
    checkpoint = checkpoint_dir_for(out)
    if checkpoint_exists(checkpoint) and not resume:
        if not overwrite:
            raise SparsenetsError(f"{str(checkpoint)!r} holds the checkpoint of an interrupted run: --resume continues "
                                  f"it, --overwrite starts again")
        recover_dir(checkpoint)
        shutil.rmtree(checkpoint)
    if resume and not checkpoint_exists(checkpoint):
        raise SparsenetsError(f"nothing to resume: no checkpoint at {str(checkpoint)!r}")
    info = read_sparsity_info(model_dir) if model_dir.is_dir() else None
    if info is None:
        raise SparsenetsError(f"{str(model_dir)!r} is not a pruned model directory (no sparsity.json); "
                              f"prune a model with prune-llm first")
    options = options or FinetuneOptions()
    source = _source_name(data)
    masks = load_pruned_masks(model_dir, device=device)
    with progress_bars(progress):
        tokenizer = load_tokenizer(model_dir)
    check_tokenizer(tokenizer, sample_text(source))
    tokens = training_tokens(tokenizer, source)
    windows = evaluation.windows(tokenizer) if evaluation is not None else None
    saved_dtype = checkpoint_dtype(model_dir)
    model = load_causal_lm(model_dir, dtype=torch.float32, device=device, progress=progress)
    result = finetune(model, tokens, masks, method, options=options, seft=seft if method == "seft" else None,
                      structure=info.get("structure"), eval_windows=windows, checkpoint_dir=checkpoint,
                      resume=resume, progress=progress, bos_token=bos_token(tokenizer, bos))
    step = result.record() | {
        "data": {"text": describe_training_text(source), "n_tokens": int(tokens.numel()),
                 "bos_token_id": bos_token(tokenizer, bos)},
        "evaluation": evaluation.describe() if evaluation is not None else None,
        "source_pruned_model": str(model_dir),
        "sparsenets_version": __version__,
        "device": str(device),
    }
    record = {k: v for k, v in info.items() if k not in _MEASURED}
    record["recovery"] = list(info.get("recovery") or []) + [step]
    if result.evals and evaluation is not None:
        record["perplexity"] = {"value": result.evals[-1][1], "protocol": evaluation.describe(),
                                "bos_token_id": bos_token(tokenizer, evaluation.bos), "after": method}
    record["peak_rss_mib"] = result.peak_rss_mib
    model.to(saved_dtype)
    with progress_bars(progress):
        save_pruned(model, out, record, tokenizer=tokenizer, masks=result.masks, structure=info.get("structure"),
                    overwrite=overwrite)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return (read_sparsity_info(out) or record) | {"out": str(out)}  # with the measured layers
