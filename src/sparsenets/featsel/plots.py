"""The PNG of a feature selection: the scores on the image grid, or sorted, with the selected marked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..plots import _pyplot, save_png

#: Up to this many features the sorted plot is a bar chart with the feature names as ticks.
NAMED_BARS = 40


def plot_feature_scores(
    scores: np.ndarray,
    support: np.ndarray,
    path: str | Path,
    *,
    grid: tuple[int, int] | None = None,
    names: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Write a PNG of the feature scores with the selected features highlighted.

    Args:
        scores: ``(d,)`` importance per feature (non-finite values are drawn at the lowest score).
        support: ``(d,)`` bool, the selected features.
        path: the PNG to write (atomically).
        grid: ``(height, width)`` with ``height · width = d`` for image data: a heat map of the
            scores on the pixel grid with the selected pixels outlined. Otherwise the scores
            sorted from high to low, the selected ones in a second colour.
        names: feature names, used as tick labels of a sorted plot of at most 40 features.
        title: the plot title.
    """
    plt = _pyplot()
    scores = np.asarray(scores, dtype=np.float64)
    support = np.asarray(support, dtype=bool)
    finite = scores[np.isfinite(scores)]
    floor = float(finite.min()) if finite.size else 0.0
    shown = np.where(np.isfinite(scores), scores, floor)
    k, d = int(support.sum()), scores.size
    if grid is not None:
        height, width = grid
        fig, ax = plt.subplots(figsize=(max(4.0, 0.18 * width + 2), max(3.5, 0.18 * height + 1.5)))
        image = ax.imshow(shown.reshape(height, width), cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="score")
        rows, cols = np.divmod(np.flatnonzero(support), width)
        ax.scatter(cols, rows, marker="s", s=max(8.0, 2400.0 / max(height, width)), facecolors="none",
                   edgecolors="tab:red", linewidths=1.2, label=f"selected ({k} of {d})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.02), frameon=False, fontsize=8, markerscale=0.5)
    else:
        order = np.argsort(-shown, kind="stable")
        ranked, chosen = shown[order], support[order]
        positions = np.arange(d)
        fig, ax = plt.subplots(figsize=(max(6.0, min(14.0, 0.25 * d + 2)) if d <= NAMED_BARS else 7.0, 4))
        if d <= NAMED_BARS:
            ax.bar(positions[~chosen], ranked[~chosen], color="tab:gray", label="not selected")
            ax.bar(positions[chosen], ranked[chosen], color="tab:red", label=f"selected ({k} of {d})")
            labels = [str(i) for i in order] if names is None else [str(names[i]) for i in order]
            ax.set_xticks(list(positions), labels, rotation=60, ha="right", fontsize=7)
        else:
            ax.plot(positions, ranked, color="tab:gray", linewidth=1, label="score")
            ax.scatter(positions[chosen], ranked[chosen], color="tab:red", s=10, zorder=3,
                       label=f"selected ({k} of {d})")
            ax.set_xlabel("rank")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        ax.legend()
    ax.set_title(title or "feature scores")
    return save_png(plt, fig, path)
