"""How a worker process measures: timings, training memory, the bare kernels, test accuracy.

* timing: :func:`median_ms`, the median wall time of repeated calls after warm-ups
  (``sparsenets.timing.median_seconds``);
* memory: RSS read from ``/proc/self/status``; the high-water mark (``VmHWM``) is reset through
  ``/proc/self/clear_refs`` and freed heap handed back with ``malloc_trim`` before the steps, so
  :func:`measure_memory` gives peak RSS over the training steps minus the RSS just before them.
  It runs in a process of its own under :data:`MEMORY_ENV`;
* kernels: :func:`bare_kernels`, the bare sparse kernels of one step for the hidden layers
  (forward, grad-values, grad-input except the first layer), native or torch CSR: the floor a
  step can reach;
* accuracy: :func:`evaluate`, test accuracy in batches.
"""

from __future__ import annotations

import ctypes
import gc

import torch

from .systems import hidden_names, train_step

# The memory process: glibc returns every freed block of >= 128 KiB to the OS at once (fixed
# mmap threshold), so RSS follows the memory the training steps actually hold, whatever the
# allocation history of each library (the default dynamic threshold keeps freed blocks and
# fragments, which makes peak RSS depend on allocation order more than on need).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


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


def evaluate(model, x, y, batch: int) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            correct += int((model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum())
    model.train()
    return correct / x.shape[0]


def bare_kernels(sizes, init, batch: int, repeats: int, which: str) -> dict:
    """The sparse kernels of one training step (hidden layers only), ``which`` is ``native`` or
    ``torch``: forward, grad-values, grad-input (not for the first layer), each timed on its
    own (median ms over ``repeats``, summed over the layers) with its rate in GFLOP/s
    (``2 · batch · nnz`` floating-point operations per layer and kernel), plus ``kernel_ms``,
    the median of the whole sequence run back to back: the floor a step can reach."""
    from sparsenets.sparse import build_structure, kernels

    lib = kernels.library()
    if which == "native" and lib is None:
        return {}
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

    def native_ops(i, s, v, b, x, g):
        """The layer's native kernels as in SparseLinearFunction: {kind: callable}."""
        plan, tile = kernels.layer_plan(lib, x.shape[1], g.shape[1], v.numel(), x.dtype)
        xp, _ = kernels.pack(lib, x, tile, width=plan.pack)
        gp, _ = kernels.pack(lib, g, tile, sums=True, width=plan.pack)
        vt = kernels.gather(lib, v, s.perm)
        ops = {
            "pack": lambda: (kernels.pack(lib, x, tile, width=plan.pack),
                             kernels.pack(lib, g, tile, sums=True, width=plan.pack)),
            "forward": lambda: kernels.spmm(
                lib, s.crow_indices, s.col_indices, v, None, b, xp, batch, tile, relu=True, width=plan.spmm
            ),
            "grad_values": lambda: kernels.sddmm(
                lib, s.crow_indices, s.col_indices, gp, xp, tile, width=plan.sddmm
            ),
        }
        if i > 0:
            ops["grad_input"] = lambda: (
                kernels.gather(lib, v, s.perm),
                kernels.spmm(lib, s.t_crow_indices, s.t_col_indices, vt, None, None, gp, batch, tile,
                             width=plan.spmm),
            )
        return ops

    def torch_ops(i, s, v, b, x, g, w, wt):
        ops = {
            "forward": lambda: torch.addmm(b.unsqueeze(1), w, x.t()).t().contiguous(),
            "grad_values": lambda: torch.sparse.sampled_addmm(w, g.t(), x, beta=0.0).values(),
        }
        if i > 0:
            ops["grad_input"] = lambda: torch.sparse.mm(wt, g.t()).t().contiguous()
        return ops

    per_layer = [
        (native_ops(*layer[:6]) if which == "native" else torch_ops(*layer), int(layer[2].numel()))
        for layer in layers
    ]
    result: dict = {"kernel_ms": median_ms(lambda: [op() for ops, _ in per_layer for op in ops.values()],
                                           repeats)}
    per_kernel: dict[str, dict[str, float]] = {}
    for ops, nnz in per_layer:
        for kind, op in ops.items():
            entry = per_kernel.setdefault(kind, {"ms": 0.0, "gflop": 0.0})
            entry["ms"] += median_ms(op, repeats)
            if kind != "pack":
                entry["gflop"] += 2 * batch * nnz / 1e9
    for entry in per_kernel.values():
        entry["gflops"] = entry["gflop"] / (entry["ms"] / 1e3) if entry["gflop"] else None
    result["per_kernel"] = per_kernel
    if which == "native":
        plan = kernels.plan(lib)
        result["kernel_plan"] = plan.describe()
    return result


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
