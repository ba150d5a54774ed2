"""Inference latency of a sparse MLP at small batches: our CSR layers vs dense vs torch's CSR.

The "wide" MLP 784-4096-4096-10 of ``sparse_speed.py``: both hidden layers at the given
sparsity (random masks, exact counts), the head dense. Three models with the same weights:

* ``dense``: ``nn.Linear`` layers holding the masked weights (MKL GEMV/GEMM);
* ``sparse``: ``sparsenets.sparse.SparseLinear`` hidden layers, no-grad forward (native kernels:
  a gather SpMV at batch 1, the packed kernel above);
* ``torch-csr``: a plain layer over ``torch.sparse_csr_tensor`` (``addmm`` into a row-major
  output), the baseline a user writes in a few lines.

For each batch size the three models are timed under ``torch.inference_mode()``, either
round-robin (``--order interleaved``, the default: one call each, repeated, so every call starts
from a cache the other models used) or each in a row (``--order blocked``: its weights stay in
cache), and the median latency per forward pass is reported, with the ratios measured side by
side in the same run. Prints a table and writes JSON.

    .venv/bin/python benchmarks/sparse_inference.py --markdown
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from machine_info import cpu_model
from torch import nn

from sparsenets.io import write_json
from sparsenets.sparse import SparseLinear, kernels

ROOT = Path(__file__).resolve().parent.parent
SIZES = (784, 4096, 4096, 10)


class TorchCSRLinear(nn.Module):
    """``y = x Wᵀ + b`` with ``W`` a torch CSR tensor (what a user writes without sparsenets)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias.unsqueeze(1), self.weight, x.t()).t().contiguous()


def build(sparsity: float, seed: int) -> dict[str, nn.Module]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    dense_layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
        dense_layers.append(nn.Linear(a, b))
        if i < len(SIZES) - 2:
            dense_layers.append(nn.ReLU())
    dense = nn.Sequential(*dense_layers).eval()
    masks = {}
    with torch.no_grad():
        for index in range(0, 2 * (len(SIZES) - 2), 2):  # the hidden layers
            layer = dense[index]
            keep = layer.weight.numel() - round(sparsity * layer.weight.numel())
            mask = torch.zeros(layer.weight.numel(), dtype=torch.bool)
            mask[torch.randperm(mask.numel(), generator=gen)[:keep]] = True
            masks[index] = mask.reshape(layer.weight.shape)
            layer.weight.mul_(masks[index])
    sparse = nn.Sequential(*[SparseLinear.from_dense(m, masks[i]) if i in masks else m
                             for i, m in enumerate(dense)]).eval()
    torch_csr = nn.Sequential(*[TorchCSRLinear(m) if i in masks else m for i, m in enumerate(dense)]).eval()
    return {"dense": dense, "sparse": sparse, "torch-csr": torch_csr}


def time_round_robin(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return times


def time_blocked(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Each model alone, call after call: its weights stay in cache (a server running one model)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for name, model in models.items():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.99, 0.95, 0.9])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", choices=("interleaved", "blocked"), default="interleaved",
                        help="interleaved: the models take turns, call by call (each starts from a cache the "
                             "others used); blocked: each model's calls in a row (its weights stay cached)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "sparse_inference.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = []
    for sparsity in args.sparsity:
        models = build(sparsity, args.seed)
        x0 = torch.randn(max(args.batch), SIZES[0], generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            reference = models["dense"](x0)
            for name in ("sparse", "torch-csr"):
                gap = float((models[name](x0) - reference).abs().max())
                assert gap < 1e-3, f"{name} differs from dense by {gap}"
        for batch in args.batch:
            timer = time_round_robin if args.order == "interleaved" else time_blocked
            times = timer(models, x0[:batch].contiguous(), args.repeats, args.warmup)
            us = {name: 1e6 * statistics.median(t) for name, t in times.items()}
            rows.append({"sparsity": sparsity, "batch": batch, **{f"{k}_us": v for k, v in us.items()},
                         "dense_over_sparse": us["dense"] / us["sparse"],
                         "torch_csr_over_sparse": us["torch-csr"] / us["sparse"]})
            print(f"[{time.perf_counter() - started:5.0f}s] {sparsity:.0%} batch {batch}: "
                  + ", ".join(f"{k} {v:.0f} us" for k, v in us.items()), flush=True)
    header = ["sparsity", "batch", "dense µs", "sparse µs", "torch CSR µs", "dense / sparse", "torch CSR / sparse"]
    body = [[f"{r['sparsity']:.0%}", str(r["batch"]), f"{r['dense_us']:.0f}", f"{r['sparse_us']:.0f}",
             f"{r['torch-csr_us']:.0f}", f"{r['dense_over_sparse']:.1f}×", f"{r['torch_csr_over_sparse']:.2f}×"]
            for r in rows]
    if args.markdown:
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        print("\n".join("| " + " | ".join(row) + " |" for row in body))
    else:
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
        for row in [header, *body]:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    info = {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
            "native_kernels": kernels.available(), "loadavg": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "total_seconds": time.perf_counter() - started}
    print(f"{info['cpu_model']}, {args.threads} threads, torch {torch.__version__}, "
          f"native kernels: {info['native_kernels']}, total {info['total_seconds']:.0f} s")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, {"benchmark": "sparse_inference", "args": vars(args), **info, "rows": rows})
    print(f"JSON {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
