"""Share of training time spent in topology updates, per DST method, on the sparse and masked backends.

The set-up of issue 20: Fashion-MNIST, MLP 784-2048-2048-10 at 98% sparsity (ERK), batch 128,
SGD, ΔT = 100, 2 epochs, trained with ``sparsenets.training.run_training`` (what ``sparsenets
train`` runs) from the ``recipes/fashion_mnist_mlp_<method>.yaml`` recipes. For each method and
backend it reports the training wall time, the time in topology updates
(``DynamicSparsity.update_seconds``) and their ratio, the test accuracy, and whether the final
masks of the sparse run equal the masked run's (same seed).

    .venv/bin/python benchmarks/topology_updates.py --markdown
    .venv/bin/python benchmarks/topology_updates.py --methods set --backends sparse --epochs 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine_info import cpu_model

from sparsenets.config import load_recipe
from sparsenets.io import load_tensors
from sparsenets.training import run_training

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("set", "rigl", "mest")
BACKENDS = ("sparse", "masked")


def final_masks(run_dir: Path) -> dict[str, torch.Tensor]:
    """``{layer: sorted flat active positions}`` from a run's ``checkpoint/masks.safetensors``."""
    state = load_tensors(run_dir / "checkpoint" / "masks.safetensors")
    masks = {}
    for key, tensor in state.items():
        kind, _, name = key.partition("/")
        if kind == "mask":
            masks[name] = tensor.reshape(-1).nonzero().squeeze(1)
        elif kind == "mask_index":
            masks[name] = tensor.to(torch.int64)
    return masks


def run_one(method: str, backend: str, args: argparse.Namespace, out_dir: Path) -> dict:
    overrides = [
        f"epochs={args.epochs}", f"seed={args.seed}", "device=cpu", f"threads={args.threads}",
        f"hidden=[{','.join(str(h) for h in args.hidden)}]", f"batch_size={args.batch_size}",
        f"sparsity.density={args.density}", f"sparsity.update_every={args.update_every}",
        f"backend={backend}",
    ]
    config = load_recipe(ROOT / "recipes" / f"fashion_mnist_mlp_{method}.yaml", overrides)
    run_dir = out_dir / f"{method}-{backend}"
    summary = run_training(config, run_dir, overwrite=True, progress=False)
    return {
        "method": method,
        "backend": backend,
        "train_seconds": summary["train_seconds"],
        "topology_seconds": summary["topology_seconds"],
        "topology_share_pct": 100 * summary["topology_overhead"],
        "topology_updates": summary["topology_updates"],
        "test_accuracy": summary["test_accuracy"],
        "density": summary["density"],
        "masks": final_masks(run_dir),
    }


def same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def format_table(rows: list[dict], markdown: bool) -> str:
    header = ["method", "backend", "updates", "train s", "updates s", "share %", "test acc", "masks = masked"]
    body = [[r["method"], r["backend"], str(r["topology_updates"]), f"{r['train_seconds']:.1f}",
             f"{r['topology_seconds']:.2f}", f"{r['topology_share_pct']:.1f}", f"{r['test_accuracy']:.4f}",
             {True: "yes", False: "NO", None: "-"}[r.get("masks_equal_masked")]] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *body])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--hidden", nargs="+", type=int, default=[2048, 2048])
    parser.add_argument("--density", type=float, default=0.02)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--update-every", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "topology_updates.json"))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="sparsenets-topology-") as tmp:
        for method in args.methods:
            for backend in args.backends:
                row = run_one(method, backend, args, Path(tmp))
                rows.append(row)
                print(f"[{time.perf_counter() - started:6.0f}s] {method} {backend}: train {row['train_seconds']:.1f}s, "
                      f"updates {row['topology_seconds']:.2f}s ({row['topology_share_pct']:.1f}%)", file=sys.stderr)
    for row in rows:
        twin = next((r for r in rows if r["method"] == row["method"] and r["backend"] == "masked"), None)
        row["masks_equal_masked"] = None if twin is None or twin is row else same_masks(row["masks"], twin["masks"])
    print(format_table(rows, args.markdown))
    info = {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads,
            "torch": torch.__version__, "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "total_seconds": time.perf_counter() - started}
    print(f"{info['cpu_model']}, {args.threads} threads, torch {torch.__version__}, "
          f"total {info['total_seconds'] / 60:.1f} min")
    result = {"benchmark": "topology_updates", "args": vars(args), **info,
              "rows": [{k: v for k, v in r.items() if k != "masks"} for r in rows]}
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(result, indent=1))
    tmp_path.replace(path)
    print(f"JSON {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
