"""The training tool behind ``sparsenets train``: a run directory with metrics, checkpoint, plots.

Run directory layout::

    config.yaml        the resolved recipe
    metrics.jsonl      one JSON record per epoch
    steps.csv          one row per optimizer step (loss, lr, density, ITOP rate, churn, ...);
                       ``tensorboard/`` too with ``loggers: [csv, tensorboard]`` (see loggers.py)
    summary.json       final test accuracy, per-layer density, ITOP rate, FLOPs, wall time
    checkpoint/        model.safetensors, masks.safetensors, state.pt (optimizer, LR schedule,
                       sparsifier, RNG, epoch); ``--resume`` continues from it exactly
    accuracy.png, layer_density.png, itop.png

Every random choice derives from the recipe's seed (model init, per-epoch shuffling, topology
updates), so a resumed run produces exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import TrainConfig, build_config, read_yaml
from .data import Dataset, batches, load_dataset
from .data.base import hold_out
from .distributed import (
    World,
    all_reduce_sum,
    barrier,
    check_masks_agree,
    init_from_env,
    launched_by_torchrun,
    shard,
)
from .dst import DynamicSparsity
from .errors import SparsenetsError
from .finite import first_nonfinite
from .io import (
    check_output_dir,
    json_text,
    load_tensors,
    load_torch,
    recover_dir,
    replace_dir,
    save_tensors,
    save_torch,
    write_json,
    write_text,
)
from .loggers import LOGGERS, StepRecorder, check_loggers, make_loggers
from .models import build_model
from .plots import plot_accuracy, plot_itop, plot_layer_density
from .report import report
from .rng import Stream, generator
from .sparse import save_sparse, sparse_layers

log = logging.getLogger(__name__)

EVAL_BATCH = 1000


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; otherwise the named device (validated)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SparsenetsError(f"unknown device {name!r} (valid: auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SparsenetsError(f"device {name!r} requested but CUDA is not available (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SparsenetsError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} CUDA devices")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise SparsenetsError(f"device {name!r} requested but Apple's MPS is not available here (use auto or cpu)")
    if device.type not in ("cpu", "cuda", "mps"):
        raise SparsenetsError(f"device {name!r} is not supported (valid: auto, cpu, cuda, cuda:N, mps)")
    return device


@dataclass
class Trainer:
    """Everything a run holds: built deterministically from a config."""

    config: TrainConfig
    device: torch.device
    data: Dataset
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    sparsifier: DynamicSparsity | None
    steps_per_epoch: int
    #: ``(x_val, y_val)`` held out of the training set (``validation_size``), or None
    validation: tuple[torch.Tensor, torch.Tensor] | None = None
    #: this process's rank among the data-parallel ranks (one process: the default world)
    world: World = World()
    #: what the training forward pass runs: the model, or its DistributedDataParallel wrapper
    train_model: nn.Module | None = None
    #: topology updates whose masks were compared across ranks (``check_masks``)
    mask_checks: int = 0

    @classmethod
    def build(
        cls,
        config: TrainConfig,
        backends: dict[str, str] | None = None,
        masks: Mapping[str, torch.Tensor] | None = None,
        *,
        init_masks: bool = True,
    ) -> Trainer:
        """Build everything from ``config``; ``backends`` (``{layer: "masked"|"sparse"}``, from
        a checkpoint) overrides ``config.backend`` so a resumed ``auto`` run keeps its layout;
        ``masks`` (``{layer: bool}``) replaces the initial masks (and fixes the density);
        ``init_masks=False`` skips ``sparsity.init`` (a resumed run loads its masks instead)."""
        device = resolve_device(config.device)
        world = init_from_env(device)
        if world.active and device.type == "cuda":  # one GPU per rank
            device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(device)
        if config.threads:
            torch.set_num_threads(config.threads)
        data = load_dataset(config.dataset, data_dir=config.data_dir)
        validation = None
        if config.validation_size:
            data, validation = hold_out(data, config.validation_size, generator(config.seed, Stream.VALIDATION_SPLIT))
        torch.manual_seed(config.seed)
        model = build_model(config.model, data.input_shape, data.num_classes, **config.model_options())
        model.to(device)
        optimizer = make_optimizer(config, model)
        steps_per_epoch = math.ceil(len(data.y_train) / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        scheduler = make_scheduler(config, optimizer, total_steps)
        sparsifier = None
        spec = config.sparsity
        if spec.init is not None and masks is None and init_masks:
            masks = initial_masks(config, model, data)
        if spec.method != "dense":
            sparsifier = DynamicSparsity(
                model,
                optimizer,
                density=spec.density if masks is None else None,
                masks=masks,
                total_steps=total_steps,
                method=spec.method,
                distribution=spec.distribution,
                seed=config.seed,
                include=spec.include,
                exclude=spec.exclude,
                dense_first=spec.dense_first,
                dense_last=spec.dense_last,
                backend=backends if backends is not None else config.backend,
                auto_batch_size=config.batch_size,
                **spec.options,
            )
        train_model = model
        if world.active:  # after the sparsifier: it holds the unwrapped module's parameters
            from torch.nn.parallel import DistributedDataParallel

            train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return cls(config, device, data, model, optimizer, scheduler, sparsifier, steps_per_epoch, validation,
                   world, train_model)

    def epoch_batches(self, epoch: int, first_step: int | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(global step, x, y)`` of epoch ``epoch`` in its order derived from (seed, epoch),
        from ``first_step`` on (earlier steps of the epoch are skipped, the order is kept).

        Global steps count from 1: epoch ``e`` holds steps ``(e-1)·steps_per_epoch + 1`` on.
        """
        x = self.data.x_train.to(self.device)
        y = self.data.y_train.to(self.device)
        order = generator(self.config.seed, epoch, Stream.DATA_ORDER)
        start = (epoch - 1) * self.steps_per_epoch + 1
        for step, (xb, yb) in enumerate(batches(x, y, self.config.batch_size, shuffle=True, generator=order), start=start):
            if first_step is None or step >= first_step:
                yield step, xb, yb

    def train_epoch(
        self,
        epoch: int,
        progress: bool,
        steps: StepRecorder | None = None,
        *,
        first_step: int | None = None,
        last_step: int | None = None,
        totals: dict[str, float] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
    ) -> dict[str, float]:
        """One pass over the training set in an order derived from (seed, epoch); ``steps``
        records every optimizer step. ``first_step`` / ``last_step`` (global, inclusive) train
        only part of the epoch, in the same order (rewinding and resuming start mid-epoch).

        ``totals`` (``{"loss", "correct", "seen", "skipped"}``: the sums of the part of the epoch
        already trained, from a mid-epoch checkpoint) continue the epoch's metrics;
        ``on_step(step, totals)`` is called after every optimizer step (step checkpoints)."""
        cfg, model = self.config, self.model
        model.train()
        totals = dict(totals) if totals else {}
        total_loss, correct = float(totals.get("loss", 0.0)), int(totals.get("correct", 0))
        seen, skipped = int(totals.get("seen", 0)), int(totals.get("skipped", 0))
        bar = tqdm(
            self.epoch_batches(epoch, first_step),
            total=self.steps_per_epoch,
            desc=f"epoch {epoch}/{cfg.epochs}",
            leave=False,
            disable=None if progress else True,  # None: off when stderr is not a terminal
        )
        for step, xb, yb in bar:
            if last_step is not None and step > last_step:
                break
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            self.optimizer.zero_grad(set_to_none=True)
            if self.world.active:  # this rank's shard; DDP averages the gradients over ranks
                n = len(yb)
                xb, yb = xb[shard(n, self.world)], yb[shard(n, self.world)]
                logits = self.train_model(xb)
                loss_sum = nn.functional.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing,
                                                       reduction="sum")
                (loss_sum * (self.world.size / n)).backward()  # averaged over ranks: the global mean
                loss = all_reduce_sum(loss_sum.detach().reshape(1))[0] / n
            else:
                logits = model(xb)
                loss = nn.functional.cross_entropy(logits, yb, label_smoothing=cfg.label_smoothing)
                loss.backward()
            bad = first_nonfinite(loss, model)
            if bad is not None and cfg.nonfinite == "error":
                raise SparsenetsError(
                    f"non-finite {bad} at step {step} (epoch {epoch}); the run stops and its last "
                    f"checkpoint is kept (lower lr, or --set nonfinite=skip to skip such steps)"
                )
            if bad is not None:  # skipped: no update, for the optimizer nor the sparsity
                skipped += 1
                self.optimizer.zero_grad(set_to_none=True)
            elif self.sparsifier is not None:
                updates = len(self.sparsifier.history)
                self.sparsifier.step()
                if cfg.check_masks and self.world.active and len(self.sparsifier.history) > updates:
                    check_masks_agree(self.sparsifier.masks, step, self.world)
                    self.mask_checks += 1
            else:
                self.optimizer.step()
            if bad is None and (broken := first_nonfinite(None, model, grads=False)) is not None:
                raise SparsenetsError(
                    f"non-finite {broken} after the optimizer step {step} (epoch {epoch}); "
                    f"the run stops and its last checkpoint is kept (lower lr)"
                )
            self.scheduler.step()
            step_loss = loss.item()
            if steps is not None:
                steps.record(step=step, epoch=epoch, loss=step_loss, lr=lr)
            counts = torch.tensor([int((logits.argmax(1) == yb).sum()), len(yb)])
            step_correct, step_seen = (int(c) for c in all_reduce_sum(counts, self.world))
            total_loss += step_loss * step_seen
            correct += step_correct
            seen += step_seen
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
            if on_step is not None:
                on_step(step, {"loss": total_loss, "correct": correct, "seen": seen, "skipped": skipped})
        bar.close()
        if not seen:
            return {"train_loss": float("nan"), "train_accuracy": float("nan"), "skipped_steps": 0}
        return {"train_loss": total_loss / seen, "train_accuracy": correct / seen, "skipped_steps": skipped}

    def advance_schedule(self, steps: int) -> None:
        """Put the learning-rate schedule where it is after ``steps`` optimizer steps."""
        with warnings.catch_warnings():  # stepping a scheduler without optimizer steps warns
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(steps):
                self.scheduler.step()

    @torch.no_grad()
    def evaluate(self, split: str = "test") -> dict[str, float]:
        """Loss and accuracy on the test set (``split="validation"``: the held-out split)."""
        if split == "validation":
            if self.validation is None:
                raise SparsenetsError("no validation split: set validation_size in the recipe")
            x, y = self.validation
        else:
            x, y = self.data.x_test, self.data.y_test
        self.model.eval()
        total_loss, correct = 0.0, 0
        for start in range(0, len(y), EVAL_BATCH):
            xb = x[start : start + EVAL_BATCH].to(self.device)
            yb = y[start : start + EVAL_BATCH].to(self.device)
            logits = self.model(xb)
            total_loss += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
            correct += int((logits.argmax(1) == yb).sum())
        return {f"{split}_loss": total_loss / len(y), f"{split}_accuracy": correct / len(y)}

    # -- checkpoint --------------------------------------------------------------------------
    def save_checkpoint(self, path: Path, state: dict[str, Any]) -> None:
        """Write the checkpoint directory atomically (a crash leaves the previous one intact)."""

        def fill(tmp: Path) -> None:
            if sparse_layers(self.model):  # CSR parts plus metadata: load_sparse reads it
                save_sparse(self.model, tmp / "model.safetensors")
            else:
                save_tensors(tmp / "model.safetensors", self.model.state_dict())
            extra: dict[str, Any] = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
                **state,
            }
            if self.sparsifier is not None:
                sparse_state = self.sparsifier.state_dict()
                save_tensors(tmp / "masks.safetensors", sparse_state.pop("masks"))
                extra["sparsifier"] = sparse_state
            save_torch(tmp / "state.pt", extra)

        replace_dir(path, fill)

    def load_checkpoint(self, path: Path) -> dict[str, Any]:
        """Restore model, optimizer, schedule, sparsifier and RNG; returns the run state."""
        if not (path / "state.pt").is_file():
            raise SparsenetsError(f"no checkpoint in {str(path)!r} (expected {path / 'state.pt'})")
        self.model.load_state_dict(load_tensors(path / "model.safetensors", self.device))
        extra = load_torch(path / "state.pt", self.device)
        self.optimizer.load_state_dict(extra.pop("optimizer"))
        self.scheduler.load_state_dict(extra.pop("scheduler"))
        torch.set_rng_state(extra.pop("torch_rng").cpu())
        cuda_rng = extra.pop("cuda_rng", None)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng.cpu(), self.device)
        if self.sparsifier is not None:
            sparse_state = extra.pop("sparsifier")
            sparse_state["masks"] = load_tensors(path / "masks.safetensors", self.device)
            self.sparsifier.load_state_dict(sparse_state)
        return extra


def initial_masks(config: TrainConfig, model: nn.Module, data: Dataset) -> Mapping[str, torch.Tensor]:
    """The masks of ``sparsity.init``: pruning at initialization of the freshly built model.

    Data-driven methods (SNIP, GraSP) read the training set in an order of its own (derived from
    the seed, apart from every epoch's order).
    """
    from .prune import prune_at_init

    spec = config.sparsity
    allocation = spec.init_allocation or (spec.distribution if spec.init == "random" else "global")
    device = next(model.parameters()).device
    order = generator(config.seed, 0, Stream.DATA_ORDER)  # epoch 0: never a training epoch
    loader = ((xb.to(device), yb.to(device))
              for xb, yb in batches(data.x_train, data.y_train, config.batch_size, shuffle=True, generator=order))
    return prune_at_init(
        model, spec.init, spec.density, loader, allocation=allocation, include=spec.include,
        exclude=spec.exclude, dense_first=spec.dense_first, dense_last=spec.dense_last, seed=config.seed,
    )


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (with momentum, Nesterov off), Adam or AdamW from the config."""
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer, total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step learning-rate schedule: cosine decay to 0 over the run, or constant."""
    if config.lr_schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse to mix a new run into a non-empty directory unless ``overwrite``, and a path that
    cannot become a directory (a file, or under a file or an unwritable directory)."""
    check_output_dir(run_dir, overwrite, "run directory", not_empty_hint=f"use --overwrite, or --resume {run_dir}")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run directory, clearing an earlier run's files when ``overwrite``."""
    check_run_dir(run_dir, overwrite)
    if run_dir.exists():
        for name in ("metrics.jsonl", "summary.json", "config.yaml", LOGGERS["csv"]):
            (run_dir / name).unlink(missing_ok=True)
        for name in ("checkpoint", LOGGERS["tensorboard"]):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def run_training(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_epochs: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train ``config`` in ``run_dir`` and return the summary dict.

    Args:
        resume: continue from ``run_dir/checkpoint`` (the config must be the run's own).
        overwrite: reuse a non-empty run directory for a fresh run.
        stop_after_epochs: stop (with a checkpoint) after this many epochs in this call, as an
            interruption would; a later ``resume=True`` call finishes the run.
        progress: show a progress bar per epoch.
    """
    if config.lottery is not None:  # iterative magnitude pruning: rounds of this training
        from .lottery import run_lottery

        if stop_after_epochs is not None:
            raise SparsenetsError("stop_after_epochs is not available for lottery runs (they resume per round)")
        if launched_by_torchrun():
            raise SparsenetsError("lottery (iterative magnitude pruning) runs in one process; drop --nproc / torchrun")
        return run_lottery(config, run_dir, resume=resume, overwrite=overwrite, progress=progress)
    run_dir = Path(run_dir)
    # Under torchrun every rank joins here, before anything is read or written; every rank runs
    # the same checks (so they fail together), and only rank 0 writes.
    world = init_from_env(resolve_device(config.device))
    if not resume:
        check_run_dir(run_dir, overwrite)
    if resume:
        check_resume_changes(resume_config(run_dir), config)
    barrier(world)
    if resume and world.is_main and recover_dir(run_dir / "checkpoint"):
        log.warning("restored the previous checkpoint of %s (a checkpoint swap was interrupted)", run_dir)
    barrier(world)
    # A resumed run keeps the per-layer layout of its checkpoint (``auto`` is not re-measured).
    backends = None
    if resume:
        info = checkpoint_info(run_dir / "checkpoint")
        if info["world_size"] != world.size:
            raise SparsenetsError(
                f"--resume cannot change the number of processes ({info['world_size']} -> {world.size}): "
                f"the run's batches are split by rank; resume with --nproc {info['world_size']}"
            )
        backends = info["backends"] if config.sparsity.method != "dense" else None
    # Building validates data, device and sparsity before anything is written.
    trainer = Trainer.build(config, backends, init_masks=not resume)  # resuming loads the masks
    check_loggers(config.loggers)
    if world.is_main:
        if not resume:
            prepare_run_dir(run_dir, overwrite)
        write_text(run_dir / "config.yaml", config.to_yaml())
    state: dict[str, Any] = {"epoch": 0, "epochs": [], "train_seconds": 0.0, "wall_seconds": 0.0,
                             "world_size": world.size, "mask_checks": 0}
    if resume:
        state = trainer.load_checkpoint(run_dir / "checkpoint")
        trainer.mask_checks = int(state.get("mask_checks", 0))
        log.info("resuming %s from epoch %d", run_dir, state["epoch"])
    resume_step = None
    if resume:
        partial = state.get("partial")
        resume_step = partial["step"] if partial else state["epoch"] * trainer.steps_per_epoch
    loggers = make_loggers(config.loggers, run_dir, resume_step=resume_step) if world.is_main else []
    with StepRecorder(loggers, trainer.sparsifier) as steps:
        _train_epochs(trainer, state, run_dir, steps, stop_after_epochs, progress and world.is_main)
    if state["epoch"] < config.epochs:
        return {"finished": False, "epoch": state["epoch"], "run_dir": str(run_dir)}
    if not world.is_main:
        barrier(world)  # rank 0 writes the summary
        return {"finished": True, "rank": world.rank, "run_dir": str(run_dir)}
    summary = make_summary(trainer, state, run_dir)
    write_json(run_dir / "summary.json", summary)
    barrier(world)
    return summary


def _train_epochs(
    trainer: Trainer,
    state: dict[str, Any],
    run_dir: Path,
    steps: StepRecorder,
    stop_after_epochs: int | None,
    progress: bool,
) -> None:
    """Train, evaluate and checkpoint epoch after epoch from ``state`` (updated in place).

    With ``checkpoint_every: N`` a checkpoint is also written after every N-th optimizer step
    inside an epoch; ``state["partial"]`` then holds the step reached and the epoch's running
    sums, and a resume continues mid-epoch from there."""
    config = trainer.config
    epochs_this_call = 0
    while state["epoch"] < config.epochs:
        if stop_after_epochs is not None and epochs_this_call >= stop_after_epochs:
            break
        epoch = state["epoch"] + 1
        partial = state.get("partial")
        first = partial["step"] + 1 if partial else None
        t0 = time.perf_counter()
        train_before = state["train_seconds"]

        def checkpoint_step(step: int, totals: dict[str, float], epoch: int = epoch, t0: float = t0,
                            train_before: float = train_before) -> None:
            every = config.checkpoint_every
            if not every or step % every or step % trainer.steps_per_epoch == 0:  # epoch ends: below
                return
            state["train_seconds"] = train_before + time.perf_counter() - t0
            state["partial"] = {"step": step, "epoch": epoch, **totals}
            _write_checkpoint(trainer, state, run_dir, steps)

        record: dict[str, Any] = {"epoch": epoch, **trainer.train_epoch(
            epoch, progress, steps, first_step=first, totals=partial, on_step=checkpoint_step)}
        state["train_seconds"] = train_before + time.perf_counter() - t0
        state.pop("partial", None)
        record.update(trainer.evaluate())
        record["lr"] = trainer.optimizer.param_groups[0]["lr"]
        if trainer.sparsifier is not None:
            record["density"] = trainer.sparsifier.masks.density()
            record["itop_rate"] = trainer.sparsifier.masks.itop_rate()
        record["train_seconds"] = state["train_seconds"]
        state["epoch"] = epoch
        state["epochs"] = [*state["epochs"], record]
        state["wall_seconds"] += time.perf_counter() - t0
        _write_checkpoint(trainer, state, run_dir, steps)
        if trainer.world.is_main:
            write_text(run_dir / "metrics.jsonl", "".join(_json_line(r) for r in state["epochs"]))
        epochs_this_call += 1
        log.info(
            "epoch %d/%d  loss %.4f  train acc %.4f  test acc %.4f",
            epoch, config.epochs, record["train_loss"], record["train_accuracy"], record["test_accuracy"],
        )


def _write_checkpoint(trainer: Trainer, state: dict[str, Any], run_dir: Path, steps: StepRecorder) -> None:
    """Rank 0 writes the checkpoint of ``state`` (after every logged step is on disk)."""
    state["mask_checks"] = trainer.mask_checks
    if trainer.world.is_main:
        steps.flush()  # every step up to the checkpoint is on disk before it is
        trainer.save_checkpoint(run_dir / "checkpoint", state)


def checkpoint_info(path: Path) -> dict[str, Any]:
    """What a resume needs to know before building: ``{"backends": {layer: backend} | None,
    "world_size": processes the run trained with}``."""
    if not (path / "state.pt").is_file():
        raise SparsenetsError(f"no checkpoint in {str(path)!r} (expected {path / 'state.pt'})")
    state = load_torch(path / "state.pt")
    backends = (state.get("sparsifier") or {}).get("backends")
    return {"backends": dict(backends) if backends else None, "world_size": int(state.get("world_size", 1))}


def _json_line(record: dict[str, Any]) -> str:
    return json_text(record) + "\n"


def make_summary(trainer: Trainer, state: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """Final numbers of a finished run, and its plots."""
    config, sparsifier = trainer.config, trainer.sparsifier
    example = trainer.data.x_test[:1].to(trainer.device)
    rep = report(trainer.model, sparsifier, example_input=example)
    last = state["epochs"][-1]
    topology_seconds = sparsifier.update_seconds if sparsifier is not None else 0.0
    rep_dict = rep.to_dict()
    plots = {
        "accuracy": str(plot_accuracy(state["epochs"], run_dir / "accuracy.png", config.name)),
        "layer_density": str(plot_layer_density(rep_dict["layers"], run_dir / "layer_density.png", config.name)),
    }
    if sparsifier is not None:
        plots["itop"] = str(
            plot_itop(sparsifier.history, sparsifier.initial_density(), run_dir / "itop.png", config.name)
        )
    return {
        "name": config.name,
        "method": config.sparsity.method,
        "target_density": config.sparsity.density if sparsifier is not None else 1.0,
        "dataset": config.dataset,
        "model": config.model,
        "epochs": state["epoch"],
        "test_accuracy": last["test_accuracy"],
        "best_test_accuracy": max(e["test_accuracy"] for e in state["epochs"]),
        "train_accuracy": last["train_accuracy"],
        "density": rep_dict["totals"]["density"],
        "itop_rate": rep_dict["totals"].get("itop_rate"),
        "flops_dense": rep_dict["totals"]["flops_dense"],
        "flops_sparse": rep_dict["totals"]["flops_sparse"],
        "train_seconds": state["train_seconds"],
        "wall_seconds": state["wall_seconds"],
        "topology_seconds": topology_seconds,
        "topology_overhead": topology_seconds / state["train_seconds"] if state["train_seconds"] else 0.0,
        "topology_updates": len(sparsifier.history) if sparsifier is not None else 0,
        "skipped_steps": sum(int(e.get("skipped_steps", 0)) for e in state["epochs"]),
        "world_size": trainer.world.size,
        # a difference stops the run, so a finished run's checked updates all agreed
        "mask_check": {"enabled": config.check_masks, "updates_checked": trainer.mask_checks}
        if trainer.world.active else None,
        "backend": config.backend,
        "backends": dict(sparsifier.backends) if sparsifier is not None else {},
        "device": str(trainer.device),
        "report": rep_dict,
        "plots": plots,
        "step_logs": {name: LOGGERS[name] for name in config.loggers},
    }


#: recipe keys a resumed run may change: where it runs and what it logs, not what it computes.
RESUMABLE_CHANGES = frozenset(
    {"device", "threads", "loggers", "data_dir", "nonfinite", "check_masks", "checkpoint_every"}
)


def _flat(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out |= _flat(value, f"{prefix}{key}.")
        return out
    return {prefix.rstrip("."): data}


def check_resume_changes(original: TrainConfig, new: TrainConfig) -> None:
    """Refuse a resume whose config changes what the run computes (method, density, schedule,
    seed, data, model, backend, …), naming the first such key; only :data:`RESUMABLE_CHANGES`
    may differ. Called before anything is written."""
    before, after = _flat(original.model_dump(mode="json")), _flat(new.model_dump(mode="json"))
    for key in sorted(set(before) | set(after)):
        if key.split(".")[0] in RESUMABLE_CHANGES or before.get(key) == after.get(key):
            continue
        raise SparsenetsError(
            f"--resume cannot change {key!r} ({before.get(key)!r} -> {after.get(key)!r}): it changes "
            f"what the run computes; start a new run instead (resumable changes: "
            f"{', '.join(sorted(RESUMABLE_CHANGES))})"
        )


def resume_config(run_dir: str | Path) -> TrainConfig:
    """The config a run directory was started with."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise SparsenetsError(f"{str(run_dir)!r} is not a run directory (no config.yaml)")
    return build_config(read_yaml(path))
