"""Which mask to train: pruning at initialization vs lottery tickets vs DST on Fashion-MNIST.

For each model (the LeNet-300-100 MLP; the small CNN with ``--models mlp cnn``) and sparsity
(80, 90, 95, 98%): test accuracy after the same training of

* random masks with uniform and ERK ratios, SNIP, GraSP and SynFlow (``sparsity.init``, trained
  with a fixed mask), RigL (dynamic, random ERK start);
* IMP with rewinding to step ``--rewind-step`` (global magnitude and LAMP), pruning 20% of the
  survivors per round: its tickets at the rounds nearest each sparsity (0.8^r: rounds 7, 10, 13,
  18 = 79.0, 89.3, 94.5, 98.2%), each round ``--round-epochs`` epochs (short rounds: 18 rounds to
  98% would otherwise dominate the run);
* Lottery Pools around those tickets (global IMP), chosen on the validation split;
* the dense network.

Every run trains on the same training examples: ``--validation-size`` are held out (the
validation split of Lottery Pools), the test set is only for the reported accuracy. Prints a
table, writes JSON and a PNG (accuracy vs sparsity per model).

    .venv/bin/python benchmarks/pruning.py                              # MLP, 10 epochs, 3 per round
    .venv/bin/python benchmarks/pruning.py --models mlp cnn --epochs 5 --round-epochs 2
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from sparsenets.config import build_config
from sparsenets.io import load_tensors
from sparsenets.lottery_pools import lottery_pool
from sparsenets.rng import Stream, generator
from sparsenets.training import Trainer, run_training

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
SPARSITIES = (0.8, 0.9, 0.95, 0.98)
INITS = {"random-uniform": ("random", "uniform"), "random-erk": ("random", "erk"), "snip": ("snip", None),
         "grasp": ("grasp", None), "synflow": ("synflow", None)}
MODELS = {"mlp": {"model": "mlp", "hidden": [300, 100]}, "cnn": {"model": "cnn", "channels": [32, 64], "hidden": [128]}}


def recipe(model: str, args: argparse.Namespace, epochs: int, sparsity: dict) -> dict:
    return {
        "name": f"pruning-{model}", "dataset": "fashion_mnist", **MODELS[model], "epochs": epochs,
        "batch_size": 128, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4,
        "lr_schedule": "cosine", "seed": args.seed, "device": "cpu", "loggers": [],
        "validation_size": args.validation_size, "sparsity": sparsity,
    }


def run_or_reuse(config, run_dir: Path, args: argparse.Namespace) -> dict:
    """Train ``config`` in ``run_dir``; with ``--reuse``, a finished run of the same config is read
    back instead (to complete an interrupted benchmark)."""
    summary_path = run_dir / "summary.json"
    if args.reuse and summary_path.is_file() and (run_dir / "config.yaml").read_text() == config.to_yaml():
        return json.loads(summary_path.read_text())
    return run_training(config, run_dir, overwrite=True, progress=False)


def one_shot(model: str, name: str, sparsity: float, args: argparse.Namespace) -> dict:
    density = round(1 - sparsity, 6)
    if name == "dense":
        spec = {"method": "dense"}
    elif name == "rigl":
        spec = {"method": "rigl", "density": density, "update_every": 100}
    else:
        init, allocation = INITS[name]
        spec = {"method": "static", "density": density, "init": init,
                **({"init_allocation": allocation} if allocation else {})}
    config = build_config(recipe(model, args, args.epochs, spec))
    summary = run_or_reuse(config, Path(args.out_dir) / f"{model}-{name}-{sparsity}", args)
    return {"model": model, "method": name, "sparsity": sparsity if name != "dense" else 0.0,
            "test_accuracy": summary["test_accuracy"], "density": summary["density"],
            "seconds": summary["train_seconds"]}


def lottery(model: str, allocation: str, args: argparse.Namespace) -> tuple[list[dict], Path, dict]:
    spec = {"method": "static", "density": round(0.8**18, 6)}
    config = build_config({**recipe(model, args, args.round_epochs, spec),
                           "lottery": {"prune_fraction": 0.2, "rewind_step": args.rewind_step, "allocation": allocation}})
    run_dir = Path(args.out_dir) / f"{model}-imp-{allocation}"
    summary = run_or_reuse(config, run_dir, args)
    return summary["lottery"]["rounds"], run_dir, config


def nearest_round(rounds: list[dict], sparsity: float) -> dict:
    return min(rounds, key=lambda r: abs((1 - r["density"]) - sparsity))


def pools(model: str, rounds: list[dict], run_dir: Path, config, args: argparse.Namespace) -> list[dict]:
    """Lottery Pools around the ticket nearest each sparsity (validation split for the choice)."""
    trainer = Trainer.build(config, masks=None)
    names = list(trainer.sparsifier.masks)
    tickets = [load_tensors(run_dir / "tickets" / f"round_{r['round']:02d}" / "model.safetensors") for r in rounds]

    def validate(weights):
        trainer.model.load_state_dict(weights)
        return trainer.evaluate("validation")["validation_accuracy"]

    rows = []
    for sparsity in args.sparsities:
        target = nearest_round(rounds, sparsity)
        weights, masks, steps = lottery_pool(tickets, target["round"], names, target["density"], validate,
                                             generator=generator(args.seed, target["round"], Stream.IMP_TIES),
                                             max_candidates=args.pool_candidates)
        trainer.model.load_state_dict(weights)
        rows.append({"model": model, "method": "lottery-pools", "sparsity": round(1 - target["density"], 4),
                     "test_accuracy": trainer.evaluate()["test_accuracy"], "density": target["density"],
                     "round": target["round"], "taken": [s["round"] for s in steps[1:] if s["taken"]]})
    return rows


def format_table(rows: list[dict], markdown: bool = False) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "dense"))
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        dense = [r for r in rows if r["model"] == model and r["method"] == "dense"]
        header = [f"{model}: method"] + [f"{100 * s:g}%" for s in SPARSITIES]
        body = []
        for method in methods:
            cells = []
            for s in SPARSITIES:
                found = [r for r in rows if r["model"] == model and r["method"] == method
                         and abs(r.get("target", r["sparsity"]) - s) < 1e-9]
                cells.append(f"{found[0]['test_accuracy']:.4f}" if found else "-")
                if found and abs(found[0]["sparsity"] - s) > 1e-3:
                    cells[-1] += f" ({100 * found[0]['sparsity']:.1f}%)"
            body.append([method, *cells])
        if dense:
            body.append(["dense", f"{dense[0]['test_accuracy']:.4f}", "", "", ""])
        if markdown:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in body] + [""]
        else:
            widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            lines += [fmt.format(*header)] + [fmt.format(*row) for row in body] + [""]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    from sparsenets.plots import _pyplot

    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == model and r["method"] != "dense"):
            points = sorted((r["sparsity"], r["test_accuracy"]) for r in rows if r["model"] == model and r["method"] == method)
            ax.plot([100 * s for s, _ in points], [a for _, a in points], marker="o", label=method)
        for r in rows:
            if r["model"] == model and r["method"] == "dense":
                ax.axhline(r["test_accuracy"], color="black", linestyle=":", label="dense")
        ax.set(title=f"Fashion-MNIST {model}", xlabel="sparsity (%)", ylabel="test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp"], choices=list(MODELS))
    parser.add_argument("--methods", nargs="+", default=["dense", *INITS, "rigl", "imp-global", "imp-lamp", "lottery-pools"])
    parser.add_argument("--sparsities", nargs="+", type=float, default=list(SPARSITIES))
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every one-shot run")
    parser.add_argument("--round-epochs", type=int, default=3, help="epochs of every IMP round")
    parser.add_argument("--rewind-step", type=int, default=200)
    parser.add_argument("--validation-size", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", default=str(OUT / "pruning"))
    parser.add_argument("--json", default=str(OUT / "pruning.json"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "img" / "pruning.png"))
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="read back finished runs of the same config")
    parser.add_argument("--pool-candidates", type=int, default=None,
                        help="Lottery Pools: only the N rounds nearest the target (default: all)")
    args = parser.parse_args(argv)
    rows: list[dict] = []
    started = time.perf_counter()
    for model in args.models:
        for method in args.methods:
            if method in ("imp-global", "imp-lamp"):
                allocation = method.removeprefix("imp-")
                rounds, run_dir, config = lottery(model, allocation, args)
                for s in args.sparsities:
                    r = nearest_round(rounds, s)
                    rows.append({"model": model, "method": method, "target": s, "sparsity": round(1 - r["density"], 4),
                                 "test_accuracy": r["test_accuracy"], "density": r["density"], "round": r["round"]})
                if "lottery-pools" in args.methods and allocation == "global":
                    rows += [{**row, "target": s} for row, s in zip(pools(model, rounds, run_dir, config, args), args.sparsities)]
            elif method != "lottery-pools":
                for s in [0.0] if method == "dense" else args.sparsities:
                    rows.append(one_shot(model, method, s, args))
            print(f"done {model} {method} ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    result = {"benchmark": "pruning", "args": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "total_seconds": time.perf_counter() - started,
              "rows": rows}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows, markdown=args.markdown))
    print(f"JSON {args.json}, plot {plot(rows, Path(args.png))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
