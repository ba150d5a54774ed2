"""The issues' targets (10 and 20), each judged against the measurements of this run.

Per (model, sparsity): sparse not slower than sparselab and (at >= 90%) than masked; at 99%
sparse >= 10x faster than masked on "wide" and >= 4x on "nerva"; on "wide" at 99% sparse >= 1.5x
faster than sparselab, training memory <= 25% of masked and below sparselab; ``auto`` /
``auto-torch`` not slower (10% counts as a tie) than the system it chose, or within 10% of the
faster single backend for a per-layer mix; sparse test accuracy within 0.5 points of masked.
Issue 20, on "wide": at 99% sparse >= 2x faster than sparselab and >= 1.5x faster than the plain
torch-CSR layer (>= 1.3x at 90-95%), every native kernel >= 60 GFLOP/s at 90-95% and >= 35 at
99%, and the 99% step <= 1.5x the time of its kernels.
Each check is ``{"claim", "pass", "measured"}``; the list is ``checks`` in the JSON.
"""

from __future__ import annotations


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
        if row["model"] == "wide":  # issue 20
            if "sparselab" in step and row["sparsity"] >= 0.99:
                check(f"{where}: sparse >= 2x faster than sparselab", step["sparselab"] / sparse >= 2,
                      f"{step['sparselab'] / sparse:.2f}x")
            if "torch-csr" in step:
                need = 1.5 if row["sparsity"] >= 0.99 else 1.3
                check(f"{where}: sparse >= {need}x faster than the plain torch-CSR layer",
                      step["torch-csr"] / sparse >= need, f"{step['torch-csr']:.2f} vs {sparse:.2f} ms "
                      f"({step['torch-csr'] / sparse:.2f}x)")
            per_kernel = systems["sparse"].get("per_kernel", {})
            need = 35 if row["sparsity"] >= 0.99 else 60
            for kind in ("forward", "grad_values", "grad_input"):
                rate = per_kernel.get(kind, {}).get("gflops")
                if rate is not None:
                    check(f"{where}: {kind} kernel >= {need} GFLOP/s", rate >= need, f"{rate:.1f} GFLOP/s")
            kernel_ms = systems["sparse"].get("kernel_ms")
            if kernel_ms and row["sparsity"] >= 0.99:
                check(f"{where}: training step <= 1.5x its kernels' time", sparse <= 1.5 * kernel_ms,
                      f"{sparse:.2f} vs {kernel_ms:.2f} ms ({sparse / kernel_ms:.2f}x)")
        acc = {k: v.get("test_acc") for k, v in systems.items()}
        if acc.get("sparse") is not None and acc.get("masked") is not None:
            check(
                f"{where}: sparse test accuracy within 0.5 points of masked",
                abs(acc["sparse"] - acc["masked"]) <= 0.005,
                f"{acc['sparse']:.4f} vs {acc['masked']:.4f}",
            )
    return checks
