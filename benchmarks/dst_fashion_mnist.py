"""Dense vs every DST method on the Fashion-MNIST MLP (784-1024-512-10), same epochs and seed.

For each method and sparsity: test accuracy, final density, ITOP rate, wall time of training,
and the share of training time spent in topology updates. Prints a table and writes JSON.

    .venv/bin/python benchmarks/dst_fashion_mnist.py                  # full: 10 epochs
    .venv/bin/python benchmarks/dst_fashion_mnist.py --epochs 2 --methods dense rigl
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from sparsenets.config import load_recipe
from sparsenets.dst import METHODS
from sparsenets.training import run_training

ROOT = Path(__file__).resolve().parent.parent


def run_one(method: str, density: float, args: argparse.Namespace) -> dict:
    recipe = ROOT / "recipes" / f"fashion_mnist_mlp_{method}.yaml"
    overrides = [f"epochs={args.epochs}", f"seed={args.seed}", "device=cpu"]
    if method != "dense":
        overrides.append(f"sparsity.density={density}")
    config = load_recipe(recipe, overrides)
    run_dir = Path(args.out_dir) / f"{method}-{density}"
    summary = run_training(config, run_dir, overwrite=True, progress=False)
    return {
        "method": method,
        "sparsity": round(1 - density, 4) if method != "dense" else 0.0,
        "test_accuracy": summary["test_accuracy"],
        "best_test_accuracy": summary["best_test_accuracy"],
        "density": summary["density"],
        "itop_rate": summary["itop_rate"],
        "train_seconds": summary["train_seconds"],
        "topology_seconds": summary["topology_seconds"],
        "topology_overhead_pct": 100 * summary["topology_overhead"],
        "topology_updates": summary["topology_updates"],
        "flops_sparse_over_dense": summary["flops_sparse"] / summary["flops_dense"],
    }


def format_table(rows: list[dict], markdown: bool = False) -> str:
    header = ["method", "sparsity", "test acc", "density", "ITOP rate", "train s", "topology %"]
    body = [
        [
            r["method"],
            f"{r['sparsity']:.2f}",
            f"{r['test_accuracy']:.4f}",
            f"{r['density']:.4f}",
            "-" if r["itop_rate"] is None or r["method"] == "dense" else f"{r['itop_rate']:.3f}",
            f"{r['train_seconds']:.1f}",
            f"{r['topology_overhead_pct']:.2f}",
        ]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*row) for row in body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=["dense", *METHODS])
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.9, 0.98])
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "out" / "dst_fashion_mnist"))
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "dst_fashion_mnist.json"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    started = time.perf_counter()
    for method in args.methods:
        densities = [1.0] if method == "dense" else [round(1 - s, 6) for s in args.sparsities]
        for density in densities:
            row = run_one(method, density, args)
            rows.append(row)
            print(f"done {method} sparsity={row['sparsity']:.2f} acc={row['test_accuracy']:.4f}", file=sys.stderr)
    result = {
        "benchmark": "dst_fashion_mnist",
        "epochs": args.epochs,
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "total_seconds": time.perf_counter() - started,
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(format_table(rows))
    print()
    print(format_table(rows, markdown=True))
    print(f"\nJSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
