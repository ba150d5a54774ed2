"""Fine-tuning a pruned causal LM without losing its sparsity: SEFT or a fixed mask.

:func:`finetune` trains a pruned Hugging Face causal LM on next-token prediction while a
:class:`~sparsenets.DynamicSparsity` keeps the pruned layers (the Linears of the decoder blocks,
never the embeddings or a tied head) at their exact per-row counts after every step:

* ``method="seft"``: the topology evolves (:class:`~sparsenets.SEFT`: grow by accumulated
  |gradient|, prune back by sensitivity, per row or per N:M group);
* ``method="masked"``: the pruned mask stays fixed (the baseline);
* ``method="dense"``: plain dense fine-tuning, which re-densifies the model (a baseline for
  benchmarks: prune it again afterwards).

Training windows of ``seq_len`` tokens are drawn at random from the training text, the windows of
step ``t`` from a generator seeded by ``(seed, t)``, so a resumed run sees the same batches as an
uninterrupted one. The learning rate warms up linearly over ``warmup_fraction`` of the steps and
decays to 0 with a cosine. The optimizer is :class:`~sparsenets.LeanAdamW` for the sparse methods
(moments only for active weights; a regrown weight warms up from its own step 0) and
``torch.optim.AdamW`` for ``dense``. Forwards run under bfloat16 autocast on CPUs with bf16
units (``autocast="auto"``); weights, gradients and optimizer state stay float32, and held-out
perplexity is measured in the weights' dtype, as ``prune-llm`` measures it.

A checkpoint (``checkpoint_dir``, every ``checkpoint_every`` steps) holds the trained weights
(safetensors), the optimizer and sparsifier state and the history (``torch.load(weights_only=True)``),
written to a temporary directory and swapped in; ``resume=True`` continues from it and gives the
same weights as the uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..dst import SEFT, DynamicSparsity
from ..errors import SparsenetsError, choice_error
from ..io import (
    dir_version_exists,
    load_tensors,
    load_torch,
    recover_dir,
    replace_dir,
    save_tensors,
)
from ..lean_optim import LeanAdamW
from ..masks import MaskStore
from ..memory_use import peak_rss_mib
from ..select import NM, parse_structure
from .adapters import get_adapter, is_transposed
from .models import resolve_calib_dtype
from .perplexity import check_windows, perplexity

FINETUNE_METHODS = ("seft", "masked", "dense")
OPTIMIZERS = ("auto", "lean-adamw", "adamw")
_WEIGHTS, _STATE = "weights.safetensors", "state.pt"


@dataclass(frozen=True)
class FinetuneOptions:
    """How a fine-tuning run trains (everything but the method's own topology options).

    Args:
        steps: optimizer steps.
        lr: peak learning rate (after the linear warm-up).
        warmup_fraction: share of the steps over which the learning rate rises linearly from 0;
            it then decays to 0 with a cosine.
        batch_size: windows per step.
        seq_len: tokens per window.
        weight_decay: AdamW's decoupled weight decay.
        max_grad_norm: clip the (masked) gradient to this global norm; 0 = no clipping.
        optimizer: ``"auto"`` (LeanAdamW for ``seft``/``masked``, AdamW for ``dense``),
            ``"lean-adamw"`` or ``"adamw"``.
        regrow_warmup: LeanAdamW's ``warmup_steps``: a regrown weight's step size rises linearly
            over its first steps (0 = off).
        autocast: ``"auto"`` (bfloat16 on CPUs with bf16 units, else none), ``"bfloat16"``,
            ``"off"``.
        train_embeddings: also train the input embeddings (and a tied head); by default only the
            decoder blocks and the final norm train.
        seed: seed of the training windows.
        eval_every: held-out perplexity every this many steps (0 = only before and after).
        checkpoint_every: write the checkpoint every this many steps (0 = only at the end of a
            run given ``checkpoint_dir``).
    """

    steps: int = 200
    lr: float = 1e-4
    warmup_fraction: float = 0.1
    batch_size: int = 4
    seq_len: int = 256
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "auto"
    regrow_warmup: int = 0
    autocast: str = "auto"
    train_embeddings: bool = False
    seed: int = 0
    eval_every: int = 0
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SparsenetsError(f"{name} must be a positive integer, got {value!r}")
        if self.seq_len < 2:
            raise SparsenetsError(f"seq_len must be at least 2 (one prediction), got {self.seq_len}")
        for name in ("eval_every", "checkpoint_every", "regrow_warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SparsenetsError(f"{name} must be an integer >= 0, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise SparsenetsError(f"lr must be a positive number, got {self.lr!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise SparsenetsError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not self.weight_decay >= 0 or not self.max_grad_norm >= 0:
            raise SparsenetsError(f"weight_decay and max_grad_norm must be >= 0, got {self.weight_decay!r}, "
                                  f"{self.max_grad_norm!r}")
        if self.optimizer not in OPTIMIZERS:
            raise choice_error("optimizer", self.optimizer, OPTIMIZERS)
        if self.autocast not in ("auto", "bfloat16", "off"):
            raise choice_error("autocast", self.autocast, ("auto", "bfloat16", "off"))

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (1-based): linear warm-up, then cosine to 0."""
        warmup = int(self.warmup_fraction * self.steps)
        if step <= warmup:
            return self.lr * step / (warmup + 1)
        progress = (step - warmup) / max(self.steps - warmup, 1)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class FinetuneResult:
    """What :func:`finetune` did and measured.

    Attributes:
        method: ``"seft"``, ``"masked"`` or ``"dense"``.
        steps: optimizer steps done (this run and any it resumed).
        losses: training loss of every step, ``[(step, loss)]``.
        evals: held-out perplexity, ``[(step, perplexity)]`` (step 0: before training).
        masks: the final :class:`~sparsenets.masks.MaskStore` (``None`` for ``dense``); its
            ever-active record holds every position active at some step.
        topology: one record per topology update (``DynamicSparsity.history``).
        mask_change: share of the initially kept weights that are pruned at the end (0 for a
            fixed mask).
        optimizer_state_bytes: bytes of every tensor the optimizer holds, measured at the end.
        method_state_bytes: the most bytes SEFT's gradient accumulator held at once.
        seconds: wall time of this call and any it resumed, evaluations included.
        eval_seconds: the part of ``seconds`` spent measuring perplexity.
        peak_rss_mib: the process's peak resident memory at the end.
        options: the run's :class:`FinetuneOptions` and the method's options, as plain values.
    """

    method: str
    steps: int
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    masks: MaskStore | None = None
    topology: list[dict[str, Any]] = field(default_factory=list)
    mask_change: float = 0.0
    optimizer_state_bytes: int = 0
    method_state_bytes: int = 0
    seconds: float = 0.0
    eval_seconds: float = 0.0
    peak_rss_mib: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """A JSON-serializable summary (for ``sparsity.json``'s ``recovery`` list)."""
        return {
            "method": self.method,
            "steps": self.steps,
            "options": self.options,
            "perplexity": [{"step": s, "value": p} for s, p in self.evals],
            "final_loss": self.losses[-1][1] if self.losses else None,
            "topology_updates": len(self.topology),
            "grown_total": sum(int(update.get("grown", 0)) for update in self.topology),
            "mask_change": self.mask_change,
            "optimizer_state_bytes": self.optimizer_state_bytes,
            "method_state_bytes": self.method_state_bytes,
            "seconds": self.seconds,
            "eval_seconds": self.eval_seconds,
            "peak_rss_mib": self.peak_rss_mib,
        }


def training_windows(tokens: torch.Tensor, step: int, batch_size: int, seq_len: int, seed: int,
                     bos_token: int | None = None) -> torch.Tensor:
    """The ``(batch_size, seq_len)`` windows of step ``step``: random starts in ``tokens (n,)``
    (or random rows of ``tokens (N, T)`` cut to ``seq_len``) from a generator seeded by
    ``(seed, step)``, so any step's batch can be drawn again without replaying the others.
    With ``bos_token`` (``(n,)`` text only), each window is BOS and ``seq_len - 1`` text tokens."""
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    if tokens.dim() == 2:
        rows = torch.randint(0, tokens.shape[0], (batch_size,), generator=generator)
        return tokens[rows, :seq_len]
    body = seq_len - (bos_token is not None)
    starts = torch.randint(0, tokens.numel() - body + 1, (batch_size,), generator=generator)
    windows = torch.stack([tokens[s : s + body] for s in starts.tolist()])
    if bos_token is None:
        return windows
    return torch.cat([torch.full((batch_size, 1), int(bos_token), dtype=windows.dtype), windows], dim=1)


def check_training_tokens(tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """``tokens`` as int64 after checking it: ``(n,)`` with n >= seq_len, or ``(N, T)`` windows with T >= seq_len."""
    if not isinstance(tokens, torch.Tensor) or tokens.dim() not in (1, 2) or tokens.is_floating_point():
        got = f"{tokens.dtype} {tuple(tokens.shape)}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise SparsenetsError(f"training data must be token ids, (n,) or (N, T) integers, got {got}")
    length = tokens.shape[-1]
    if length < seq_len or (tokens.dim() == 2 and tokens.shape[0] == 0):
        raise SparsenetsError(f"training data has windows of {length} tokens, fewer than seq_len {seq_len}")
    return tokens.long()


def masks_from_zeros(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<layer>.weight": weight != 0}`` for every prunable Linear of the decoder blocks."""
    return {f"{name}.weight": layer.weight.detach() != 0 for name, layer in get_adapter(model).prunable_linears(model).items()}


def trainable_parameters(model: nn.Module, train_embeddings: bool) -> dict[str, nn.Parameter]:
    """The parameters fine-tuning updates: those with ``requires_grad`` but the input and output
    embeddings (unless ``train_embeddings``), each once (tied weights are one parameter)."""
    frozen: set[int] = set()
    if not train_embeddings:
        for module in (model.get_input_embeddings(), model.get_output_embeddings()):
            if module is not None:
                frozen.update(id(p) for p in module.parameters())
    return {name: p for name, p in model.named_parameters() if id(p) not in frozen and p.requires_grad}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in ``optimizer.state`` (moments, step counts)."""
    if isinstance(optimizer, LeanAdamW):
        return optimizer.state_bytes()
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


def _autocast(choice: str, device: torch.device):
    """The autocast context of the forwards (a null context when off)."""
    if choice == "off":
        return contextlib.nullcontext()
    if choice == "auto" and resolve_calib_dtype("auto", torch.float32, device) is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _check_masks(masks: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    expected = set(masks_from_zeros(model))
    names = set(masks)
    if not names or not names <= expected:
        raise SparsenetsError(f"masks must name prunable Linears of the decoder blocks as '<layer>.weight' "
                              f"(unexpected: {sorted(names - expected)[:3] or 'no masks'})")
    chosen = {name: masks[name] for name in masks}
    if all(bool(mask.all()) for mask in chosen.values()):
        raise SparsenetsError("the model is not pruned: every mask keeps every weight (prune it first, "
                              "or fine-tune with method='dense')")
    return chosen


def finetune(
    model: nn.Module,
    data: torch.Tensor,
    masks: Mapping[str, torch.Tensor] | MaskStore | None = None,
    method: str = "seft",
    *,
    options: FinetuneOptions | None = None,
    seft: SEFT | Mapping[str, Any] | None = None,
    structure: str | None = None,
    eval_windows: torch.Tensor | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    bos_token: int | None = None,
    on_step: Callable[[int, float, DynamicSparsity | None], None] | None = None,
) -> FinetuneResult:
    """Fine-tune a pruned causal LM in place, keeping its sparsity exact (module doc).

    Args:
        model: a Hugging Face causal LM, already pruned (its weights and device are used as they are).
        data: training token ids, ``(n,)`` (windows drawn anywhere) or ``(N, T)`` windows.
        masks: the keep masks ``{"<layer>.weight": bool (out, in)}`` of the pruned layers (e.g.
            ``PruneResult.masks`` or :func:`~sparsenets.llm.load_pruned_masks`); ``None`` reads
            them from ``weight != 0``. Ignored by ``dense``.
        method: ``"seft"`` (default), ``"masked"`` or ``"dense"``.
        options: :class:`FinetuneOptions` (default: its defaults).
        seft: a :class:`~sparsenets.SEFT` or its options (``update_every``, ``grow_fraction``, …).
        structure: ``"unstructured"`` or ``"N:M"``, the pruned structure SEFT keeps (default:
            read from the masks, :func:`infer_structure`).
        eval_windows: ``(n_windows, T)`` held-out token ids; perplexity before, every
            ``eval_every`` steps and after (none when ``None``).
        checkpoint_dir: where checkpoints go (none when ``None``).
        resume: continue from the checkpoint in ``checkpoint_dir``.
        progress: show a progress bar with the loss, learning rate and last perplexity.
        bos_token: start every training window drawn from ``(n,)`` text with this token (e.g.
            :func:`~sparsenets.llm.data.bos_token` of the tokenizer), as the evaluation windows do.
        on_step: called after every step with ``(step, loss, sparsifier)`` (``None`` for dense).

    Returns:
        A :class:`FinetuneResult`.
    """
    if method not in FINETUNE_METHODS:
        raise choice_error("fine-tuning method", method, FINETUNE_METHODS)
    options = options or FinetuneOptions()
    tokens = check_training_tokens(data, options.seq_len)
    if eval_windows is not None:
        check_windows(eval_windows)
    if resume and checkpoint_dir is None:
        raise SparsenetsError("resume=True needs the checkpoint_dir to resume from")
    device = next(model.parameters()).device
    params = trainable_parameters(model, options.train_embeddings)
    kind = options.optimizer if options.optimizer != "auto" else ("adamw" if method == "dense" else "lean-adamw")
    groups = [{"params": list(params.values())}]
    optimizer = (LeanAdamW(groups, lr=options.lr, weight_decay=options.weight_decay, warmup_steps=options.regrow_warmup)
                 if kind == "lean-adamw" else
                 torch.optim.AdamW(groups, lr=options.lr, weight_decay=options.weight_decay))
    sparsifier, seft_method = None, None
    if method != "dense":
        masks = _check_masks(masks if masks is not None else masks_from_zeros(model), model)
        missing = sorted(name for name in masks if name not in params)
        if missing:
            raise SparsenetsError(f"{missing[0]!r} is a pruned layer that would not be trained")
        if method == "seft":
            seft_method = _seft_method(model, seft, structure, masks)
        sparsifier = DynamicSparsity(model, optimizer, masks={n: m.to(device) for n, m in masks.items()},
                                     total_steps=options.steps, method=seft_method or "static",
                                     include=list(masks))
    elif seft is not None:
        raise SparsenetsError("seft options were given with method='dense'")
    initial = None if sparsifier is None else {n: sparsifier.masks[n].clone() for n in sparsifier.masks}
    result = FinetuneResult(method=method, steps=0, options=_options_record(options, kind, seft_method))
    start = 0
    if resume:
        start = _load_checkpoint(Path(checkpoint_dir), params, optimizer, sparsifier, result, method)
        if start > options.steps:
            raise SparsenetsError(f"the checkpoint is at step {start}, past the {options.steps} steps asked")
    autocast = _autocast(options.autocast, device)
    started = time.perf_counter()

    def evaluate(step: int) -> None:
        if eval_windows is None:
            return
        model.eval()  # in the weights' own dtype (no autocast), as prune-llm measures it
        began = time.perf_counter()
        result.evals.append((step, perplexity(model, eval_windows, progress=False)))
        result.eval_seconds += time.perf_counter() - began
        model.train()

    if start == 0:
        evaluate(0)
    trained = {id(p) for p in params.values()}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trained]
    for p in frozen:  # no gradient for what does not train (the embeddings: 28M weights in SmolLM2)
        p.requires_grad_(False)
    model.train()
    bar = tqdm(range(start + 1, options.steps + 1), desc=f"finetune ({method})", disable=not progress,
               initial=start, total=options.steps)
    try:
        for step in bar:
            batch = training_windows(tokens, step, options.batch_size, options.seq_len, options.seed, bos_token)
            loss, held = _train_step(model, batch.to(device), step, options, optimizer, sparsifier, params, autocast)
            result.losses.append((step, loss))
            result.steps = step
            result.method_state_bytes = max(result.method_state_bytes, held)
            if on_step is not None:
                on_step(step, loss, sparsifier)
            if options.eval_every and step % options.eval_every == 0 and step != options.steps:
                evaluate(step)
            postfix = {"loss": f"{loss:.3f}", "lr": f"{options.lr_at(step):.2e}"}
            if result.evals:
                postfix["ppl"] = f"{result.evals[-1][1]:.2f}"
            bar.set_postfix(postfix, refresh=False)
            if (checkpoint_dir is not None and options.checkpoint_every and step % options.checkpoint_every == 0
                    and step != options.steps):  # the last step's checkpoint is written after its evaluation
                _write_checkpoint(Path(checkpoint_dir), params, optimizer, sparsifier, result, method, started)
    finally:
        bar.close()
        model.eval()
        for p in frozen:
            p.requires_grad_(True)
    if start < options.steps or not result.evals or result.evals[-1][0] != options.steps:
        evaluate(options.steps)
    if checkpoint_dir is not None and start < options.steps:
        _write_checkpoint(Path(checkpoint_dir), params, optimizer, sparsifier, result, method, started)
    result.seconds += time.perf_counter() - started
    result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    result.peak_rss_mib = peak_rss_mib()
    if sparsifier is not None:
        result.masks = sparsifier.masks
        result.topology = list(sparsifier.history)
        kept_initial = sum(int(mask.sum()) for mask in initial.values())
        lost = sum(int((initial[n] & ~sparsifier.masks[n]).sum()) for n in initial)
        result.mask_change = lost / max(kept_initial, 1)
        sparsifier.close()
    return result


def infer_structure(masks: Mapping[str, torch.Tensor], transposed: tuple[str, ...] = ()) -> str:
    """The pruned structure the masks ``{name: (out, in) bool}`` show: ``"N:M"`` for the smallest
    M of 4, 8, 16 at which every group of M consecutive inputs of every row keeps the same N
    (0 < N < M), else ``"unstructured"``. Layers in ``transposed`` are stored (in, out)."""
    rows = [mask.t() if name in transposed else mask for name, mask in masks.items()]
    for m in (4, 8, 16):
        if any(r.shape[1] % m for r in rows):
            continue
        counts = torch.cat([r.reshape(r.shape[0], -1, m).sum(2).flatten() for r in rows])
        n = int(counts[0])
        if 0 < n < m and bool((counts == n).all()):
            return f"{n}:{m}"
    return "unstructured"


def _seft_method(model: nn.Module, seft: SEFT | Mapping[str, Any] | None, structure: str | None,
                 masks: Mapping[str, torch.Tensor]) -> SEFT:
    """The SEFT method object: given, or built from options, with the model's transposed layers
    and the pruned structure (given, else read from the masks) filled in."""
    linears = get_adapter(model).prunable_linears(model)
    transposed = tuple(f"{n}.weight" for n, layer in linears.items() if is_transposed(layer) and f"{n}.weight" in masks)
    if structure is None and not (isinstance(seft, SEFT) or "structure" in dict(seft or {})):
        structure = infer_structure(masks, transposed)
    if isinstance(seft, SEFT):
        method = seft
        if structure is not None and parse_structure(structure) != parse_structure(method.structure):
            raise SparsenetsError(f"structure {structure!r} contradicts the SEFT object's {method.structure!r}")
        method = replace(method, transposed=tuple(sorted(set(method.transposed) | set(transposed))))
    else:
        given = dict(seft or {})
        if structure is not None:
            given["structure"] = str(parse_structure(structure))
        given.setdefault("transposed", transposed)
        from ..dst.registry import make_method

        method = make_method("seft", **given)
    chosen = parse_structure(method.structure)
    if isinstance(chosen, NM):
        for name, mask in masks.items():
            rows = mask.t() if name in method.transposed else mask
            if rows.shape[1] % chosen.m:
                raise SparsenetsError(f"{name} has {rows.shape[1]} inputs, not a multiple of M = {chosen.m} "
                                      f"of structure {chosen}")
    return method


def _train_step(model, batch, step, options, optimizer, sparsifier, params, autocast) -> tuple[float, int]:
    """One optimizer step on ``batch (B, T)``, the windows of ``step``; returns its loss and the
    bytes the sparsifier's method state held before the update (SEFT's accumulator)."""
    device = batch.device
    for group in optimizer.param_groups:
        group["lr"] = options.lr_at(step)
    optimizer.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
        torch.manual_seed(int(options.seed) * 1_000_003 + step)  # dropout, where a model has it
        with autocast:
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise SparsenetsError(f"step {step}: the training loss is {value} (lower lr, currently {options.lr_at(step):.3g})")
    held = 0
    if sparsifier is not None:
        sparsifier.before_optimizer_step()  # masks the gradients (SEFT reads the dense ones first)
        held = sum(t.numel() * t.element_size() for t in sparsifier.state.persistent().values())
    if options.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(list(params.values()), options.max_grad_norm)
    optimizer.step()
    if sparsifier is not None:
        sparsifier.after_optimizer_step()  # re-masks, and updates the topology when due
    return value, held


def _options_record(options: FinetuneOptions, optimizer: str, seft: SEFT | None) -> dict[str, Any]:
    record = asdict(options) | {"optimizer": optimizer}
    if seft is not None:
        record["seft"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in seft.options().items()
                          if k != "transposed"}
    return record


def _write_checkpoint(directory: Path, params, optimizer, sparsifier, result: FinetuneResult, method: str,
                      started: float) -> None:
    state = {
        "method": method,
        "step": result.steps,
        "optimizer": optimizer.state_dict(),
        "sparsifier": None if sparsifier is None else sparsifier.state_dict(),
        "losses": [list(x) for x in result.losses],
        "evals": [list(x) for x in result.evals],
        "seconds": result.seconds + time.perf_counter() - started,
        "eval_seconds": result.eval_seconds,
        "method_state_bytes": result.method_state_bytes,
    }
    weights = {name: p.detach().contiguous() for name, p in params.items()}

    def fill(tmp: Path) -> None:
        save_tensors(tmp / _WEIGHTS, weights)
        torch.save(state, tmp / _STATE)

    directory.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(directory, fill)


def checkpoint_exists(directory: str | Path) -> bool:
    """Whether ``directory`` holds a fine-tuning checkpoint (or a swap that can be recovered)."""
    return dir_version_exists(directory)


def _load_checkpoint(directory: Path, params, optimizer, sparsifier, result: FinetuneResult, method: str) -> int:
    recover_dir(directory)
    if not (directory / _STATE).is_file():
        raise SparsenetsError(f"no fine-tuning checkpoint in {str(directory)!r} to resume from")
    state = load_torch(directory / _STATE)
    if state.get("method") != method:
        raise SparsenetsError(f"the checkpoint in {str(directory)!r} was made with method {state.get('method')!r}, "
                              f"not {method!r}")
    weights = load_tensors(directory / _WEIGHTS)
    if set(weights) != set(params):
        raise SparsenetsError(f"the checkpoint in {str(directory)!r} holds other parameters than this model trains")
    with torch.no_grad():
        for name, p in params.items():
            if weights[name].shape != p.shape:
                raise SparsenetsError(f"checkpoint weight {name!r} has shape {tuple(weights[name].shape)}, "
                                      f"the model's is {tuple(p.shape)}")
            p.copy_(weights[name].to(p.device))
    if sparsifier is not None:
        sparsifier.load_state_dict(state["sparsifier"])
    optimizer.load_state_dict(state["optimizer"])
    result.losses = [(int(s), float(v)) for s, v in state["losses"]]
    result.evals = [(int(s), float(v)) for s, v in state["evals"]]
    result.seconds = float(state["seconds"])
    result.eval_seconds = float(state["eval_seconds"])
    result.method_state_bytes = int(state["method_state_bytes"])
    result.steps = int(state["step"])
    return result.steps
