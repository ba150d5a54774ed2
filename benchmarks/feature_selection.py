"""Feature selection with sparse networks vs scikit-learn baselines, offline, on four data sets.

Selectors (``sparsenets.featsel``) and baselines, compared within their group:

* supervised: NeuroFS, NeuronAttribution(mode="supervised") against SelectKBest(f_classif),
  SelectKBest(mutual_info_classif) and random-forest importance (top-K ``feature_importances_``
  of a RandomForestClassifier, 100 trees);
* unsupervised: QuickSelection, WAST, NeuronAttribution(mode="unsupervised") against top-K
  variance (on the raw, unstandardized data), random K (seeded) and the dense autoencoder
  (``QuickSelection(density=1.0, backend="masked")``: same width and training, strength-ranked).

Every method fits on the raw training matrix: the sparsenets selectors scale it themselves (their
default ``standardize``: ``"global"`` for the unsupervised ones, ``"feature"`` for the supervised
ones), the variance baseline reads the raw values, and f_classif, mutual information and forests
do not depend on a feature's scale (``--input standardized`` gives those three the columns
standardized with training statistics instead). The downstream classifiers see the K selected
columns standardized with training statistics. Data sets (all offline):

* ``madelon``: ``make_classification(2600, 500, n_informative=5, n_redundant=15,
  n_clusters_per_class=16, shuffle=False)`` with a seeded column permutation (the 20 relevant
  columns are known), 2000/600 train/test, K=20;
* ``digits``: scikit-learn's 8x8 digits, a seeded stratified 75/25 split, K=20;
* ``fashion_mnist``: a seeded subsample of ``--fashion-train`` (10,000) training images for the
  selection and the downstream training, the full 10,000 test images for evaluation, K=50;
* ``wide``: ``make_classification(2000, 20000, n_informative=30, n_redundant=10)`` with a seeded
  column permutation, 1500/500 train/test, K=50; for cost: QuickSelection on
  ``backend="sparse"`` against the dense autoencoder, plus the cheap baselines.

Measured per (data set, seed, method): test accuracy of ExtraTreesClassifier(n_estimators=50)
and of 5-NN on the K selected columns, recall of the relevant features (synthetic sets), fit
wall time and peak memory. Every fit runs in a fresh child process (multiprocessing
``forkserver``: the server has only imported the libraries; each fit is a new process that
loads its data from .npy files), and peak memory is the high-water mark of the RSS during
``fit`` (``VmHWM``, reset through ``/proc/self/clear_refs`` after the data is loaded) minus the
RSS just before ``fit``. The best sparse selector on Madelon (highest recall) is fitted a second
time with the same ``random_state`` to check that its support is identical.

Prints a table per data set, writes JSON (atomically) and PNGs (the selected Fashion-MNIST
pixels of every method; accuracy vs fit time).

    .venv/bin/python benchmarks/feature_selection.py --markdown           # full run (~30 min)
    .venv/bin/python benchmarks/feature_selection.py --quick              # smoke test (<2 min)
    .venv/bin/python benchmarks/feature_selection.py --datasets madelon --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine_info import cpu_model

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
IMG = ROOT / "docs" / "img"
DATASETS = ("madelon", "digits", "fashion_mnist", "wide")

SUPERVISED = ("neurofs", "attribution-sup", "f_classif", "mutual_info", "random_forest")
UNSUPERVISED = ("quickselection", "wast", "attribution-unsup", "variance", "random", "dense_ae")
SPARSE = ("neurofs", "attribution-sup", "quickselection", "quickselection-sparse", "wast", "attribution-unsup")
# The wide set is about cost: the sparse-backend QuickSelection, its dense twin, cheap baselines.
WIDE_METHODS = ("quickselection-sparse", "dense_ae", "f_classif", "variance", "random")
GROUP = {m: "supervised" for m in SUPERVISED} | {m: "unsupervised" for m in (*UNSUPERVISED, "quickselection-sparse")}
# Which epoch budget a method uses (the dense autoencoder gets QuickSelection's).
EPOCH_KEY = {"neurofs": "neurofs", "attribution-sup": "attribution", "attribution-unsup": "attribution",
             "quickselection": "quickselection", "quickselection-sparse": "quickselection",
             "dense_ae": "quickselection", "wast": "wast"}
DEFAULT_EPOCHS = {"quickselection": 10, "wast": 10, "neurofs": 100, "attribution": 10}
# Full run: the selectors' default epochs everywhere. Measured on 2 idle cores, one NeuroFS epoch on
# the 10,000 Fashion-MNIST images takes ~0.7 s (100 epochs ~70 s), one WAST epoch ~3 s; on a
# loaded machine both were up to 10x slower (see results.md). Lower them with --epochs KEY=E.
FULL_EPOCHS = {
    "madelon": DEFAULT_EPOCHS,
    "digits": DEFAULT_EPOCHS,
    "fashion_mnist": DEFAULT_EPOCHS,
    "wide": {"quickselection": 10},
}
QUICK_EPOCHS = {"quickselection": 2, "wast": 1, "neurofs": 2, "attribution": 2}
QUICK_SIZES = {"fashion_train": 500, "fashion_test": 1000, "madelon_samples": 700, "madelon_train": 500,
               "wide_features": 3000, "wide_samples": 600, "wide_train": 450}


# ------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------
def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(0)
    std = train.std(0)
    std[std == 0] = 1.0
    return (train - mean) / std, (test - mean) / std


def _synthetic(n_samples, n_features, n_informative, n_redundant, n_train, seed, **kw) -> dict:
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=n_samples, n_features=n_features, n_informative=n_informative,
                               n_redundant=n_redundant, n_repeated=0, shuffle=False, random_state=seed, **kw)
    rng = np.random.RandomState(seed + 1000)
    perm = rng.permutation(n_features)  # new column j is old column perm[j]
    x = x[:, perm]
    relevant = np.flatnonzero(perm < n_informative + n_redundant)
    order = rng.permutation(n_samples)  # make_classification with shuffle=False sorts by cluster
    tr, te = order[:n_train], order[n_train:]
    raw_train = x[tr]
    x_train, x_test = _standardize(raw_train, x[te])
    return {"x_train": x_train, "y_train": y[tr], "x_test": x_test, "y_test": y[te], "raw_train": raw_train,
            "relevant": relevant}


def load(name: str, seed: int, args: argparse.Namespace) -> dict:
    """One data set for one seed: standardized train/test, raw train (variance), relevant columns."""
    q = QUICK_SIZES if args.quick else {}
    if name == "madelon":
        n = q.get("madelon_samples", 2600)
        data = _synthetic(n, 500, 5, 15, q.get("madelon_train", 2000), seed, n_clusters_per_class=16)
        data |= {"k": 20, "note": f"make_classification({n}, 500, 5 informative + 15 redundant, "
                                  f"16 clusters/class), seeded column permutation, "
                                  f"{len(data['y_train'])}/{len(data['y_test'])} train/test"}
    elif name == "wide":
        d, n, n_train = (q.get("wide_features", args.wide_features), q.get("wide_samples", 2000),
                         q.get("wide_train", 1500))
        data = _synthetic(n, d, 30, 10, n_train, seed)
        data |= {"k": 50, "note": f"make_classification({n}, {d}, 30 informative + 10 redundant), seeded "
                                  f"column permutation, {n_train}/{n - n_train} train/test"}
    elif name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        raw_tr, raw_te, y_tr, y_te = train_test_split(bunch.data.astype(np.float64), bunch.target, test_size=0.25,
                                                      stratify=bunch.target, random_state=seed)
        x_tr, x_te = _standardize(raw_tr, raw_te)
        data = {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te, "raw_train": raw_tr,
                "relevant": None, "k": 20,
                "note": f"sklearn load_digits, stratified split {len(y_tr)}/{len(y_te)} (seed {seed})"}
    elif name == "fashion_mnist":
        from sparsenets.data.fashion_mnist import MEAN, STD
        from sparsenets.data.registry import load_dataset

        ds = load_dataset("fashion_mnist")
        x_all = ds.x_train.reshape(len(ds.x_train), -1).double().numpy()
        y_all = ds.y_train.numpy()
        n_train = q.get("fashion_train", args.fashion_train)
        n_test = q.get("fashion_test", len(ds.x_test))
        pick = np.random.RandomState(seed).permutation(len(x_all))[:n_train]
        raw_tr = x_all[pick] * STD + MEAN  # back to pixel/255: the loader standardizes by a scalar
        raw_te = ds.x_test.reshape(len(ds.x_test), -1).double().numpy()[:n_test] * STD + MEAN
        x_tr, x_te = _standardize(raw_tr, raw_te)
        data = {"x_train": x_tr, "y_train": y_all[pick], "x_test": x_te, "y_test": ds.y_test.numpy()[:n_test],
                "raw_train": raw_tr, "relevant": None, "k": 50,
                "note": f"seeded subsample of {n_train} of the 60,000 training images (selection and "
                        f"downstream training), first {n_test} test images (evaluation)"}
    else:
        raise ValueError(name)
    return data


# ------------------------------------------------------------------------------------------
# the fit, in a child process
# ------------------------------------------------------------------------------------------
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_method(method: str, k: int, seed: int, epochs: int | None, threads: int):
    """The estimator of ``method``; the variance and random baselines are functions of X."""
    from functools import partial

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.feature_selection import (
        SelectFromModel,
        SelectKBest,
        f_classif,
        mutual_info_classif,
    )

    from sparsenets.featsel import WAST, NeuroFS, NeuronAttribution, QuickSelection

    common = {"random_state": seed, "epochs": epochs}
    if method == "neurofs":
        return NeuroFS(k, **common)
    if method == "attribution-sup":
        return NeuronAttribution(k, mode="supervised", **common)
    if method == "attribution-unsup":
        return NeuronAttribution(k, mode="unsupervised", **common)
    if method == "quickselection":
        return QuickSelection(k, **common)
    if method == "quickselection-sparse":
        return QuickSelection(k, backend="sparse", **common)
    if method == "dense_ae":
        return QuickSelection(k, density=1.0, backend="masked", **common)
    if method == "wast":
        return WAST(k, **common)
    if method == "f_classif":
        return SelectKBest(f_classif, k=k)
    if method == "mutual_info":
        return SelectKBest(partial(mutual_info_classif, random_state=seed, n_jobs=threads), k=k)
    if method == "random_forest":
        forest = RandomForestClassifier(n_estimators=100, random_state=seed, n_jobs=threads)
        return SelectFromModel(forest, max_features=k, threshold=-np.inf)
    if method == "variance":
        return lambda raw: np.argsort(-raw.var(0), kind="stable")[:k]
    if method == "random":
        return lambda raw: np.sort(np.random.RandomState(seed).choice(raw.shape[1], k, replace=False))
    raise ValueError(method)


#: methods that are sparsenets selectors: they receive the raw training data
SELF_SCALING = ("neurofs", "attribution-sup", "attribution-unsup", "quickselection",
                "quickselection-sparse", "dense_ae", "wast")


def fit_worker(spec: dict, conn) -> None:
    """Fit one method on the data in ``spec["dir"]`` and send back its support, time and memory."""
    try:
        import joblib
        import torch

        torch.set_num_threads(spec["threads"])
        folder = Path(spec["dir"])
        # The sparse-network selectors scale X themselves (their `standardize` default: global
        # for the unsupervised ones, per column for the supervised ones), so they get raw data.
        raw = spec["method"] in ("variance", "random") or spec["method"] in SELF_SCALING
        x = np.load(folder / ("raw_train.npy" if raw else "x_fit.npy"))
        y = np.load(folder / "y_train.npy")
        est = make_method(spec["method"], spec["k"], spec["seed"], spec["epochs"], spec["threads"])
        gc.collect()
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        rss_before = _rss_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # reset VmHWM to the current RSS
            reset = True
        except OSError:
            reset = False
        started = time.perf_counter()
        if callable(est) and not hasattr(est, "fit"):
            support = np.asarray(est(x))
            fitted = None
        else:
            # joblib threads, not loky processes: an idle loky pool keeps the child alive 300 s
            with joblib.parallel_config(backend="threading"):
                fitted = est.fit(x, y)
            support = np.flatnonzero(fitted.get_support())
        seconds = time.perf_counter() - started
        peak = _rss_kib("VmHWM")
        result = {"support": [int(i) for i in support], "fit_seconds": seconds,
                  "peak_mib": (peak - rss_before) / 1024, "rss_before_mib": rss_before / 1024, "hwm_reset": reset}
        if fitted is not None and hasattr(fitted, "history_"):
            result["history"] = [float(v) for v in fitted.history_]
            result["selector_fit_seconds"] = float(fitted.fit_seconds_)
            sp = fitted.sparsifier_
            result["backends"] = dict(sp.backends) if sp is not None else "dense (masked, no sparsifier)"
        if spec.get("scores") and fitted is not None and hasattr(fitted, "scores_"):
            result["scores"] = [float(v) for v in fitted.scores_]
        conn.send(result)
    except Exception as error:  # reported in the row, the benchmark goes on
        import traceback

        conn.send({"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()})
    finally:
        conn.close()


def check_determinism(ctx, rows: list[dict], folder: Path, k: int, seed: int, threads: int) -> dict | None:
    """Refit the best sparse selector on Madelon (highest recall) with the same random_state."""
    cands = [r for r in rows if r["dataset"] == "madelon" and r["seed"] == seed and r["method"] in SPARSE
             and "recall" in r]
    if not cands:
        return None
    top = max(cands, key=lambda r: (r["recall"], r["et_accuracy"]))
    spec = {"dir": str(folder), "method": top["method"], "k": k, "seed": seed, "epochs": top["epochs"],
            "threads": threads, "scores": True}
    again = run_fit(ctx, spec)
    out = {"method": top["method"], "seed": seed, "epochs": top["epochs"], "fits": 2}
    if "error" in again:
        out["error"] = again["error"]
    else:
        out["identical_support"] = again["support"] == top["support"]
        out["max_score_difference"] = float(np.max(np.abs(np.subtract(again["scores"], top["scores"]))))
        out["refit_seconds"] = again["fit_seconds"]
    print(f"determinism: {out}", file=sys.stderr, flush=True)
    return out


def run_fit(ctx, spec: dict) -> dict:
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=fit_worker, args=(spec, child))
    proc.start()
    child.close()
    try:
        result = parent.recv()
    except EOFError:
        result = {"error": "the child process died without a result"}
    proc.join()
    if proc.exitcode not in (0, None) and "error" not in result:
        result["error"] = f"child exit code {proc.exitcode}"
    return result


# ------------------------------------------------------------------------------------------
# evaluation and reports
# ------------------------------------------------------------------------------------------
def downstream(data: dict, support: list[int], seed: int, threads: int) -> dict:
    from sklearn.ensemble import ExtraTreesClassifier
    from sklearn.neighbors import KNeighborsClassifier

    cols = np.asarray(support, dtype=int)
    xtr, xte = data["x_train"][:, cols], data["x_test"][:, cols]
    trees = ExtraTreesClassifier(n_estimators=50, random_state=seed, n_jobs=threads).fit(xtr, data["y_train"])
    knn = KNeighborsClassifier(n_neighbors=5).fit(xtr, data["y_train"])
    out = {"et_accuracy": float(trees.score(xte, data["y_test"])),
           "knn_accuracy": float(knn.score(xte, data["y_test"]))}
    if data["relevant"] is not None:
        out["recall"] = len(set(cols.tolist()) & set(data["relevant"].tolist())) / len(data["relevant"])
    return out


def methods_for(dataset: str, wanted: list[str] | None) -> list[str]:
    base = list(WIDE_METHODS) if dataset == "wide" else [*SUPERVISED, *UNSUPERVISED]
    return [m for m in base if wanted is None or m in wanted]


def _agg(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std()) if len(arr) > 1 else 0.0


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (data set, method): means (and std) over the seeds."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["dataset"] == dataset):
            rs = [r for r in rows if r["dataset"] == dataset and r["method"] == method and "error" not in r]
            line = {"dataset": dataset, "method": method, "group": GROUP[method], "seeds": len(rs)}
            line["epochs"] = next((r.get("epochs") for r in rows if r["dataset"] == dataset and r["method"] == method), None)
            if not rs:
                line["error"] = next(r["error"] for r in rows if r["dataset"] == dataset and r["method"] == method)
                out.append(line)
                continue
            for key in ("et_accuracy", "knn_accuracy", "recall", "fit_seconds", "peak_mib"):
                if key in rs[0]:
                    line[key], line[key + "_std"] = _agg([r[key] for r in rs])
            out.append(line)
    return out


def _cell(line: dict, key: str, fmt: str) -> str:
    if key not in line:
        return "-"
    text = format(line[key], fmt)
    if line.get("seeds", 1) > 1:
        text += f" ± {format(line[key + '_std'], fmt)}"
    return text


def format_tables(summary: list[dict], meta: dict, markdown: bool) -> str:
    lines = []
    for dataset in dict.fromkeys(s["dataset"] for s in summary):
        info = meta[dataset]
        fit_on = ("every method fits on the raw training matrix" if meta["_input"] == "raw" else
                  "the scikit-learn selectors fit on the standardized training matrix, the others on the raw one")
        lines.append(f"{dataset}: K={info['k']}, {info['n_features']} features; {info['note']}; {fit_on}")
        lines.append("")
        header = ["group", "method", "epochs", "ExtraTrees acc", "5-NN acc", "recall", "fit s", "peak MiB"]
        body = []
        for group in ("supervised", "unsupervised"):
            for s in (s for s in summary if s["dataset"] == dataset and s["group"] == group):
                if "error" in s:
                    body.append([group, s["method"], str(s["epochs"] or "-"), f"ERROR: {s['error']}", "", "", "", ""])
                    continue
                body.append([group, s["method"], str(s["epochs"] or "-"), _cell(s, "et_accuracy", ".4f"),
                             _cell(s, "knn_accuracy", ".4f"), _cell(s, "recall", ".2f"),
                             _cell(s, "fit_seconds", ".2f"), _cell(s, "peak_mib", ".1f")])
        if markdown:
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
        else:
            widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(header)]
            fmt = "  ".join(f"{{:<{w}}}" for w in widths)
            lines += [fmt.format(*header)] + [fmt.format(*row) for row in body]
        lines.append("")
    return "\n".join(lines)


def best(summary: list[dict], dataset: str, methods, key: str) -> dict | None:
    cands = [s for s in summary if s["dataset"] == dataset and s["method"] in methods and key in s]
    return max(cands, key=lambda s: s[key]) if cands else None


def claims(summary: list[dict], determinism: dict | None) -> list[dict]:
    """The three claims of the brief, as measured."""
    out = []

    def get(dataset, method):
        return next((s for s in summary if s["dataset"] == dataset and s["method"] == method and "error" not in s), None)

    sparse_mad = [s for s in summary if s["dataset"] == "madelon" and s["method"] in SPARSE and "recall" in s]
    if sparse_mad:
        top = max(sparse_mad, key=lambda s: (s["recall"], s["et_accuracy"]))
        det = determinism or {}
        out.append({"claim": "(a) best sparse selector recovers >= 80% of the 20 relevant Madelon features and is "
                             "deterministic under random_state",
                    "pass": bool(top["recall"] >= 0.8 and det.get("identical_support", False)),
                    "measured": f"{top['method']} recall {top['recall']:.2f}; same support on refit: "
                                f"{det.get('identical_support')}; all: "
                                + ", ".join(f"{s['method']} {s['recall']:.2f}" for s in sparse_mad)})
    for metric in ("et_accuracy", "knn_accuracy"):
        nfs, qs = get("fashion_mnist", "neurofs"), get("fashion_mnist", "quickselection")
        sup = best(summary, "fashion_mnist", ("f_classif", "mutual_info", "random_forest"), metric)
        uns = best(summary, "fashion_mnist", ("variance", "random", "dense_ae"), metric)
        if nfs and sup and qs and uns:
            out.append({"claim": f"(b) Fashion-MNIST K=50, {metric}: NeuroFS >= best supervised baseline and "
                                 f"QuickSelection >= best unsupervised baseline",
                        "pass": bool(nfs[metric] >= sup[metric] and qs[metric] >= uns[metric]),
                        "measured": f"NeuroFS {nfs[metric]:.4f} vs {sup['method']} {sup[metric]:.4f}; "
                                    f"QuickSelection {qs[metric]:.4f} vs {uns['method']} {uns[metric]:.4f}"})
    qs, dense = get("wide", "quickselection-sparse"), get("wide", "dense_ae")
    if qs and dense:
        out.append({"claim": "(c) wide set: QuickSelection (sparse backend) fits in less time and less peak memory "
                             "than the dense autoencoder",
                    "pass": bool(qs["fit_seconds"] < dense["fit_seconds"] and qs["peak_mib"] < dense["peak_mib"]),
                    "measured": f"fit {qs['fit_seconds']:.1f} s vs {dense['fit_seconds']:.1f} s "
                                f"({dense['fit_seconds'] / qs['fit_seconds']:.1f}x); peak {qs['peak_mib']:.0f} MiB vs "
                                f"{dense['peak_mib']:.0f} MiB; recall {qs.get('recall', float('nan')):.2f} vs "
                                f"{dense.get('recall', float('nan')):.2f}"})
    return out


def plot_pixels(rows: list[dict], path: Path, seed: int, background: np.ndarray | None = None) -> Path | None:
    """One 28x28 panel per method: the K selected pixels (red) over the mean training image (grey)."""
    from sparsenets.plots import _pyplot

    rs = [r for r in rows if r["dataset"] == "fashion_mnist" and r["seed"] == seed and "error" not in r]
    if not rs:
        return None
    back = np.zeros(784) if background is None else np.asarray(background, dtype=float).ravel()
    back = 0.85 - 0.45 * (back - back.min()) / max(float(np.ptp(back)), 1e-12)  # light grey, darker = brighter pixel
    plt = _pyplot()
    groups = [[r for r in rs if GROUP[r["method"]] == g] for g in ("supervised", "unsupervised")]
    ncols = max(len(g) for g in groups)
    fig, axes = plt.subplots(2, ncols, figsize=(2.1 * ncols, 4.8), squeeze=False)
    for row_axes, group in zip(axes, groups):
        for ax in row_axes:
            ax.axis("off")
        for ax, r in zip(row_axes, group):
            rgb = np.repeat(back[:, None], 3, axis=1)
            rgb[r["support"]] = (0.85, 0.1, 0.1)
            ax.imshow(rgb.reshape(28, 28, 3), interpolation="nearest")
            ax.set_title(f"{r['method']}\nET {r['et_accuracy']:.3f}", fontsize=8)
            ax.axis("on")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"Fashion-MNIST: the K=50 selected pixels (red) over the mean training image, seed {seed}; "
                 f"top: supervised, bottom: unsupervised; ET = ExtraTrees test accuracy", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_accuracy_time(summary: list[dict], path: Path) -> Path | None:
    from sparsenets.plots import _pyplot

    datasets = list(dict.fromkeys(s["dataset"] for s in summary if "error" not in s))
    if not datasets:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4.0), squeeze=False)
    fig.subplots_adjust(wspace=0.35)
    for ax, dataset in zip(axes[0], datasets):
        for s in (s for s in summary if s["dataset"] == dataset and "error" not in s):
            sup = s["group"] == "supervised"
            ax.scatter(max(s["fit_seconds"], 1e-3), s["et_accuracy"], marker="o" if sup else "s",
                       color=("tab:red" if s["method"] in SPARSE else "tab:blue"))
            ax.annotate(s["method"], (max(s["fit_seconds"], 1e-3), s["et_accuracy"]), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(title=dataset, xlabel="fit s (log)", ylabel="ExtraTrees test accuracy")
        ax.grid(alpha=0.3)
    fig.suptitle("red: sparse-network selectors, blue: baselines; circle: supervised, square: unsupervised",
                 fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def git_state() -> dict:
    """The commit measured, and whether the selectors' sources differed from it."""
    import subprocess

    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    return {"commit": git("rev-parse", "HEAD"),
            "src_modified": git("status", "--porcelain", "--", "src") or ""}


# ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=None, help="only these methods (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="random_state of every selector, baseline and split (default one seed: time budget)")
    parser.add_argument("--epochs", nargs="+", default=[], metavar="KEY=E",
                        help="override epochs for all data sets, KEY in quickselection, wast, neurofs, attribution")
    parser.add_argument("--fashion-train", type=int, default=10000, help="Fashion-MNIST training subsample")
    parser.add_argument("--wide-features", type=int, default=20000)
    parser.add_argument("--input", choices=("raw", "standardized"), default="raw",
                        help="what the scikit-learn selectors (f_classif, mutual information, random forest) fit "
                             "on: the raw training matrix (default) or its columns standardized with training "
                             "statistics; the sparsenets selectors always get the raw matrix (they scale it "
                             "themselves) and the variance baseline the raw values")
    parser.add_argument("--threads", type=int, default=2, help="torch / scikit-learn threads per fit")
    parser.add_argument("--quick", action="store_true", help="tiny subsets and few epochs (smoke test, < 2 min)")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=None, help="default benchmarks/out/feature_selection.json "
                                                     "(.quick.json with --quick)")
    parser.add_argument("--img-dir", default=None, help="default docs/img (benchmarks/out with --quick)")
    parser.add_argument("--replot", metavar="JSON", default=None,
                        help="only redraw the PNGs from a finished run's JSON (into --img-dir)")
    args = parser.parse_args(argv)
    if args.replot:
        done = json.loads(Path(args.replot).read_text())
        img_dir = Path(args.img_dir) if args.img_dir else IMG
        fashion = done["datasets"].get("fashion_mnist", {})
        made = [plot_pixels(done["rows"], img_dir / "featsel_fashion_mnist.png", done["args"]["seeds"][0],
                            fashion.get("mean_image_seed0")) if fashion else None,
                plot_accuracy_time(done["summary"], img_dir / "featsel_accuracy_time.png")]
        print("wrote " + ", ".join(str(p) for p in made if p))
        return 0
    json_path = Path(args.json or OUT / ("feature_selection.quick.json" if args.quick else "feature_selection.json"))
    img_dir = Path(args.img_dir) if args.img_dir else (OUT if args.quick else IMG)
    prefix = "feature_selection.quick_" if args.quick else "featsel_"
    overrides = {}
    for item in args.epochs:
        key, _, value = item.partition("=")
        if key not in DEFAULT_EPOCHS or not value.isdigit():
            parser.error(f"--epochs wants KEY=E with KEY in {', '.join(DEFAULT_EPOCHS)}, got {item!r}")
        overrides[key] = int(value)

    import sklearn
    import torch

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["numpy", "torch", "sklearn.ensemble", "sklearn.feature_selection",
                                "sparsenets.featsel"])
    started = time.perf_counter()
    load_start = os.getloadavg()
    rows: list[dict] = []
    meta: dict = {}
    determinism = None
    input_kind = args.input
    tmp = tempfile.TemporaryDirectory(prefix="featsel-")
    try:
        for dataset in args.datasets:
            for seed in args.seeds:
                data = load(dataset, seed, args)
                folder = Path(tmp.name) / f"{dataset}-{seed}"
                folder.mkdir()
                for key in ("y_train", "raw_train"):
                    np.save(folder / f"{key}.npy", np.ascontiguousarray(data[key]))
                fit_x = data["raw_train"] if args.input == "raw" else data["x_train"]
                np.save(folder / "x_fit.npy", np.ascontiguousarray(fit_x))
                meta[dataset] = {"k": data["k"], "n_features": data["x_train"].shape[1],
                                 "n_train": len(data["y_train"]), "n_test": len(data["y_test"]),
                                 "n_relevant": None if data["relevant"] is None else len(data["relevant"]),
                                 "note": data["note"]}
                if seed == args.seeds[0]:
                    meta[dataset]["relevant_seed0"] = None if data["relevant"] is None else data["relevant"].tolist()
                    if dataset == "fashion_mnist":
                        meta[dataset]["mean_image_seed0"] = [round(float(v), 5) for v in data["raw_train"].mean(0)]
                budget = QUICK_EPOCHS if args.quick else FULL_EPOCHS[dataset]
                for method in methods_for(dataset, args.methods):
                    key = EPOCH_KEY.get(method)
                    epochs = None if key is None else overrides.get(key, budget.get(key, DEFAULT_EPOCHS[key]))
                    spec = {"dir": str(folder), "method": method, "k": data["k"], "seed": seed, "epochs": epochs,
                            "threads": args.threads, "scores": dataset == "madelon" and method in SPARSE}
                    result = run_fit(ctx, spec)
                    row = {"dataset": dataset, "seed": seed, "method": method, "group": GROUP[method],
                           "epochs": epochs, **result}
                    if "error" not in result:
                        row |= downstream(data, result["support"], seed, args.threads)
                    rows.append(row)
                    shown = ("ERROR " + result["error"]) if "error" in result else (
                        f"ET {row['et_accuracy']:.4f} kNN {row['knn_accuracy']:.4f}"
                        + (f" recall {row['recall']:.2f}" if "recall" in row else "")
                        + f" fit {row['fit_seconds']:.1f}s peak {row['peak_mib']:.0f}MiB")
                    print(f"[{time.perf_counter() - started:6.0f}s] {dataset} seed {seed} {method} "
                          f"(epochs {epochs}): {shown}", file=sys.stderr, flush=True)
                if dataset == "madelon" and seed == args.seeds[0]:
                    determinism = check_determinism(ctx, rows, folder, data["k"], seed, args.threads)
                # write what we have so far (an interrupted run keeps its finished data sets)
                summary = summarize(rows)
                write_json(json_path, {"benchmark": "feature_selection", "partial": True,
                                       "rows": [{k: v for k, v in r.items() if k != "scores"} for r in rows],
                                       "summary": summary, "datasets": meta, "determinism": determinism})
    finally:
        tmp.cleanup()
    for row in rows:
        row.pop("scores", None)  # only kept for the determinism check
    summary = summarize(rows)
    found = claims(summary, determinism)
    total = time.perf_counter() - started
    pixels = (plot_pixels(rows, img_dir / f"{prefix}fashion_mnist.png", args.seeds[0],
                          meta["fashion_mnist"].get("mean_image_seed0")) if "fashion_mnist" in meta else None)
    chart = plot_accuracy_time(summary, img_dir / f"{prefix}accuracy_time.png")
    epochs_used = {d: {k: overrides.get(k, (QUICK_EPOCHS if args.quick else FULL_EPOCHS[d]).get(k, DEFAULT_EPOCHS[k]))
                       for k in DEFAULT_EPOCHS if any(EPOCH_KEY.get(m) == k for m in methods_for(d, args.methods))}
                   for d in args.datasets}
    payload = {
        "benchmark": "feature_selection", "partial": False, "args": vars(args), "torch": torch.__version__,
        "sklearn": sklearn.__version__, "threads": args.threads, "cpu_model": cpu_model(), "cpus": os.cpu_count(),
        "machine": platform.machine(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M"), "total_seconds": total, "epochs": epochs_used,
        "git": git_state(),
        "default_epochs": DEFAULT_EPOCHS,
        "notes": ["one seed by default (time budget)" if len(args.seeds) == 1 else f"{len(args.seeds)} seeds",
                  "peak_mib: VmHWM during fit minus VmRSS just before fit, fresh forkserver child per fit",
                  "the sparsenets selectors (which scale X themselves) and the variance baseline fit on the raw "
                  f"training data, the scikit-learn selectors on the {args.input} data; every downstream "
                  "classifier on the selected columns standardized with training statistics"],
        "datasets": meta, "rows": rows, "summary": summary, "determinism": determinism, "claims": found,
        "images": [str(p) for p in (pixels, chart) if p],
    }
    write_json(json_path, payload)
    print(format_tables(summary, meta | {"_input": input_kind}, args.markdown))
    if determinism:
        print(f"determinism (Madelon, {determinism['method']}, random_state={determinism['seed']}, "
              f"{determinism.get('fits')} fits): "
              f"identical support {determinism.get('identical_support')}, "
              f"max |score difference| {determinism.get('max_score_difference')}")
    for c in found:
        print(f"[{'pass' if c['pass'] else 'FAIL'}] {c['claim']}: {c['measured']}")
    print(f"{cpu_model()}, {args.threads} threads, torch {torch.__version__}, total {total / 60:.1f} min")
    print(f"JSON {json_path}" + "".join(f", {p}" for p in (pixels, chart) if p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
