"""The issue's targets (issue 10), each judged against the measurements of this run.

Per (model, sparsity): sparse not slower than sparselab and (at >= 90%) than masked; at 99%
sparse >= 10x faster than masked on "wide" and >= 4x on "nerva"; on "wide" at 99% sparse >= 1.5x
faster than sparselab, training memory <= 25% of masked and below sparselab; ``auto`` /
``auto-torch`` not slower (10% counts as a tie) than the system it chose, or within 10% of the
faster single backend for a per-layer mix; sparse test accuracy within 0.5 points of masked.
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
        acc = {k: v.get("test_acc") for k, v in systems.items()}
        if acc.get("sparse") is not None and acc.get("masked") is not None:
            check(
                f"{where}: sparse test accuracy within 0.5 points of masked",
                abs(acc["sparse"] - acc["masked"]) <= 0.005,
                f"{acc['sparse']:.4f} vs {acc['masked']:.4f}",
            )
    return checks
