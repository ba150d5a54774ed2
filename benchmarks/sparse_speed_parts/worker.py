"""One (model, sparsity, system) in a fresh process, and the protocol between it and the parent.

Protocol: the parent (:func:`run_worker`) runs ``python benchmarks/sparse_speed.py --worker SPEC
--result FILE``, with ``python`` this project's interpreter or the sparselab venv's, ``SPEC`` a
JSON object (model, sparsity, system, threads, steps, repeats, seed, init file, probe file,
memory_steps, epochs, train_size, optionally ``"phase": "memory"``), ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` set to the thread count, ``src/`` on ``PYTHONPATH`` and any extra environment
(``SPARSENETS_SPARSE_KERNELS=torch``, :data:`.measure.MEMORY_ENV`). The worker writes its result
dict as JSON to ``FILE`` (:func:`serve`); a nonzero exit becomes ``{"error": last stderr line}``.

What a timing process measures (:func:`worker`), in this order:

* step: median wall time of :func:`.systems.train_step` over ``steps`` steps after
  :data:`WARMUP` warm-ups; after :data:`PROBE_STEPS` steps the outputs on 256 test images are
  saved to the probe file (the parent compares every system to ``masked``);
* RSS growth of the timing steps under the default malloc (for reference);
* kernels (``sparse`` / ``sparse-torch`` only): :func:`.measure.bare_kernels`, same process;
* infer: median time of a no-grad forward of one batch;
* accuracy: a fresh model trained ``epochs`` epochs of ``train_size`` samples, then test accuracy.

A memory process (``phase: memory``) builds the same system and returns
:func:`.measure.measure_memory` over ``memory_steps`` steps, nothing else.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

from . import ROOT, SCRIPT
from .measure import (
    bare_kernels,
    evaluate,
    measure_memory,
    median_ms,
    release_free_heap,
    reset_peak_rss,
    rss_kib,
)
from .systems import MODELS, build_system, train_step

PROBE_STEPS = 3
WARMUP = 5


def load_data():
    from sparsenets.data import load_dataset

    ds = load_dataset("fashion_mnist")
    flat = lambda t: t.reshape(t.shape[0], -1).contiguous()  # noqa: E731
    return flat(ds.x_train), ds.y_train, flat(ds.x_test), ds.y_test


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
    if spec["system"] not in ("masked", "sparselab", "torch-csr"):
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


def serve(spec_json: str, result_path: str) -> None:
    """The worker's side of the protocol: run ``worker(SPEC)``, write its result to ``FILE``."""
    result = worker(json.loads(spec_json))
    Path(result_path).write_text(json.dumps(result))


def run_worker(python: str, spec: dict, env_extra: dict[str, str], work: Path) -> dict:
    """The parent's side: run one worker process under ``python`` and read back its result."""
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
    cmd = [python, str(SCRIPT), "--worker", json.dumps(spec), "--result", str(result_path)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        return {"error": (run.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(result_path.read_text())
