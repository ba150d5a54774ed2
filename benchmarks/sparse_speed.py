"""Sparse MLPs on Fashion-MNIST: masked backend vs sparse backend vs sparselab (issue 10, point 5).

Models: "nerva" 784-1024-512-10 (batch 100) and "wide" 784-4096-4096-10 (batch 256). The two
hidden layers are sparse at 90 / 95 / 99% (a random mask with exactly that many zeros per
layer); the output layer (->10) is dense in every system. Systems:

* ``masked``: dense ``nn.Linear`` layers whose weights are multiplied by their masks
  (``sparsenets.DynamicSparsity(method="static", backend="masked")``);
* ``sparse``: the same with ``backend="sparse"`` (CSR :class:`sparsenets.sparse.SparseLinear`,
  native kernels when they build, see ``sparsenets.sparse.kernels``), ReLUs fused;
* ``sparse-torch``: the same layer on torch's CSR kernels (MKL), ``SPARSENETS_SPARSE_KERNELS=torch``;
* ``torch-csr``: a plain layer on torch's CSR kernels written without sparsenets (``systems.py``);
* ``auto`` / ``auto-torch``: ``backend="auto"`` (each hidden layer timed dense vs CSR at the
  benchmark's batch size, the faster kept), with the native and with torch's CSR kernels; the
  table lists the backend chosen per layer and the timings the choice was made on;
* ``sparselab``: sparselab 0.2.2 ``SparseLinear`` + its ``Static`` algorithm, installed only
  for this benchmark into ``.bench/sparselab`` (a venv seeing this project's torch); skipped
  with a note when it cannot be installed.

Every system starts from the same masks and initial values (a safetensors file per
configuration) and sees the same batches; after a few steps each saves its outputs on a probe
batch and the table reports the largest difference to the masked backend. Every
(model, sparsity, system) runs in a fresh process with the same thread count, in ``--rounds``
round-robin rounds (medians reported). Measured:

* step: median wall time of a training step (zero_grad, forward, cross-entropy, backward,
  SGD with momentum 0.9, plus the sparsity object's step), after 5 warm-up steps;
* infer: median time of a no-grad forward of one batch;
* memory: training memory = peak RSS during the training steps minus the RSS just before them
  (data loaded, model and optimizer built; the high-water mark is reset through
  ``/proc/self/clear_refs``), in a separate process whose malloc returns freed blocks (see
  ``MEMORY_ENV``); the RSS growth of the timing process (default malloc) is reported too;
* accuracy: test accuracy after ``--epochs`` epochs at 99% (same data order for all);
* kernels: the bare sparse kernels of one step for the hidden layers (forward, grad-values,
  grad-input except the first layer), native (in the ``sparse`` process) and torch CSR (in the
  ``sparse-torch`` process): the floor a step can reach; each kernel also alone, with its
  GFLOP/s (2 · batch · nnz per layer), and the vector path the native kernels chose.

The CPU model, its vector flags, the L2 size and the thread count are printed and stored.

    .venv/bin/python benchmarks/sparse_speed.py                 # full run (~22 min)
    .venv/bin/python benchmarks/sparse_speed.py --quick         # smoke test (~2 min)
    .venv/bin/python benchmarks/sparse_speed.py --models wide --sparsities 0.99 --epochs 0

This file is the command line and the orchestrator (configurations, rounds, one worker process
per measurement, the probe comparison, the JSON); the parts are in the sibling package
``sparse_speed_parts/`` (systems, sparselab_venv, measure, worker, report, checks; see its
``__init__``). Every worker process runs this same file with ``--worker``, under this project's
python or the sparselab venv's, so the directory of this file is put on ``sys.path`` below.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

# The parts are a sibling package: make them importable however this file is started (as a script
# sys.path[0] is already this directory, but not under `python -P` / PYTHONSAFEPATH).
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import torch  # noqa: E402
from machine_info import machine  # noqa: E402
from sparse_speed_parts import OUT  # noqa: E402
from sparse_speed_parts.checks import bar_checks  # noqa: E402
from sparse_speed_parts.measure import MEMORY_ENV  # noqa: E402
from sparse_speed_parts.report import combine, plot_results, print_table  # noqa: E402
from sparse_speed_parts.sparselab_venv import sparselab_python  # noqa: E402
from sparse_speed_parts.systems import (  # noqa: E402
    LR,
    MODELS,
    MOMENTUM,
    SYSTEMS,
    TORCH_KERNELS,
    make_init,
)
from sparse_speed_parts.worker import PROBE_STEPS, WARMUP, run_worker, serve  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=40, help="timed training steps (5 warm-ups included)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="inference / kernel repeats")
    parser.add_argument(
        "--memory-steps", type=int, default=10, help="training steps of the memory process"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs for test accuracy at 99%% (0: skip)"
    )
    parser.add_argument("--train-size", type=int, default=60000, help="training samples per epoch")
    parser.add_argument("--rounds", type=int, default=3, help="runs per system (medians reported)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke test: few steps, 1 short epoch")
    parser.add_argument("--no-install", action="store_true", help="never install sparselab")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table")
    parser.add_argument("--out", default=str(OUT / "sparse_speed.json"))
    parser.add_argument(
        "--replot", metavar="JSON", help="only redraw the PNG of a saved result file, run nothing"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    return parser.parse_args()


def measure_configuration(model_name, sparsity, args, work: Path, sparselab_py) -> dict:
    """One (model, sparsity): shared init, ``--rounds`` round-robin rounds of every system (a
    timing process each, plus a memory process in round 1), rounds combined, probes compared."""
    from sparsenets.io import load_tensors, save_tensors

    sizes, batch = MODELS[model_name]
    init_path = work / f"init-{model_name}-{sparsity}.safetensors"
    save_tensors(init_path, make_init(sizes, sparsity, args.seed))
    base = {
        "model": model_name,
        "sparsity": sparsity,
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "seed": args.seed,
        "init": str(init_path),
        "memory_steps": args.memory_steps,
        "epochs": args.epochs if sparsity >= 0.99 else 0,
        "train_size": args.train_size,
    }
    row = {"model": model_name, "sparsity": sparsity, "batch": batch, "systems": {}}
    probes = {}
    for round_index in range(args.rounds):  # round-robin: slow drifts hit every system
        for system in args.systems:
            if system == "sparselab" and sparselab_py is None:
                continue
            probe = work / f"probe-{model_name}-{sparsity}-{system}.safetensors"
            spec = base | {"system": system, "probe_out": str(probe)}
            if round_index > 0:
                spec["epochs"] = 0
            python = sparselab_py if system == "sparselab" else sys.executable
            env = {"SPARSENETS_SPARSE_KERNELS": "torch"} if system in TORCH_KERNELS else {}
            result = run_worker(python, spec, env, work)
            if "error" not in result and round_index == 0:
                probes[system] = load_tensors(probe)["out"]
                memory = run_worker(
                    python, spec | {"phase": "memory", "epochs": 0}, env | MEMORY_ENV, work
                )
                result.update(
                    memory if "error" not in memory else {"memory_error": memory["error"]}
                )
            row["systems"].setdefault(system, []).append(result)
            print(
                f"  {model_name} {sparsity} {system} round {round_index + 1}: {json.dumps(result)}",
                flush=True,
            )
    row["systems"] = {system: combine(runs) for system, runs in row["systems"].items()}
    for system, out in probes.items():
        if "masked" in probes:
            row["systems"][system]["max_abs_diff_vs_masked"] = float(
                (out - probes["masked"]).abs().max()
            )
    return row


def main() -> None:
    args = parse_args()
    if args.worker:
        serve(args.worker, args.result)
        return
    if args.replot:
        print(
            f"wrote {plot_results(json.loads(Path(args.replot).read_text())['results'], Path(args.replot).with_suffix('.png'))}"
        )
        return
    if args.quick:
        args.steps, args.repeats, args.epochs, args.train_size, args.rounds = 12, 5, 1, 6000, 1

    from sparsenets.io import write_json

    work = OUT / "sparse_speed"
    work.mkdir(parents=True, exist_ok=True)
    notes = []
    sparselab_py = None
    if "sparselab" in args.systems:
        sparselab_py, note = sparselab_python(not args.no_install)
        notes.append(note)
    load_before = os.getloadavg()
    rows = []
    for model_name in args.models:
        for sparsity in args.sparsities:
            rows.append(measure_configuration(model_name, sparsity, args, work, sparselab_py))
    load_after = os.getloadavg()
    info = machine()
    print(f"\n{info['cpu']} ({info['cpu_kind']}; flags {' '.join(info['flags'])}; "
          f"L2 {info['l2_bytes'] >> 10} KiB), {args.threads} threads, torch {torch.__version__}")
    print_table(rows, args, notes, load_before, load_after)
    checks = bar_checks(rows)
    if checks:
        print("\ntargets of issues 10 and 20 (measured above):")
        for check in checks:
            print(
                f"  [{'pass' if check['pass'] else 'FAIL'}] {check['claim']}: {check['measured']}"
            )
    write_json(
        args.out,
        {
            "config": {k: v for k, v in vars(args).items() if k not in ("worker", "result")}
            | {
                "torch": torch.__version__,
                **info,
                "loadavg_before": load_before,
                "loadavg_after": load_after,
                "lr": LR,
                "momentum": MOMENTUM,
                "probe_steps": PROBE_STEPS,
                "warmup_steps": WARMUP,
                "notes": notes,
            },
            "results": rows,
            "checks": checks,
        },
    )
    print(f"wrote {args.out}")
    print(f"wrote {plot_results(rows, Path(args.out).with_suffix('.png'))}")


if __name__ == "__main__":
    main()
