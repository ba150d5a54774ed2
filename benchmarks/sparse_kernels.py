"""CSR kernels vs dense for one 4096x4096 linear layer, batch 256, 2 threads (median times).

Per sparsity (90 / 95 / 99%): dense ``nn.Linear`` fwd+bwd, ``SparseLinear`` fwd+bwd (with and
without grad-input) on the native kernels and on torch CSR (``SPARSENETS_SPARSE_KERNELS=torch``),
the bare CSR matmul (forward only), grad-weight kernels (dense ``gᵀx``, ``sampled_addmm``,
dense-then-gather, and at 99% a row-gather formulation), int32 vs int64 indices, the native
kernels one by one (pack, forward, grad-values, grad-input), and the column-major output pitfall
(a ``Linear(4096->10)`` fed a transposed view).

    .venv/bin/python benchmarks/sparse_kernels.py [--repeats 7] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings
from pathlib import Path

import torch
from torch import nn

from sparsenets.io import write_json
from sparsenets.sparse import SparseLinear, kernels
from sparsenets.timing import median_seconds

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
ROOT = Path(__file__).resolve().parent.parent


def median_ms(fn, repeats: int) -> float:
    """One warm-up call (MKL allocates its buffers on the first sparse call), then the median."""
    return 1e3 * median_seconds(fn, repeats, warmup=1)


def bench_sparsity(sparsity: float, n: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    mask = torch.rand(n, n) >= sparsity
    dense = nn.Linear(n, n)
    with torch.no_grad():
        dense.weight.mul_(mask)
    sparse = SparseLinear.from_dense(dense, mask)
    x = torch.randn(batch, n)
    g = torch.randn(batch, n)
    x_req = x.clone().requires_grad_(True)

    def fwd_bwd(layer, inp):
        def run():
            layer.zero_grad(set_to_none=True)
            inp.grad = None
            layer(inp).backward(g)
        return run

    s = sparse
    csr32 = torch.sparse_csr_tensor(
        s.crow_indices, s.col_indices, s.values.detach(), (n, n), check_invariants=False
    )
    csr64 = torch.sparse_csr_tensor(
        s.crow_indices.long(), s.col_indices.long(), s.values.detach(), (n, n), check_invariants=False
    )
    flat = (s.mask().view(-1).nonzero().squeeze(1))
    r = {"sparsity": sparsity, "nnz": s.nnz}
    with torch.no_grad():
        r["dense_fwd"] = median_ms(lambda: dense(x), repeats)
        r["sparse_fwd"] = median_ms(lambda: sparse(x), repeats)
        r["csr_mm_int32"] = median_ms(lambda: torch.sparse.mm(csr32, x.t()), repeats)
        r["csr_mm_int64"] = median_ms(lambda: torch.sparse.mm(csr64, x.t()), repeats)
        r["dW_dense"] = median_ms(lambda: g.t() @ x, repeats)
        r["dW_sampled_addmm"] = median_ms(
            lambda: torch.sparse.sampled_addmm(csr32, g.t(), x, beta=0.0).values(), repeats
        )
        r["dW_dense_gather"] = median_ms(lambda: (g.t() @ x).view(-1)[flat], repeats)
        if sparsity >= 0.99:
            rows, cols = flat // n, flat % n
            gt, xt = g.t().contiguous(), x.t().contiguous()

            def gather_rows(chunk=65536):
                out = torch.empty(rows.numel())
                for i in range(0, rows.numel(), chunk):
                    out[i : i + chunk] = (gt[rows[i : i + chunk]] * xt[cols[i : i + chunk]]).sum(1)
                return out

            r["dW_gather_rows"] = median_ms(gather_rows, max(3, repeats // 2))
        # layout pitfall: the next (dense) layer fed a column-major view vs row-major output
        head = nn.Linear(n, 10)
        col_major = torch.sparse.mm(csr32, x.t()).t()
        r["head_on_colmajor"] = median_ms(lambda: head(col_major), repeats)
        r["head_on_rowmajor"] = median_ms(lambda: head(col_major.contiguous()), repeats)
        r["rowmajor_copy"] = median_ms(lambda: col_major.contiguous(), repeats)
    lib = kernels.library()
    if lib is not None:
        tile = kernels.DEFAULT_TILE
        xp, _ = kernels.pack(lib, x, tile)
        gp, _ = kernels.pack(lib, g, tile)
        r["native_pack"] = median_ms(lambda: kernels.pack(lib, x, tile), repeats)
        r["native_fwd"] = median_ms(
            lambda: kernels.spmm(lib, s.crow_indices, s.col_indices, s.values.detach(), None,
                                 s.bias.detach(), xp, batch, tile), repeats)
        r["native_dW"] = median_ms(
            lambda: kernels.sddmm(lib, s.crow_indices, s.col_indices, gp, xp, tile), repeats)
        r["native_dX"] = median_ms(
            lambda: kernels.spmm(lib, s.t_crow_indices, s.t_col_indices, s.values.detach(), s.perm,
                                 None, gp, batch, tile), repeats)
    r["dense_fwd_bwd"] = median_ms(fwd_bwd(dense, x_req), repeats)
    r["sparse_fwd_bwd"] = median_ms(fwd_bwd(sparse, x_req), repeats)
    r["sparse_fwd_bwd_no_input_grad"] = median_ms(fwd_bwd(sparse, x), repeats)
    previous = os.environ.get("SPARSENETS_SPARSE_KERNELS")
    os.environ["SPARSENETS_SPARSE_KERNELS"] = "torch"
    try:
        r["torchcsr_fwd_bwd"] = median_ms(fwd_bwd(sparse, x_req), repeats)
    finally:
        if previous is None:
            del os.environ["SPARSENETS_SPARSE_KERNELS"]
        else:
            os.environ["SPARSENETS_SPARSE_KERNELS"] = previous
    r["speedup_fwd_bwd"] = r["dense_fwd_bwd"] / r["sparse_fwd_bwd"]
    r["speedup_csr_mm"] = r["dense_fwd"] / r["csr_mm_int32"]
    r["speedup_dW_sampled"] = r["dW_dense"] / r["dW_sampled_addmm"]
    return r


COLUMNS = [
    ("sparsity", "sparsity", "{:.2f}"),
    ("dense_fwd_bwd", "dense f+b", "{:.1f}"),
    ("sparse_fwd_bwd", "sparse f+b", "{:.1f}"),
    ("speedup_fwd_bwd", "x", "{:.1f}"),
    ("sparse_fwd_bwd_no_input_grad", "f+b no dX", "{:.1f}"),
    ("torchcsr_fwd_bwd", "torchCSR f+b", "{:.1f}"),
    ("dense_fwd", "dense fwd", "{:.1f}"),
    ("sparse_fwd", "sparse fwd", "{:.1f}"),
    ("csr_mm_int32", "csr mm i32", "{:.1f}"),
    ("csr_mm_int64", "csr mm i64", "{:.1f}"),
    ("speedup_csr_mm", "x", "{:.1f}"),
    ("dW_dense", "dW dense", "{:.1f}"),
    ("dW_sampled_addmm", "dW sampled", "{:.1f}"),
    ("dW_dense_gather", "dW dns+gath", "{:.1f}"),
    ("dW_gather_rows", "dW rowgath", "{:.0f}"),
    ("native_pack", "nat pack", "{:.2f}"),
    ("native_fwd", "nat fwd", "{:.2f}"),
    ("native_dW", "nat dW", "{:.2f}"),
    ("native_dX", "nat dX", "{:.2f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "sparse_kernels.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = [bench_sparsity(s, args.size, args.batch, args.repeats) for s in args.sparsities]
    load_after = os.getloadavg()
    print(f"{args.size}x{args.size} layer, batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeats} (ms); load avg before {load_before[0]:.2f}, after {load_after[0]:.2f}")
    print(" | ".join(h for _, h, _ in COLUMNS))
    for r in results:
        print(" | ".join(f.format(r[k]) if k in r else "-" for k, _, f in COLUMNS))
    print("layout pitfall (ms): next Linear(4096->10) on column-major view | on row-major | copy")
    for r in results:
        print(f"  {r['sparsity']:.2f}: {r['head_on_colmajor']:.2f} | {r['head_on_rowmajor']:.2f} "
              f"| {r['rowmajor_copy']:.2f}")
    write_json(args.out, {
        "config": vars(args) | {"torch": torch.__version__, "machine": platform.machine(),
                                "loadavg_before": load_before, "loadavg_after": load_after},
        "results": results,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
