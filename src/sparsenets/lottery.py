"""Lottery tickets: iterative magnitude pruning (IMP) with rewinding.

Frankle & Carbin (2019) find sparse trainable subnetworks by rounds of train → prune the
smallest surviving weights → reset the survivors to their initial values → train again; Frankle
et al. (2020) rewind to the values at an early step k instead of the initialization. A round here:

1. train the masked network for the recipe's ``epochs`` (round 0: dense), steps k+1 … T;
2. save the ticket (trained weights, mask, test accuracy, measured density);
3. prune ``ceil(p · remaining)`` surviving weights by |w| (``global``: one threshold across
   layers; ``lamp``: LAMP scores across layers; ``layer``: the same fraction of every layer),
   never below the target ``sparsity.density``, so successive masks are nested;
4. rewind: every surviving weight to θ_k (θ_0 for k = 0), a fresh optimizer, the learning-rate
   schedule and the data order of step k — as open_lth does — and go to 1.

Run directory::

    rewind.safetensors    θ_k, the weights every round rewinds to
    tickets/round_NN/     model.safetensors (the trained ticket), masks.safetensors,
                          ticket.json (accuracy, density, ...), steps.csv (per-step log)
    lottery.json          one record per round; lottery.png accuracy vs sparsity
    summary.json          the rounds and the final ticket

``--resume`` continues after the last saved ticket.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .allocation import global_masks, lamp_counts
from .config import TrainConfig
from .errors import SparsenetsError
from .io import load_tensors, save_tensors, write_json, write_text
from .loggers import StepRecorder, make_loggers
from .lottery_pools import lottery_pool
from .plots import plot_lottery
from .rng import Stream
from .rng import generator as make_generator
from .select import select_topk
from .training import Trainer, prepare_run_dir

log = logging.getLogger(__name__)

Masks = dict[str, torch.Tensor]


def prune_round(
    weights: Mapping[str, torch.Tensor],
    masks: Mapping[str, torch.Tensor],
    fraction: float,
    allocation: str,
    target_density: float,
    generator: torch.Generator | None = None,
) -> Masks:
    """The next round's masks: ``ceil(fraction · remaining)`` survivors pruned by magnitude.

    Args:
        weights: ``{name: trained weight}`` of the masked layers.
        masks: ``{name: bool}`` the current masks (the new ones are subsets of them).
        fraction: p, the share of the surviving weights pruned (``layer``: of each layer's).
        allocation: ``"global"`` (|w| across layers), ``"lamp"`` (LAMP scores across layers) or
            ``"layer"`` (every layer on its own).
        target_density: the run's final density; no round goes below it (the last round
            prunes only what is left to prune).
        generator: tie-breaking.

    Returns:
        ``{name: bool mask}`` with ``new ⊆ old``.
    """
    total = sum(m.numel() for m in masks.values())
    if allocation == "layer":
        new = {}
        for name, mask in masks.items():
            nnz = int(mask.sum())
            keep = max(round(target_density * mask.numel()), nnz - math.ceil(fraction * nnz))
            new[name] = select_topk(weights[name].detach().abs(), min(keep, nnz), mask, generator=generator)
        return new
    nnz = sum(int(m.sum()) for m in masks.values())
    keep = max(round(target_density * total), nnz - math.ceil(fraction * nnz))
    magnitudes = {name: weights[name].detach().abs() for name in masks}
    if allocation == "global":
        return global_masks(magnitudes, keep / total, eligible=dict(masks), generator=generator)
    # LAMP ranks like |w| inside a layer: its per-layer counts, then each layer's top |w|
    counts = lamp_counts(magnitudes, keep / total, eligible=dict(masks), generator=generator)
    return {name: select_topk(magnitudes[name], counts[name], masks[name], generator=generator) for name in masks}


def _ties(config: TrainConfig, index: int) -> torch.Generator:
    """Tie-breaking of the pruning after round ``index``."""
    return make_generator(config.seed, index, Stream.IMP_TIES)


def _density(masks: Mapping[str, torch.Tensor]) -> float:
    return sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())


def _train_range(trainer: Trainer, first: int, last: int, steps: StepRecorder, progress: bool) -> dict[str, float]:
    """Train global steps ``first`` … ``last`` (inclusive), epoch after epoch, in the data order
    of those steps; the last epoch's train metrics."""
    record: dict[str, float] = {}
    per_epoch = trainer.steps_per_epoch
    for epoch in range((first - 1) // per_epoch + 1, (last - 1) // per_epoch + 2):
        record = trainer.train_epoch(epoch, progress, steps, first_step=first, last_step=last)
    return record


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}


def _round_dir(run_dir: Path, index: int) -> Path:
    return run_dir / "tickets" / f"round_{index:02d}"


def _save_ticket(run_dir: Path, index: int, trainer: Trainer, masks: Masks, record: dict[str, Any]) -> None:
    directory = _round_dir(run_dir, index)
    save_tensors(directory / "model.safetensors", trainer.model.state_dict())
    save_tensors(directory / "masks.safetensors", masks)
    write_json(directory / "ticket.json", record)  # last: its presence marks the ticket complete


def _rounds_done(run_dir: Path) -> list[dict[str, Any]]:
    rounds = []
    while (path := _round_dir(run_dir, len(rounds)) / "ticket.json").is_file():
        rounds.append(json.loads(path.read_text()))
    return rounds


def run_lottery(
    config: TrainConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Run IMP with rewinding from a recipe with a ``lottery:`` block (see the module docstring).

    Returns the summary (also written to ``summary.json``).
    """
    run_dir = Path(run_dir)
    lottery = config.lottery
    if lottery is None:
        raise SparsenetsError("run_lottery needs a recipe with a lottery: block")
    trainer = Trainer.build(config, init_masks=False)  # validates, and names the target layers
    names = list(trainer.sparsifier.masks)
    total_steps = trainer.steps_per_epoch * config.epochs
    k = lottery.rewind_step
    if k >= total_steps:
        raise SparsenetsError(f"lottery.rewind_step {k} is not inside a round of {total_steps} steps")
    rounds = _rounds_done(run_dir) if resume else []
    if not resume:
        prepare_run_dir(run_dir, overwrite)
    write_text(run_dir / "config.yaml", config.to_yaml())
    target = config.sparsity.density
    if rounds:
        last = _round_dir(run_dir, len(rounds) - 1)
        rewind = load_tensors(run_dir / "rewind.safetensors", trainer.device)
        masks = prune_round(load_tensors(last / "model.safetensors", trainer.device),
                            {n: m.bool() for n, m in load_tensors(last / "masks.safetensors", trainer.device).items()},
                            lottery.prune_fraction, lottery.allocation, target, _ties(config, len(rounds) - 1))
        log.info("resuming the lottery after round %d", len(rounds) - 1)
    else:
        masks = {name: torch.ones(shape, dtype=torch.bool, device=trainer.device)
                 for name, shape in trainer.sparsifier.masks.shapes.items()}
        rewind = None
    started = time.perf_counter()
    while not rounds or rounds[-1]["density"] > target + 1e-12:
        index = len(rounds)
        trainer = Trainer.build(config, masks=masks)
        with StepRecorder(make_loggers(config.loggers, _round_dir(run_dir, index)), trainer.sparsifier) as steps:
            if rewind is None:  # round 0: dense training; θ_k is taken on the way
                if k == 0:
                    rewind = _weights(trainer)
                else:
                    _train_range(trainer, 1, k, steps, progress)
                    rewind = _weights(trainer)
                save_tensors(run_dir / "rewind.safetensors", rewind)
            else:
                trainer.model.load_state_dict(rewind)
                trainer.sparsifier.masks.apply_(trainer.model)  # survivors at θ_k, the rest 0
                trainer.advance_schedule(k)
            train = _train_range(trainer, k + 1, total_steps, steps, progress)
        record = {
            "round": index,
            "density": _density(masks),
            "measured_density": sum(int((trainer.model.state_dict()[n] != 0).sum()) for n in names)
            / sum(masks[n].numel() for n in names),
            **train,
            **trainer.evaluate(),
            **(trainer.evaluate("validation") if trainer.validation is not None else {}),
        }
        _save_ticket(run_dir, index, trainer, masks, record)
        rounds.append(record)
        log.info("lottery round %d: density %.4f, test accuracy %.4f", index, record["density"],
                 record["test_accuracy"])
        if record["density"] > target + 1e-12:
            masks = prune_round(_weights(trainer), masks, lottery.prune_fraction, lottery.allocation, target,
                                _ties(config, index))
    write_json(run_dir / "lottery.json", rounds)
    pool = _pool(config, run_dir, trainer, rounds, names) if lottery.pools else None
    plot = plot_lottery(rounds, run_dir / "lottery.png", config.name, pool)
    summary = {
        "name": config.name,
        "method": "lottery",
        "dataset": config.dataset,
        "model": config.model,
        "lottery": {**lottery.model_dump(), "rounds": rounds},
        "test_accuracy": rounds[-1]["test_accuracy"],
        "density": rounds[-1]["density"],
        "rounds": len(rounds),
        "epochs_per_round": config.epochs,
        "wall_seconds": time.perf_counter() - started,
        "plots": {"lottery": str(plot.name)},
    }
    if pool is not None:
        summary["pool"] = pool
    write_json(run_dir / "summary.json", summary)
    return summary


def _pool(config: TrainConfig, run_dir: Path, trainer: Trainer, rounds: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Lottery Pools around the final ticket, chosen on the validation split; saved in ``pool/``."""
    tickets = [load_tensors(_round_dir(run_dir, r["round"]) / "model.safetensors", trainer.device) for r in rounds]

    def validate(weights: dict[str, torch.Tensor]) -> float:
        trainer.model.load_state_dict(weights)
        return trainer.evaluate("validation")["validation_accuracy"]

    target = len(rounds) - 1
    weights, masks, steps = lottery_pool(tickets, target, names, rounds[-1]["density"], validate,
                                         generator=make_generator(config.seed, target, Stream.IMP_TIES))
    trainer.model.load_state_dict(weights)
    record = {
        "target_round": target,
        "density": _density(masks),
        "steps": steps,
        **trainer.evaluate("validation"),
        **trainer.evaluate(),
        "ticket_test_accuracy": rounds[-1]["test_accuracy"],
    }
    save_tensors(run_dir / "pool" / "model.safetensors", weights)
    save_tensors(run_dir / "pool" / "masks.safetensors", masks)
    write_json(run_dir / "pool" / "pool.json", record)
    log.info("lottery pool: test accuracy %.4f (ticket %.4f), %d tickets taken", record["test_accuracy"],
             record["ticket_test_accuracy"], sum(s["taken"] for s in steps))
    return record


def format_lottery(summary: Mapping[str, Any]) -> str:
    """The end-of-run text of a lottery run: one line per round."""
    lines = [f"run        {summary['name']} (lottery, {summary['dataset']}, {summary['model']}): "
             f"{summary['rounds']} rounds of {summary['epochs_per_round']} epochs"]
    lines += [f"round {r['round']:2d}   density {r['density']:.4f}   test acc {r['test_accuracy']:.4f}"
              for r in summary["lottery"]["rounds"]]
    if "pool" in summary:
        pool = summary["pool"]
        taken = [s["round"] for s in pool["steps"][1:] if s["taken"]]
        lines.append(f"pool       density {pool['density']:.4f}   test acc {pool['test_accuracy']:.4f} "
                     f"(validation {pool['validation_accuracy']:.4f}; interpolated with rounds {taken or 'none'})")
    lines.append(f"plots      {summary['plots']['lottery']}")
    return "\n".join(lines)
