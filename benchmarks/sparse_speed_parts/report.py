"""The report of a run: rounds combined into medians, the table (and its markdown), the plot.

* :func:`combine`: one result per system from its ``--rounds`` runs: the median of ``step_ms``,
  ``infer_ms``, ``rss_growth_mib``, ``first_step_ms`` and ``kernel_ms`` (each round's value kept
  as ``KEY_rounds``), everything else (memory process, accuracy, ``auto``'s choice) from round 1;
* :func:`print_table`: step / infer ms, speed-up over masked and over sparselab, training memory,
  RSS growth, test accuracy, largest output difference to masked, the bare kernels and what
  ``auto`` chose; with ``--markdown`` the same table in markdown;
* :func:`plot_results`: bar charts of step time (log scale) and training memory per model and
  sparsity (``--replot FILE.json`` redraws it from a saved run).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from .systems import LR, MODELS, MOMENTUM


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


PLOT_SYSTEMS = {  # system: (label, colour)
    "masked": ("masked (dense x mask)", "#9e9e9e"),
    "sparselab": ("sparselab 0.2.2", "#e69f00"),
    "sparse-torch": ("sparsenets, torch CSR", "#56b4e9"),
    "torch-csr": ("plain torch-CSR layer", "#cc79a7"),
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
                per_kernel = ", ".join(
                    f"{kind} {k['ms']:.2f} ms" + (f" {k['gflops']:.0f} GFLOP/s" if k.get("gflops") else "")
                    for kind, k in r.get("per_kernel", {}).items()
                )
                lines.append(
                    (row["model"], f"{row['sparsity']:.2f}", label, _fmt(r["kernel_ms"], ".2f"),
                     f"step / kernels {r['step_ms'] / r['kernel_ms']:.2f}", per_kernel
                     + (f" [{r['kernel_plan']}]" if r.get("kernel_plan") else ""))
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
