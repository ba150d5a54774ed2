"""Sparse MLPs on Fashion-MNIST: masked backend vs sparse backend vs sparselab (issue 10, point 5).

Models: "nerva" 784-1024-512-10 (batch 100) and "wide" 784-4096-4096-10 (batch 256). The two
hidden layers are sparse at 90 / 95 / 99% (a random mask with exactly that many zeros per
layer); the output layer (->10) is dense in every system. Systems:

* ``masked``: dense ``nn.Linear`` layers whose weights are multiplied by their masks
  (``sparsenets.DynamicSparsity(method="static", backend="masked")``);
* ``sparse``: the same with ``backend="sparse"`` (CSR :class:`sparsenets.sparse.SparseLinear`,
  native kernels when they build, see ``sparsenets.sparse.kernels``);
* ``sparse-torch``: the same layer on torch's CSR kernels (MKL), ``SPARSENETS_SPARSE_KERNELS=torch``;
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
  ``sparse-torch`` process): the floor a step can reach.

    .venv/bin/python benchmarks/sparse_speed.py                 # full run (~22 min)
    .venv/bin/python benchmarks/sparse_speed.py --quick         # smoke test (~2 min)
    .venv/bin/python benchmarks/sparse_speed.py --models wide --sparsities 0.99 --epochs 0
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
BENCH_VENV = ROOT / ".bench" / "sparselab"
SPARSELAB = "sparselab==0.2.2"
MODELS = {"nerva": ((784, 1024, 512, 10), 100), "wide": ((784, 4096, 4096, 10), 256)}
SYSTEMS = ("masked", "sparse", "sparse-torch", "auto", "auto-torch", "sparselab")
TORCH_KERNELS = ("sparse-torch", "auto-torch")  # systems run with SPARSENETS_SPARSE_KERNELS=torch
PROBE_STEPS = 3
# The memory process: glibc returns every freed block of >= 128 KiB to the OS at once (fixed
# mmap threshold), so RSS follows the memory the training steps actually hold, whatever the
# allocation history of each library (the default dynamic threshold keeps freed blocks and
# fragments, which makes peak RSS depend on allocation order more than on need).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
WARMUP = 5
LR, MOMENTUM = 0.01, 0.9

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")


# -- shared pieces ---------------------------------------------------------------------------
def hidden_names(sizes) -> list[str]:
    """Parameter names of the sparse (hidden) layers in ``nn.Sequential(Linear, ReLU, ...)``."""
    return [f"{2 * i}.weight" for i in range(len(sizes) - 2)]


def dense_mlp(sizes) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def make_init(sizes, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
    """Masks (exact count per hidden layer) and initial values shared by every system.

    Hidden weights are uniform in ±1/sqrt(fan_in · density) (Kaiming-uniform for the live fan-in,
    as sparselab initialises; plain ±1/sqrt(fan_in) would shrink the signal 10x per layer at
    99%), zero outside the mask; biases and the dense output layer as ``nn.Linear``.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = dense_mlp(sizes)
    tensors: dict[str, torch.Tensor] = {}
    density = 1.0 - sparsity
    for name in hidden_names(sizes):
        weight = dict(model.named_parameters())[name]
        out_f, in_f = weight.shape
        count = round(density * weight.numel())
        mask = torch.zeros(weight.numel(), dtype=torch.bool)
        mask[torch.randperm(weight.numel(), generator=gen)[:count]] = True
        mask = mask.view(out_f, in_f)
        bound = 1.0 / (in_f * density) ** 0.5
        values = (torch.rand(out_f, in_f, generator=gen) * 2 - 1) * bound
        values[values == 0] = bound / 2  # every stored value nonzero (sparselab drops zeros)
        tensors[name] = values * mask
        tensors[name.replace("weight", "mask")] = mask
    for name, param in model.named_parameters():
        tensors.setdefault(name, param.detach().clone())
    return tensors


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def release_free_heap() -> None:
    """Return freed heap memory to the OS (glibc ``malloc_trim``), so that the RSS baseline holds
    live memory only and memory freed while building (e.g. a dense weight replaced by CSR) is not
    silently reused by the training steps."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def median_ms(fn, repeats: int, warmup: int = 5) -> float:
    from sparsenets.timing import median_seconds

    return 1e3 * median_seconds(fn, repeats, warmup)


# -- worker: one (model, sparsity, system) in a fresh process ---------------------------------
def load_data():
    from sparsenets.data import load_dataset

    ds = load_dataset("fashion_mnist")
    flat = lambda t: t.reshape(t.shape[0], -1).contiguous()  # noqa: E731
    return flat(ds.x_train), ds.y_train, flat(ds.x_test), ds.y_test


def build_system(system: str, sizes, init: dict[str, torch.Tensor], total_steps: int, batch: int):
    """``(model, optimizer, after_step, info)``: a fresh model holding ``init``; ``info`` holds
    the backend of each hidden layer (and, for ``auto``, the timings it chose on)."""
    names = hidden_names(sizes)
    if system == "sparselab":
        import numpy as np
        import sparselab
        from sparselab import layout

        model = dense_mlp(sizes)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(init[name])
        for name in names:
            index = int(name.split(".")[0])
            dense = model[index]
            layer = sparselab.SparseLinear(
                dense.in_features, dense.out_features, bias=True, sparsity=0.5
            )
            layer._csr = layout.from_dense(init[name], padding_ratio=layer.padding_ratio)
            layer._values = nn.Parameter(torch.from_numpy(np.asarray(layer._csr.values)))
            with torch.no_grad():
                layer.bias.copy_(init[name.replace("weight", "bias")])
            if layer.nnz != int(init[name.replace("weight", "mask")].sum()):
                raise RuntimeError(f"sparselab layer {name}: nnz {layer.nnz} differs from the mask")
            model[index] = layer
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        algorithm = sparselab.Static(sparsity=0.5)
        model.apply(algorithm)

        def after_step():
            optimizer.step()
            algorithm.step()

        return model, optimizer, after_step, {}

    from sparsenets import DynamicSparsity

    model = dense_mlp(sizes)
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(init[name])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    masks = {n: init[n.replace("weight", "mask")] for n in names}
    density = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
    sparsifier = DynamicSparsity(
        model,
        optimizer,
        density=density,
        total_steps=total_steps,
        method="static",
        distribution="uniform",
        dense_last=True,
        masks=masks,
        backend=system.split("-")[0],
        auto_batch_size=batch,
    )
    if system != "masked":
        from sparsenets.sparse import SparseLinear, kernels

        kernels.library()  # load (or build) the native kernels before anything is measured
        if system.startswith("sparse") and not all(
            isinstance(model[int(n.split(".")[0])], SparseLinear) for n in names
        ):
            raise RuntimeError("backend='sparse' did not convert the hidden layers")
    info = {"backends": dict(sparsifier.backends)}
    if sparsifier.backend_timings:
        info["auto_ms"] = {
            name: {backend: 1e3 * seconds for backend, seconds in t.items()}
            for name, t in sparsifier.backend_timings.items()
        }
    return model, optimizer, sparsifier.step, info


def train_step(model, optimizer, after_step, x, y) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    after_step()


def evaluate(model, x, y, batch: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train()
    return correct / x.shape[0]


def bare_kernels(sizes, init, batch: int, repeats: int, which: str) -> dict[str, float]:
    """Median ms of the sparse kernels of one training step (hidden layers only), ``which`` is
    ``native`` or ``torch``: forward, grad-values, grad-input (not for the first layer)."""
    from sparsenets.sparse import build_structure, kernels

    lib = kernels.library()
    layers = []
    gen = torch.Generator().manual_seed(0)
    for i, name in enumerate(hidden_names(sizes)):
        mask = init[name.replace("weight", "mask")]
        s = build_structure(mask)
        v = init[name][mask].contiguous()
        out_f, in_f = mask.shape
        x = torch.randn(batch, in_f, generator=gen)
        g = torch.randn(batch, out_f, generator=gen)
        b = init[name.replace("weight", "bias")]
        w = torch.sparse_csr_tensor(
            s.crow_indices, s.col_indices, v, (out_f, in_f), check_invariants=False
        )
        wt = torch.sparse_csr_tensor(
            s.t_crow_indices, s.t_col_indices, v[s.perm], (in_f, out_f), check_invariants=False
        )
        layers.append((i, s, v, b, x, g, w, wt))

    def native(tile=kernels.DEFAULT_TILE):
        for i, s, v, b, x, g, _, _ in layers:
            xp, _ = kernels.pack(lib, x, tile)
            kernels.spmm(lib, s.crow_indices, s.col_indices, v, None, b, xp, batch, tile)
            gp, _ = kernels.pack(lib, g, tile, sums=True)
            kernels.sddmm(lib, s.crow_indices, s.col_indices, gp, xp, tile)
            if i > 0:
                vt = kernels.gather(lib, v, s.perm)
                kernels.spmm(
                    lib, s.t_crow_indices, s.t_col_indices, vt, None, None, gp, batch, tile
                )

    def torch_csr():
        for i, _, _, b, x, g, w, wt in layers:
            torch.addmm(b.unsqueeze(1), w, x.t()).t().contiguous()
            torch.sparse.sampled_addmm(w, g.t(), x, beta=0.0).values()
            if i > 0:
                torch.sparse.mm(wt, g.t()).t().contiguous()

    if which == "native":
        return {"kernel_ms": median_ms(native, repeats)} if lib is not None else {}
    return {"kernel_ms": median_ms(torch_csr, repeats)}


def measure_memory(model, optimizer, after_step, batches) -> dict:
    """Training memory: peak RSS over the steps minus the RSS just before them."""
    gc.collect()
    release_free_heap()
    rss_before = rss_kib("VmRSS")
    reset = reset_peak_rss()
    for x, y in batches:
        train_step(model, optimizer, after_step, x, y)
    return {
        "train_mem_mib": (rss_kib("VmHWM") - rss_before) / 1024,
        "rss_before_mib": rss_before / 1024,
        "peak_reset": reset,
    }


def worker(spec: dict) -> dict:
    from sparsenets.io import load_tensors, save_tensors

    torch.set_num_threads(spec["threads"])
    sizes, batch = MODELS[spec["model"]]
    init = load_tensors(spec["init"])
    x_train, y_train, x_test, y_test = load_data()
    steps = spec["steps"]
    order = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(spec["seed"]))
    batches = [
        (
            x_train[order[i * batch : (i + 1) * batch]].contiguous(),
            y_train[order[i * batch : (i + 1) * batch]],
        )
        for i in range(steps)
    ]
    probe = x_test[:256].contiguous()
    epochs = spec["epochs"]
    steps_per_epoch = spec["train_size"] // batch
    model, optimizer, after_step, info = build_system(
        spec["system"], sizes, init, max(steps, epochs * steps_per_epoch, 1), batch
    )
    if spec.get("phase") == "memory":  # a process of its own, malloc returning freed blocks
        return measure_memory(model, optimizer, after_step, batches[: spec["memory_steps"]])
    result: dict = {"threads": torch.get_num_threads()} | info
    if spec["system"] not in ("masked", "sparselab"):
        from sparsenets.sparse import kernels

        result["kernels"] = "native" if kernels.available() else "torch"
    gc.collect()
    release_free_heap()
    rss_before = rss_kib("VmRSS")
    reset_peak_rss()
    times = []
    for i, (x, y) in enumerate(batches):
        start = time.perf_counter()
        train_step(model, optimizer, after_step, x, y)
        times.append(time.perf_counter() - start)
        if i + 1 == PROBE_STEPS:
            with torch.no_grad():
                save_tensors(spec["probe_out"], {"out": model(probe)})
    # RSS growth under the default allocator (glibc keeps freed blocks and fragments): reported
    # for reference; the training memory of the table comes from the memory process.
    result["rss_growth_mib"] = (rss_kib("VmHWM") - rss_before) / 1024
    result["step_ms"] = 1e3 * statistics.median(times[WARMUP:] or times)
    result["first_step_ms"] = 1e3 * times[0]
    if spec["system"] in ("sparse", "sparse-torch"):  # the floor, in the same process and moment
        result |= bare_kernels(sizes, init, batch, spec["repeats"], result["kernels"])
    model.eval()
    x_inf = x_test[:batch].contiguous()
    with torch.no_grad():
        result["infer_ms"] = median_ms(lambda: model(x_inf), spec["repeats"])
    model.train()
    if epochs > 0:
        del model, optimizer, after_step
        gc.collect()
        model, optimizer, after_step, _ = build_system(
            spec["system"], sizes, init, epochs * steps_per_epoch, batch
        )
        gen = torch.Generator().manual_seed(spec["seed"] + 1)
        n = spec["train_size"]
        start = time.perf_counter()
        for _ in range(epochs):
            perm = torch.randperm(x_train.shape[0], generator=gen)[:n]
            for i in range(steps_per_epoch):
                idx = perm[i * batch : (i + 1) * batch]
                train_step(model, optimizer, after_step, x_train[idx], y_train[idx])
        result["train_s"] = time.perf_counter() - start
        result["test_acc"] = evaluate(model, x_test, y_test, 1000)
    return result


# -- parent -----------------------------------------------------------------------------------
def sparselab_python(allow_install: bool) -> tuple[str | None, str]:
    """The interpreter of the sparselab venv (created on first use), or None and a note."""
    py = BENCH_VENV / "bin" / "python"
    check = [
        str(py),
        "-c",
        "import sparselab, torch; print(sparselab.__version__, torch.__version__)",
    ]
    if py.exists():
        run = subprocess.run(check, capture_output=True, text=True)
        if run.returncode == 0:
            return str(py), f"sparselab {run.stdout.strip()}"
    if not allow_install:
        return None, "sparselab not installed (--no-install)"
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(BENCH_VENV)], check=True, capture_output=True
        )
        # The bench venv sees this project's packages (torch 2.13.0 CPU, numpy, sparsenets)
        # through a .pth file; sparselab itself goes in with --no-deps, so nothing here can pull
        # another torch.
        site = subprocess.run(
            [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        main_site = subprocess.run(
            [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        Path(site, "zz_main_venv.pth").write_text(f"import site; site.addsitedir({main_site!r})\n")
        subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--no-deps", SPARSELAB],
            check=True,
            capture_output=True,
            text=True,
        )
        run = subprocess.run(check, capture_output=True, text=True, check=True)
        return str(py), f"sparselab {run.stdout.strip()}"
    except (subprocess.CalledProcessError, OSError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return (
            None,
            f"sparselab unavailable: {detail.strip().splitlines()[-1] if detail.strip() else exc}",
        )


def combine(runs: list[dict]) -> dict:
    """One result from the rounds of a system: medians of the timings and memory, round 1's rest."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    result = dict(ok[0])
    for key in ("step_ms", "infer_ms", "rss_growth_mib", "first_step_ms", "kernel_ms"):
        if all(key in r for r in ok):
            result[key] = statistics.median(r[key] for r in ok)
            result[key + "_rounds"] = [r[key] for r in ok]
    return result


def run_worker(python: str, spec: dict, env_extra: dict[str, str], work: Path) -> dict:
    result_path = (
        work
        / f"{spec['model']}-{spec['sparsity']}-{spec['system']}-{spec.get('phase', 'time')}.json"
    )
    env = (
        os.environ
        | {"OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
        | env_extra
    )
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [python, __file__, "--worker", json.dumps(spec), "--result", str(result_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result_path.read_text())


def main() -> None:
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
    args = parser.parse_args()
    if args.worker:
        result = worker(json.loads(args.worker))
        Path(args.result).write_text(json.dumps(result))
        return
    if args.replot:
        print(
            f"wrote {plot_results(json.loads(Path(args.replot).read_text())['results'], Path(args.replot).with_suffix('.png'))}"
        )
        return
    if args.quick:
        args.steps, args.repeats, args.epochs, args.train_size, args.rounds = 12, 5, 1, 6000, 1

    from sparsenets.io import load_tensors, save_tensors, write_json

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
        sizes, batch = MODELS[model_name]
        for sparsity in args.sparsities:
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
            rows.append(row)
    load_after = os.getloadavg()
    print_table(rows, args, notes, load_before, load_after)
    checks = bar_checks(rows)
    if checks:
        print("\nissue 10 bar (measured above):")
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
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
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


def bar_checks(rows) -> list[dict]:
    """The issue's targets, each checked against the measurements of this run."""
    checks = []

    def check(claim: str, ok: bool, measured: str) -> None:
        checks.append({"claim": claim, "pass": bool(ok), "measured": measured})

    for row in rows:
        where = f"{row['model']} {row['sparsity']:.0%}"
        systems = {k: v for k, v in row["systems"].items() if "error" not in v}
        step = {k: v["step_ms"] for k, v in systems.items()}
        if "sparse" not in step:
            continue
        sparse = step["sparse"]
        if "sparselab" in step:
            check(
                f"{where}: sparse not slower than sparselab",
                sparse <= step["sparselab"],
                f"{sparse:.2f} vs {step['sparselab']:.2f} ms ({step['sparselab'] / sparse:.2f}x)",
            )
        if "masked" in step:
            ratio = step["masked"] / sparse
            if row["sparsity"] >= 0.9:
                check(f"{where}: sparse not slower than masked", ratio >= 1, f"{ratio:.1f}x")
            if row["model"] == "wide" and row["sparsity"] >= 0.99:
                check(f"{where}: sparse >= 10x faster than masked", ratio >= 10, f"{ratio:.1f}x")
            if row["model"] == "nerva" and row["sparsity"] >= 0.99:
                check(f"{where}: sparse >= 4x faster than masked", ratio >= 4, f"{ratio:.1f}x")
        if row["model"] == "wide" and row["sparsity"] >= 0.99:
            mem = {k: v.get("train_mem_mib") for k, v in systems.items()}
            if "sparselab" in step:
                check(
                    f"{where}: sparse >= 1.5x faster than sparselab",
                    step["sparselab"] / sparse >= 1.5,
                    f"{step['sparselab'] / sparse:.2f}x",
                )
            if mem.get("sparse") is not None and mem.get("masked"):
                check(
                    f"{where}: training memory <= 25% of masked",
                    mem["sparse"] <= 0.25 * mem["masked"],
                    f"{mem['sparse']:.1f} vs {mem['masked']:.1f} MiB ({mem['sparse'] / mem['masked']:.0%})",
                )
            if mem.get("sparse") is not None and mem.get("sparselab") is not None:
                check(
                    f"{where}: training memory below sparselab",
                    mem["sparse"] < mem["sparselab"],
                    f"{mem['sparse']:.1f} vs {mem['sparselab']:.1f} MiB",
                )
        for auto, sparse_twin in (("auto", "sparse"), ("auto-torch", "sparse-torch")):
            if auto in step and "masked" in step and sparse_twin in step:
                chosen = set(systems[auto].get("backends", {}).values())
                twin = {"sparse": sparse_twin, "masked": "masked"}
                measured = (
                    f"chose {systems[auto].get('backends')}; end to end masked {step['masked']:.2f}, "
                    f"{sparse_twin} {step[sparse_twin]:.2f}, {auto} {step[auto]:.2f} ms"
                )
                if len(chosen) == 1:  # one backend for every layer: the faster system, or a tie
                    (backend,) = chosen
                    other = "masked" if backend == "sparse" else "sparse"
                    check(
                        f"{where}: {auto} chose {twin[backend]}, not slower than {twin[other]} "
                        "(10% counts as a tie)",
                        step[twin[backend]] <= 1.1 * step[twin[other]],
                        measured,
                    )
                else:  # a mix: it must beat both single-backend systems (10% for timing noise)
                    check(
                        f"{where}: {auto}'s per-layer mix within 10% of the faster single backend",
                        step[auto] <= 1.1 * min(step["masked"], step[sparse_twin]),
                        measured,
                    )
        acc = {k: v.get("test_acc") for k, v in systems.items()}
        if acc.get("sparse") is not None and acc.get("masked") is not None:
            check(
                f"{where}: sparse test accuracy within 0.5 points of masked",
                abs(acc["sparse"] - acc["masked"]) <= 0.005,
                f"{acc['sparse']:.4f} vs {acc['masked']:.4f}",
            )
    return checks


PLOT_SYSTEMS = {  # system: (label, colour)
    "masked": ("masked (dense x mask)", "#9e9e9e"),
    "sparselab": ("sparselab 0.2.2", "#e69f00"),
    "sparse-torch": ("sparsenets, torch CSR", "#56b4e9"),
    "sparse": ("sparsenets, native kernels", "#0072b2"),
}


def plot_results(rows, path: Path) -> Path:
    """Bar charts of step time (log scale) and training memory per model and sparsity."""
    from sparsenets.io import atomic_path
    from sparsenets.plots import _pyplot

    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(models), figsize=(6 * len(models), 7), squeeze=False)
    for col, model in enumerate(models):
        model_rows = [r for r in rows if r["model"] == model]
        systems = [s for s in PLOT_SYSTEMS if any(s in r["systems"] for r in model_rows)]
        width = 0.8 / max(len(systems), 1)
        for row_index, (key, ylabel) in enumerate(
            (("step_ms", "training step, ms (log)"), ("train_mem_mib", "training memory, MiB"))
        ):
            ax = axes[row_index][col]
            for k, system in enumerate(systems):
                label, colour = PLOT_SYSTEMS[system]
                xs, ys = [], []
                for i, r in enumerate(model_rows):
                    value = r["systems"].get(system, {}).get(key)
                    if value is not None:
                        xs.append(i + (k - (len(systems) - 1) / 2) * width)
                        ys.append(value)
                bars = ax.bar(xs, ys, width, label=label, color=colour)
                if key == "step_ms":
                    ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
            ax.set_xticks(range(len(model_rows)), [f"{r['sparsity']:.0%}" for r in model_rows])
            ax.set_ylabel(ylabel)
            if key == "step_ms":
                from matplotlib.ticker import NullFormatter, ScalarFormatter

                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(ScalarFormatter())
                ax.yaxis.set_minor_formatter(NullFormatter())
                low, high = ax.get_ylim()
                ax.set_ylim(low, high * 1.3)
                sizes, batch = MODELS[model]
                ax.set_title(f"{model}: {'-'.join(map(str, sizes))}, batch {batch}")
            else:
                ax.set_xlabel("sparsity of the hidden layers")
            ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows, args, notes, load_before, load_after) -> None:
    header = (
        "model",
        "sparsity",
        "system",
        "step ms",
        "x masked",
        "x sparselab",
        "infer ms",
        "train MiB",
        "RSS+ MiB",
        "test acc",
        "max|Δ|",
    )
    lines = []
    for row in rows:
        masked = row["systems"].get("masked", {}).get("step_ms")
        peer = row["systems"].get("sparselab", {}).get("step_ms")
        for system, r in row["systems"].items():
            if "error" in r:
                lines.append(
                    (row["model"], f"{row['sparsity']:.2f}", system, "error: " + r["error"])
                )
                continue
            ratio = masked / r["step_ms"] if masked else None
            vs_peer = peer / r["step_ms"] if peer else None
            name = system + (
                f" ({r['kernels']})" if system == "sparse" and r.get("kernels") != "native" else ""
            )
            lines.append(
                (
                    row["model"],
                    f"{row['sparsity']:.2f}",
                    name,
                    _fmt(r["step_ms"], ".2f"),
                    _fmt(ratio, ".1f"),
                    _fmt(vs_peer, ".2f"),
                    _fmt(r["infer_ms"], ".2f"),
                    _fmt(r.get("train_mem_mib"), ".1f"),
                    _fmt(r.get("rss_growth_mib"), ".1f"),
                    _fmt(r.get("test_acc"), ".4f"),
                    _fmt(r.get("max_abs_diff_vs_masked"), ".1e"),
                )
            )
        for system in ("sparse", "sparse-torch"):
            r = row["systems"].get(system, {})
            if "kernel_ms" in r:
                label = (
                    "kernels only ("
                    + ("native" if r.get("kernels") == "native" else "torch CSR")
                    + ")"
                )
                lines.append(
                    (row["model"], f"{row['sparsity']:.2f}", label, _fmt(r["kernel_ms"], ".2f"))
                )
        for system in ("auto", "auto-torch"):
            r = row["systems"].get(system, {})
            if "backends" in r:
                timings = r.get("auto_ms", {})
                chose = ", ".join(
                    f"{name.split('.')[0]}: {backend}"
                    + (
                        f" (masked {timings[name]['masked']:.2f} / sparse {timings[name]['sparse']:.2f} ms)"
                        if name in timings
                        else ""
                    )
                    for name, backend in r["backends"].items()
                )
                lines.append((row["model"], f"{row['sparsity']:.2f}", f"{system} chose", chose))
    print(
        f"\nsparse MLPs on Fashion-MNIST, {args.threads} threads, SGD momentum {MOMENTUM}, lr {LR}; "
        f"hidden layers sparse, output layer dense; load avg before {load_before[0]:.2f}, after {load_after[0]:.2f}"
    )
    for note in notes:
        print(f"note: {note}")
    print(" | ".join(header))
    for line in lines:
        print(" | ".join(line))
    if args.markdown:
        print("\n| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |" + " |" * (len(header) - len(line)))


if __name__ == "__main__":
    main()
