"""The whole one-shot job, as the command line runs it: load, calibrate, prune, evaluate, save.

:func:`prune_pretrained` and :func:`evaluate_pretrained` are what ``sparsenets prune-llm`` and
``sparsenets eval-ppl`` call; the benchmark calls them too, so every number in the results comes
from the same code path a user runs. Each records the protocol it used (text source, sequence
length, number of windows or samples, seed), so a saved model's ``sparsity.json`` says exactly
how its numbers were obtained.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import SparsenetsError
from ..memory_use import peak_rss_mib
from . import lowmem
from .adapters import get_adapter, is_transposed
from .data import (
    CALIBRATION_NOVELS,
    EVAL_NOVEL,
    SPLIT,
    bos_token,
    calibration_batches,
    eval_windows,
    load_novel,
    read_source,
)
from .dsnot import DSnoTOptions, check_recover
from .export import (
    MASK_FILE,
    SPARSITY_FILE,
    check_pruned_output,
    mask_tensors,
    read_sparsity_info,
    save_pruned,
)
from .methods import get_method
from .models import (
    check_tokenizer,
    load_causal_lm,
    load_tokenizer,
    progress_bars,
    resolve_calib_dtype,
    resolve_dtype,
    resolve_model_dir,
)
from .perplexity import perplexity
from .prune import check_allocation, prune, resolve_sparsity

log = logging.getLogger(__name__)

#: Default number of evaluation windows (of ``seq_len`` tokens) on CPU-sized runs; ``None`` = all.
DEFAULT_EVAL_WINDOWS = 64


def _source_name(source: str | Path | None) -> str | None:
    """``None`` for the bundled text (``"austen"``), else the path of a local source (checked): a
    text file, a ``.jsonl`` file or a directory written by ``datasets``' ``save_to_disk``."""
    if source is None or str(source) == "austen":
        return None
    if not (Path(source).is_file() or Path(source).is_dir()):
        raise SparsenetsError(f"text {str(source)!r} not found (give austen, a text or .jsonl file, "
                              "or a dataset saved with save_to_disk)")
    return str(source)


def sample_text(source: str | None) -> str:
    """A few thousand characters of a protocol's text, to check the tokenizer on."""
    return (load_novel(EVAL_NOVEL) if source is None else read_source(source))[:4000]


@dataclass(frozen=True)
class CalibrationProtocol:
    """Where calibration windows come from: ``n_samples`` random windows of ``seq_len`` tokens."""

    source: str | None = None  # None: Jane Austen (see .data); else a local file or saved dataset
    n_samples: int = 128
    seq_len: int = 512
    seed: int = 0
    bos: str | bool = "auto"  # see .data.bos_token

    def describe(self) -> dict[str, Any]:
        text = (f"austen:{'+'.join(CALIBRATION_NOVELS)}" if self.source is None
                else f"file:{self.source} (first {SPLIT:.0%} of tokens)")
        return {"text": text, **asdict(self)}

    def batches(self, tokenizer) -> torch.Tensor:
        """(n_samples, seq_len) int64 token ids."""
        return calibration_batches(tokenizer, self.n_samples, self.seq_len, self.seed, source=self.source,
                                   bos=self.bos)


@dataclass(frozen=True)
class EvalProtocol:
    """Perplexity text: the first ``n_windows`` non-overlapping windows of held-out text."""

    source: str | None = None  # None: Jane Austen's Emma; else the last part of a local source
    seq_len: int = 512
    n_windows: int | None = DEFAULT_EVAL_WINDOWS
    bos: str | bool = "auto"  # see .data.bos_token

    def describe(self) -> dict[str, Any]:
        text = (f"austen:{EVAL_NOVEL}" if self.source is None
                else f"file:{self.source} (last {1 - SPLIT:.0%} of tokens)")
        return {"text": text, **asdict(self)}

    def windows(self, tokenizer) -> torch.Tensor:
        """(n_windows, seq_len) int64 token ids."""
        return eval_windows(tokenizer, self.seq_len, self.n_windows, source=self.source, bos=self.bos)


def _bos_setting(bos: str | bool) -> str | bool:
    """``auto`` / ``on`` / ``off`` (or a bool) as the protocols store it."""
    value = {"auto": "auto", "on": True, "off": False, True: True, False: False}.get(bos)
    if value is None:
        raise SparsenetsError(f"bos must be auto, on or off, got {bos!r}")
    return value


def make_calibration(source: str | Path | None = None, n_samples: int = 128, seq_len: int = 512,
                     seed: int = 0, bos: str | bool = "auto") -> CalibrationProtocol:
    """A :class:`CalibrationProtocol`; ``source`` ``"austen"``/``None`` or a local source path."""
    return CalibrationProtocol(_source_name(source), int(n_samples), int(seq_len), int(seed), _bos_setting(bos))


def make_eval(source: str | Path | None = None, seq_len: int = 512,
              n_windows: int | None = DEFAULT_EVAL_WINDOWS, bos: str | bool = "auto") -> EvalProtocol:
    """An :class:`EvalProtocol`; ``source`` ``"austen"``/``None`` or a local source path."""
    return EvalProtocol(_source_name(source), int(seq_len), None if n_windows is None else int(n_windows),
                        _bos_setting(bos))


def evaluate_pretrained(model_name: str | Path, protocol: EvalProtocol | None = None, *, batch_size: int = 4,
                        dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu",
                        progress: bool = True) -> dict[str, Any]:
    """Perplexity of a saved (or known) causal LM under ``protocol``, with its weights in
    ``dtype`` (default ``"auto"``: the checkpoint's own, as ``prune-llm`` measured it).

    Returns:
        ``{"model", "perplexity", "protocol", "seconds", "saved"}`` where ``saved`` is the
        perplexity recorded in the directory's ``sparsity.json`` under the same protocol (or
        ``None``), so a reload can be checked against the run that saved it.
    """
    protocol = protocol or make_eval()
    resolve_dtype(dtype)
    with progress_bars(progress):  # a known name is converted from GGUF on first use
        tokenizer = load_tokenizer(model_name)
    check_tokenizer(tokenizer, sample_text(protocol.source))
    windows = protocol.windows(tokenizer)
    model = load_causal_lm(model_name, dtype=dtype, device=device, progress=progress)
    start = time.perf_counter()
    value = perplexity(model, windows, batch_size, progress=progress)
    saved = None
    info = read_sparsity_info(model_name) if Path(model_name).is_dir() else None
    if info and info.get("perplexity") and info["perplexity"].get("protocol") == protocol.describe():
        saved = info["perplexity"]["value"]
    return {"model": str(model_name), "perplexity": value, "protocol": protocol.describe(),
            "seconds": time.perf_counter() - start, "saved": saved}


def prune_pretrained(
    model_name: str | Path,
    out: str | Path | None,
    *,
    method: str = "wanda",
    sparsity: float | None = None,
    structure: str = "unstructured",
    allocation: str = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    calibration: CalibrationProtocol | None = None,
    evaluation: EvalProtocol | None = None,
    batch_size: int = 8,
    targets: str | list[str] | None = None,
    ignore: str | list[str] | None = None,
    dtype: str | torch.dtype = "auto",
    calib_dtype: str | torch.dtype = "auto",
    low_memory: bool = False,
    recover: str | None = None,
    dsnot: DSnoTOptions | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Load ``model_name``, prune it one-shot, optionally measure perplexity, save it to ``out``.

    Args:
        model_name: a known name (``smollm2-135m``) or a local Hugging Face directory.
        out: output directory (``None``: do not save, e.g. in benchmarks).
        method, sparsity, structure, allocation, owl_m, owl_lambda, batch_size, targets,
            ignore: see :func:`.prune.prune`.
        calibration: calibration protocol (default: 128 Austen windows of 512 tokens, seed 0).
        evaluation: when given, perplexity is measured after pruning and recorded.
        dtype: the weights' dtype while pruning and in ``out``: ``"auto"`` (default: the
            checkpoint's own, so a bfloat16 model is saved in bfloat16), ``"float32"``,
            ``"bfloat16"``, ``"float16"`` or a torch dtype. Statistics accumulate in float32+.
        calib_dtype: dtype of the calibration forwards: ``"auto"`` (default: bfloat16 on CPUs
            with bf16 units (AMX, AVX-512 BF16) when the weights are float32, else the weights' own; see
            :func:`.models.resolve_calib_dtype`), ``"float32"``, ``"bfloat16"``, ``"float16"``.
        low_memory: keep one decoder block in memory at a time, read from the checkpoint's
            safetensors and written to ``out`` as it is pruned (:mod:`.lowmem`): same masks,
            a fraction of the memory; ``out`` then holds one safetensors shard per block.
        recover, dsnot: ``recover="dsnot"`` repairs each layer's mask with DSnoT (options in
            ``dsnot``); see :func:`.prune.prune`. Recorded under ``recovery`` in the record.
        device: where the model runs (``cpu``, ``cuda``, …).
        overwrite: replace a non-empty ``out``.

    Returns:
        The record also written to ``out/sparsity.json`` (method, target, protocols, measured
        per-layer sparsity in ``layers``, ``prune_seconds``, ``perplexity`` when evaluated,
        ``memory`` mode and the process's ``peak_rss_mib``);
        ``out`` also gets the keep masks (``masks.safetensors``, see :func:`.export.save_pruned`).
    """
    if out is not None:
        out = Path(out)
        check_pruned_output(out, overwrite)  # fail before the long work
    target, parsed = resolve_sparsity(sparsity, structure)  # validate everything before loading
    get_method(method)
    check_allocation(allocation, parsed)
    dsnot = check_recover(recover, dsnot)
    resolve_dtype(dtype)
    if calib_dtype != "auto":
        resolve_dtype(calib_dtype)
    calibration = calibration or make_calibration()
    with progress_bars(progress):  # a known name is converted from GGUF on first use
        tokenizer = load_tokenizer(model_name)
    check_tokenizer(tokenizer, sample_text(calibration.source))
    needs_calibration = method != "magnitude" or allocation == "owl" or dsnot is not None
    calib = calibration.batches(tokenizer) if needs_calibration else None
    windows = evaluation.windows(tokenizer) if evaluation is not None else None
    streamer = staging = None
    if low_memory:
        with progress_bars(progress):
            directory = resolve_model_dir(model_name)
        torch_dtype = resolve_dtype(dtype, directory)
        model, checkpoint = lowmem.build_skeleton(directory, torch_dtype, device)
        staging = lowmem.staging_dir(out)
        streamer = lowmem.BlockStreamer(checkpoint, get_adapter(model), torch_dtype, device, staging)
    else:
        model = load_causal_lm(model_name, dtype=dtype, device=device, progress=progress)
    weights_dtype = streamer.dtype if streamer is not None else next(model.parameters()).dtype
    forward_dtype = resolve_calib_dtype(calib_dtype, weights_dtype, device)
    try:
        start = time.perf_counter()
        result = prune(model, calib, method=method, sparsity=sparsity, structure=structure, allocation=allocation,
                       owl_m=owl_m, owl_lambda=owl_lambda, batch_size=batch_size, targets=targets, ignore=ignore,
                       progress=progress, loader=streamer, calib_dtype=forward_dtype,
                       recover=recover, dsnot=dsnot)
        seconds = time.perf_counter() - start
        log.info("pruned %d layers in %.1f s", len(result.sparsity), seconds)
        record: dict[str, Any] = {
            "sparsenets_version": __version__,
            "source_model": str(model_name),
            "method": method,
            "sparsity": target,
            "structure": str(parsed),
            "allocation": allocation,
            "targets": list([targets] if isinstance(targets, str) else targets or []),
            "ignore": list([ignore] if isinstance(ignore, str) else ignore or []),
            "owl": {"m": owl_m, "lambda": owl_lambda} if allocation == "owl" else None,
            "calibration": (calibration.describe() | {"bos_token_id": bos_token(tokenizer, calibration.bos)}
                            if calib is not None else None),
            "prune_seconds": seconds,
            "device": str(device),
            "dtype": str(weights_dtype).removeprefix("torch."),
            "calib_dtype": str(forward_dtype or weights_dtype).removeprefix("torch."),
            "memory": "block" if low_memory else "full",
        }
        if result.recovery is not None:
            swaps = result.recovery["swaps"]
            record["recovery"] = [{**{k: v for k, v in result.recovery.items() if k != "swaps"},
                                   "swaps_total": sum(swaps.values()), "swaps": swaps}]
        if windows is not None:
            ppl_start = time.perf_counter()
            value = (lowmem.staged_perplexity(model, streamer, windows) if streamer is not None
                     else perplexity(model, windows, progress=progress))
            record["perplexity"] = {"value": value, "protocol": evaluation.describe(),
                                    "bos_token_id": bos_token(tokenizer, evaluation.bos),
                                    "seconds": time.perf_counter() - ppl_start}
        record["peak_rss_mib"] = peak_rss_mib()
        if out is not None and streamer is not None:
            record["summary"] = lowmem.summary(streamer, list(result.masks), lowmem.outside_counts(streamer))
            record["layers"] = dict(result.sparsity)
            linears = get_adapter(model).prunable_linears(model)
            transposed = sorted(n for n in record["layers"] if is_transposed(linears[n]))
            if transposed:
                record["transposed_layers"] = transposed
            record["mask_file"] = MASK_FILE
            lowmem.finish(out, directory, streamer, record, mask_tensors(result.masks), SPARSITY_FILE, MASK_FILE)
            record["out"] = str(out)
        elif out is not None:
            with progress_bars(progress):
                save_pruned(model, out, record, tokenizer=tokenizer, masks=result.masks, structure=result.structure,
                            overwrite=overwrite)
            record["out"] = str(out)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    record["layers"] = result.sparsity
    return record
