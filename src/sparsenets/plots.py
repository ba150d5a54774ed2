"""PNG plots of a training run: accuracy vs epoch, per-layer density, ITOP rate vs step, tickets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: str | Path, title: str, xlabel: str | None, ylabel: str) -> Path:
    """Label, grid, legend, write the PNG atomically and close the figure."""
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(plt, fig, path)


def save_png(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it (also when writing fails)."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        return Path(path)
    finally:
        plt.close(fig)


def plot_accuracy(epochs: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train and test accuracy per epoch from the per-epoch metric records."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [e["epoch"] for e in epochs]
    ax.plot(xs, [e["train_accuracy"] for e in epochs], marker="o", label="train")
    ax.plot(xs, [e["test_accuracy"] for e in epochs], marker="s", label="test")
    return _finish(plt, fig, ax, path, title or "accuracy", "epoch", "accuracy")


def plot_layer_density(layers: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Bar chart of the final density of each sparsified layer (with its ITOP rate if known)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(layers) + 2), 4))
    names = [layer["name"] for layer in layers]
    positions = range(len(names))
    ax.bar(positions, [layer["density"] for layer in layers], label="density", color="tab:blue")
    itop = [layer.get("itop_rate") for layer in layers]
    if all(v is not None for v in itop):
        ax.scatter(positions, itop, color="tab:orange", zorder=3, label="ITOP rate")
    ax.set_xticks(list(positions), names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    return _finish(plt, fig, ax, path, title or "per-layer density", None, "fraction of weights")


def plot_itop(history: Sequence[Mapping[str, Any]], initial_density: float, path: str | Path, title: str = "") -> Path:
    """Global ITOP rate (ever-active fraction) and churn after each topology update."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [0] + [h["step"] for h in history]
    ax.plot(steps, [initial_density] + [h["itop_rate"] for h in history], marker=".", label="ITOP rate")
    if history:
        ax.plot(steps[1:], [h["churn"] for h in history], linestyle="--", label="churn per update")
    return _finish(plt, fig, ax, path, title or "in-time over-parameterization", "step", "fraction")


def plot_lottery(
    rounds: Sequence[Mapping[str, Any]], path: str | Path, title: str = "", pool: Mapping[str, Any] | None = None
) -> Path:
    """Test accuracy of each lottery-ticket round against its sparsity (and of the Lottery Pool)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    sparsity = [100 * (1 - r["density"]) for r in rounds]
    ax.plot(sparsity, [r["test_accuracy"] for r in rounds], marker="o", label="ticket (rewound, retrained)")
    for r, x in zip(rounds, sparsity):
        ax.annotate(str(r["round"]), (x, r["test_accuracy"]), textcoords="offset points", xytext=(0, 5),
                    fontsize=7, ha="center")
    if pool is not None:
        ax.scatter([100 * (1 - pool["density"])], [pool["test_accuracy"]], marker="*", s=120, color="tab:red",
                   zorder=3, label="Lottery Pool")
    return _finish(plt, fig, ax, path, title or "lottery tickets: accuracy per round", "sparsity (%)", "test accuracy")
