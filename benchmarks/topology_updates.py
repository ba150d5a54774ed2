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
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine_info import cpu_model

from sparsenets import DynamicSparsity
from sparsenets.config import load_recipe
from sparsenets.dst.base import as_topology_change
from sparsenets.io import load_tensors, write_json
from sparsenets.sparse import to_dense
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


class MaskedTwinCheck:
    """Wraps ``DynamicSparsity._update_topology``: before each update, the masked backend's
    answer for the same state; after it, whether the sparse backend's masks are the same."""

    def __init__(self):
        self.checked, self.identical = 0, 0
        self.original = DynamicSparsity._update_topology

    def __enter__(self):
        check = self

        def update(sparsifier, step):
            expected = check.masked_answer(sparsifier, step)
            check.original(sparsifier, step)
            check.checked += 1
            check.identical += all(torch.equal(sparsifier.masks.index(n), expected[n]) for n in expected)

        DynamicSparsity._update_topology = update
        return self

    def __exit__(self, *exc):
        DynamicSparsity._update_topology = self.original

    @staticmethod
    @torch.no_grad()
    def masked_answer(sparsifier: DynamicSparsity, step: int) -> dict[str, torch.Tensor]:
        dense = to_dense(sparsifier.model)
        names = list(sparsifier.masks)
        twin = DynamicSparsity(dense, torch.optim.SGD(dense.parameters(), lr=0.0), masks={
            n: sparsifier.masks[n] for n in names}, total_steps=sparsifier.total_steps,
            method=sparsifier.method, seed=sparsifier.seed, backend="masked")
        params = dict(dense.named_parameters())
        for name in names:
            grad = sparsifier.dense_grad(name) if sparsifier.method.needs_dense_grad else sparsifier.grad(name)
            params[name].grad = None if grad is None else grad.clone()
        twin.step_count = step
        changes = twin.method.update(twin, step)
        return {n: as_topology_change(c, twin.masks.index(n), twin.masks.shapes[n]).index for n, c in changes.items()}


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


def overlap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Share of the active positions two runs have in common (all layers together)."""
    common = sum(int(torch.isin(a[n], b[n]).sum()) for n in a)
    return common / max(sum(a[n].numel() for n in a), 1)


def format_table(rows: list[dict], markdown: bool) -> str:
    header = ["method", "backend", "updates", "train s", "updates s", "share %", "test acc",
              "final overlap with masked", "updates equal to masked"]
    body = [[r["method"], r["backend"], str(r["topology_updates"]), f"{r['train_seconds']:.1f}",
             f"{r['topology_seconds']:.2f}", f"{r['topology_share_pct']:.1f}", f"{r['test_accuracy']:.4f}",
             "-" if r.get("overlap_with_masked") is None else f"{r['overlap_with_masked']:.4f}",
             "-" if r.get("updates_checked") is None else f"{r['updates_identical']}/{r['updates_checked']}"]
            for r in rows]
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
    parser.add_argument("--no-check", dest="check", action="store_false",
                        help="skip the untimed run that checks every update against the masked backend")
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
            if args.check:
                with MaskedTwinCheck() as check:
                    run_one(method, "sparse", args, Path(tmp) / "check")
                for row in rows:
                    if row["method"] == method and row["backend"] == "sparse":
                        row["updates_checked"], row["updates_identical"] = check.checked, check.identical
                print(f"[{time.perf_counter() - started:6.0f}s] {method}: {check.identical}/{check.checked} "
                      f"updates equal to the masked backend's", file=sys.stderr)
    for row in rows:
        twin = next((r for r in rows if r["method"] == row["method"] and r["backend"] == "masked"), None)
        row["overlap_with_masked"] = None if twin is None or twin is row else overlap(row["masks"], twin["masks"])
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
    write_json(path, result)
    print(f"JSON {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
