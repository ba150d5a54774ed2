"""``sparsenets select``: run a feature selector on a CSV, NumPy or built-in dataset and save the result.

:func:`load_input` reads the data (with one-line errors for bad files), :func:`run_select` fits
the selector and writes the run directory, :func:`format_select` is the text the CLI prints.

A run directory holds

- ``selected.txt``: the K selected features in score order, one ``index<TAB>name`` a line;
- ``scores.csv``: ``index,name,score,rank,selected`` for every feature;
- ``scores.png``: the scores on the pixel grid (image datasets) or sorted, the selected marked;
- ``summary.json``: method, K, parameters, input, sizes, fit time, device and backends
  (written last: its presence marks a finished run).
"""

from __future__ import annotations

import csv
import io
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SparsenetsError, choice_error
from ..io import check_output_dir, write_json, write_text

#: Column names taken as the labels of a CSV when a supervised method gets no --label-column.
LABEL_COLUMNS = ("label", "target", "y")
#: The attribution modes of ``--mode`` (``auto``: supervised when the input has labels).
MODES = ("auto", "supervised", "unsupervised")
#: Selector parameters that have their own option (``--set`` refuses them).
OWN_OPTIONS = {
    "n_features_to_select": "--k", "random_state": "--seed", "epochs": "--epochs",
    "backend": "--backend", "device": "--device", "verbose": "--quiet", "mode": "--mode",
}
#: Integer selector parameters that must be at least 1 (the selectors do not all check them).
POSITIVE = ("hidden", "batch_size", "attribution_samples")
FILES = {"selected": "selected.txt", "scores": "scores.csv", "plot": "scores.png", "summary": "summary.json"}
_COMPRESSED = (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar")


@dataclass
class SelectInput:
    """The data a selection runs on.

    Attributes:
        x: ``(n_samples, n_features)`` float64, finite.
        y: ``(n_samples,)`` class labels, or None.
        names: one name per feature (the CSV header, ``pixel_<row>_<col>`` for images, else ``x<j>``).
        kind: ``"csv"``, ``"npy"``, ``"npz"`` or ``"dataset"``.
        source: the INPUT as given.
        grid: ``(height, width)`` of image data, else None.
        label_column: the CSV column the labels came from, or None.
        n_total: samples before ``max_samples``.
    """

    x: np.ndarray
    y: np.ndarray | None
    names: list[str]
    kind: str
    source: str
    grid: tuple[int, int] | None = None
    label_column: str | None = None
    n_total: int = 0
    notes: list[str] = field(default_factory=list)


# -- input ------------------------------------------------------------------------------------
def load_input(
    source: str,
    *,
    label_column: str | None = None,
    want_labels: bool = False,
    data_dir: str | None = None,
) -> SelectInput:
    """Read INPUT: a CSV file, an ``.npy`` / ``.npz`` file or a built-in dataset name.

    Args:
        source: a path, or one of :data:`sparsenets.data.registry.DATASETS` (a file wins).
        label_column: the CSV column holding the labels (left out of the features).
        want_labels: look for the labels without ``label_column``: a CSV column named
            ``label``, ``target`` or ``y`` (supervised methods).
        data_dir: where the Fashion-MNIST files are.

    Raises:
        SparsenetsError: a missing, unreadable or malformed input, or one that is not numeric.
    """
    from ..data.registry import DATASETS

    path = Path(source)
    if path.is_file():
        suffix = path.suffix.lower()
        if label_column is not None and suffix in (".npy", ".npz"):
            raise SparsenetsError(f"--label-column applies to CSV input only; {source!r} is a NumPy file "
                                  f"(an .npz carries its labels as the array 'y')")
        if suffix in (".npy", ".npz"):
            data = _load_numpy(path, source)
        else:
            data = _load_csv(path, source, label_column, want_labels)
    elif source in DATASETS:
        if label_column is not None:
            raise SparsenetsError(f"--label-column applies to CSV input only; {source!r} is a built-in dataset "
                                  f"(its labels are used)")
        data = _load_dataset(source, data_dir)
    elif path.is_dir():
        raise SparsenetsError(f"INPUT {source!r} is a directory; give a CSV, .npy or .npz file "
                              f"or a built-in dataset ({', '.join(DATASETS)})")
    else:
        raise SparsenetsError(f"INPUT {source!r} not found: give a CSV, .npy or .npz file "
                              f"or a built-in dataset ({', '.join(DATASETS)})")
    data.n_total = data.x.shape[0]
    return data


def _load_csv(path: Path, source: str, label_column: str | None, want_labels: bool) -> SelectInput:
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    try:
        with path.open("rb") as handle:
            head = handle.read(8192)
    except OSError as error:
        raise SparsenetsError(f"cannot read {source!r}: {error.strerror or error}") from None
    if not path.name.lower().endswith(_COMPRESSED) and b"\x00" in head:
        raise SparsenetsError(f"{source!r} is not a text CSV file (it holds binary data)")
    try:
        frame = pd.read_csv(path, encoding="utf-8-sig")  # a BOM (Excel) is not part of the first name
    except UnicodeDecodeError:
        raise SparsenetsError(f"{source!r} is not a UTF-8 text CSV file") from None
    except pd.errors.EmptyDataError:
        raise SparsenetsError(f"{source!r} is empty (expected a header row and one row per sample)") from None
    except pd.errors.ParserError as error:
        raise SparsenetsError(f"{source!r} is not a valid CSV file: {_one_line(error)}") from None
    except (OSError, ValueError) as error:  # a bad compressed file, an unreadable one
        raise SparsenetsError(f"cannot read {source!r} as CSV: {_one_line(error)}") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    if label_column is None and want_labels:
        label_column = next((c for c in columns if c in LABEL_COLUMNS), None)
        if label_column is None:
            label_column = next((c for c in columns if c.lower() in LABEL_COLUMNS), None)
    elif label_column is not None and label_column not in columns:
        raise SparsenetsError(f"label column {label_column!r} is not in {source!r} "
                              f"(columns: {_shorten(columns)})")
    labels = None
    if label_column is not None:
        labels = _csv_labels(frame[label_column], label_column, source)
        frame = frame.drop(columns=[label_column])
    if frame.shape[1] == 0:
        raise SparsenetsError(f"{source!r} has no feature columns"
                              + (f" besides the label column {label_column!r}" if label_column else ""))
    if frame.shape[0] == 0:
        raise SparsenetsError(f"{source!r} has a header but no data rows")
    bad = [c for c in frame.columns if not (is_numeric_dtype(frame[c]) or is_bool_dtype(frame[c]))]
    if bad:
        example = frame[bad[0]].dropna()
        shown = f" (e.g. {str(example.iloc[0])!r})" if len(example) else ""
        hint = "" if label_column else "; if it holds the labels, pass --label-column NAME"
        raise SparsenetsError(f"{source!r} has non-numeric columns {_shorten(bad)}{shown}: encode them as "
                              f"numbers or drop them{hint}")
    x = frame.to_numpy(dtype=np.float64)
    bad_cells = ~np.isfinite(x)
    if bad_cells.any():
        col = int(np.flatnonzero(bad_cells.any(0))[0])
        row = int(np.flatnonzero(bad_cells[:, col])[0])
        columns_bad = [frame.columns[j] for j in np.flatnonzero(bad_cells.any(0))]
        raise SparsenetsError(
            f"{source!r} has {int(bad_cells.sum())} missing, NaN or infinite values in columns "
            f"{_shorten(columns_bad)} (first: column {frame.columns[col]!r}, line {row + 2} = "
            f"{_cell(x[row, col])}); fill or drop them"
        )
    notes = []
    if label_column is None:
        named = [c for c in frame.columns if c.lower() in LABEL_COLUMNS]
        if named:
            notes.append(f"column {named[0]!r} is used as a feature (pass --label-column {named[0]} "
                         f"to leave it out)")
    return SelectInput(x=x, y=labels, names=list(frame.columns), kind="csv", source=source,
                       label_column=label_column, notes=notes)


def _csv_labels(column: Any, name: str, source: str) -> np.ndarray:
    from pandas.api.types import is_bool_dtype, is_float_dtype, is_numeric_dtype

    missing = column.isna().to_numpy()
    if missing.any():
        raise SparsenetsError(f"label column {name!r} of {source!r} has {int(missing.sum())} missing values "
                              f"(first at line {int(np.flatnonzero(missing)[0]) + 2})")
    if is_bool_dtype(column):
        return column.to_numpy(dtype=np.int64)
    if is_float_dtype(column):
        values = column.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all() or not np.array_equal(values, np.round(values)):
            example = next(float(v) for v in values if not (math.isfinite(v) and v == round(v)))
            raise SparsenetsError(f"label column {name!r} of {source!r} holds continuous values "
                                  f"(e.g. {example!r}); the labels must be classes")
        return values.astype(np.int64)
    if is_numeric_dtype(column):
        return column.to_numpy(dtype=np.int64)
    return column.astype(str).to_numpy()


def _load_numpy(path: Path, source: str) -> SelectInput:
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise SparsenetsError(f"{source!r} holds Python objects (pickled); save numbers only") from None
        raise SparsenetsError(f"{source!r} is not a valid NumPy file: {_one_line(error)}") from None
    except (OSError, EOFError) as error:
        raise SparsenetsError(f"{source!r} is not a valid NumPy file: {_one_line(error)}") from None
    names = None
    y = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            key = next((k for k in ("X", "x") if k in keys), None)
            if key is None:
                raise SparsenetsError(f"{source!r} has no array 'X' (or 'x'); it holds {_shorten(keys) or 'none'}")
            x = _npz_array(loaded, key, source)
            label_key = next((k for k in ("y", "Y") if k in keys), None)
            if label_key is not None:
                y = _npz_array(loaded, label_key, source)
            if "feature_names" in keys:
                names = [str(v) for v in _npz_array(loaded, "feature_names", source).ravel()]
        kind, what = "npz", f"array {key!r} of {source!r}"
    else:
        x, kind, what = loaded, "npy", repr(source)
    x = _numeric_matrix(np.asarray(x), what)
    grid = _grid(x.shape[1:])
    x = x.reshape(x.shape[0], -1)
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise SparsenetsError(f"array 'y' of {source!r} must be 1-D with one label per row of X "
                                  f"({x.shape[0]}), got shape {tuple(y.shape)}")
        if y.dtype.kind == "f":
            if not np.isfinite(y).all():
                raise SparsenetsError(f"array 'y' of {source!r} holds NaN or infinite labels")
            if not np.array_equal(y, np.round(y)):
                raise SparsenetsError(f"array 'y' of {source!r} holds continuous values "
                                      f"(e.g. {float(y[y != np.round(y)][0])!r}); the labels must be classes")
            y = y.astype(np.int64)
        elif y.dtype.kind not in "biuUS":
            raise SparsenetsError(f"array 'y' of {source!r} has dtype {y.dtype}; the labels must be classes")
    if names is not None and len(names) != x.shape[1]:
        raise SparsenetsError(f"array 'feature_names' of {source!r} has {len(names)} names for "
                              f"{x.shape[1]} features")
    if names is None:
        names = _pixel_names(grid) if grid is not None else [f"x{j}" for j in range(x.shape[1])]
    return SelectInput(x=x, y=y, names=names, kind=kind, source=source, grid=grid)


def _npz_array(npz: Any, key: str, source: str) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise SparsenetsError(f"array {key!r} of {source!r} holds Python objects (pickled); "
                                  f"save numbers only") from None
        raise SparsenetsError(f"array {key!r} of {source!r} cannot be read: {_one_line(error)}") from None
    except (OSError, EOFError) as error:  # a truncated member (zipfile.BadZipFile is an OSError too)
        raise SparsenetsError(f"array {key!r} of {source!r} cannot be read: {_one_line(error)}") from None


def _numeric_matrix(x: np.ndarray, what: str) -> np.ndarray:
    if x.ndim < 2:
        shape = "a scalar" if x.ndim == 0 else f"a 1-D array of length {x.shape[0]}"
        raise SparsenetsError(f"{what} must be 2-D (n_samples, n_features), got {shape}; "
                              f"save X.reshape(-1, 1) for a single feature")
    if x.dtype.kind not in "biuf":
        raise SparsenetsError(f"{what} has dtype {x.dtype}; X must hold real numbers")
    if x.shape[0] == 0 or math.prod(x.shape[1:]) == 0:
        raise SparsenetsError(f"{what} is empty (shape {tuple(x.shape)})")
    x = x.astype(np.float64)
    bad = ~np.isfinite(x.reshape(x.shape[0], -1))
    if bad.any():
        row, col = (int(v[0]) for v in np.nonzero(bad))
        n_nan = int(np.isnan(x).sum())
        raise SparsenetsError(f"{what} holds {n_nan} NaN and {int(bad.sum()) - n_nan} infinite values "
                              f"(first at row {row}, feature {col}); fill or drop them")
    return x


def _load_dataset(name: str, data_dir: str | None) -> SelectInput:
    from ..data.registry import load_dataset

    ds = load_dataset(name, data_dir=data_dir)
    x = ds.x_train.reshape(ds.x_train.shape[0], -1).double().cpu().numpy()
    grid = _grid(tuple(ds.input_shape))
    names = _pixel_names(grid) if grid is not None else [f"x{j}" for j in range(x.shape[1])]
    return SelectInput(x=x, y=ds.y_train.cpu().numpy(), names=names, kind="dataset", source=name, grid=grid)


def _grid(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(height, width)`` of a per-sample shape ``(H, W)`` or ``(1, H, W)`` with H, W > 1."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2 and min(shape) > 1:
        return shape  # type: ignore[return-value]
    return None


def _pixel_names(grid: tuple[int, int]) -> list[str]:
    return [f"pixel_{r}_{c}" for r in range(grid[0]) for c in range(grid[1])]


def subsample(data: SelectInput, max_samples: int | None, seed: int) -> SelectInput:
    """Keep at most ``max_samples`` samples, drawn without replacement from ``seed`` (in order)."""
    n = data.x.shape[0]
    if max_samples is None or max_samples >= n:
        return data
    keep = np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))
    data.x = data.x[keep]
    data.y = None if data.y is None else data.y[keep]
    return data


# -- selector ---------------------------------------------------------------------------------
def selector_class(method: str) -> type:
    """The selector class of a CLI method name (one-line error for an unknown one)."""
    from . import SELECTORS

    if method not in SELECTORS:
        raise choice_error("method", method, SELECTORS)
    return SELECTORS[method]


def parse_settings(cls: type, items: list[str]) -> dict[str, Any]:
    """``--set key=value`` items → selector parameters (values read as YAML, checked by type)."""
    from ..config import parse_override

    defaults = cls().get_params()
    params: dict[str, Any] = {}
    for item in items:
        path, value = parse_override(item)
        key = ".".join(path)
        if key in OWN_OPTIONS:
            raise SparsenetsError(f"set {key} with {OWN_OPTIONS[key]}, not --set")
        if key not in defaults:
            valid = [k for k in defaults if k not in OWN_OPTIONS]
            raise SparsenetsError(f"unknown option {key!r} of {cls.__name__} (valid: {', '.join(valid)})")
        default = defaults[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise SparsenetsError(f"--set {key} must be true or false, got {item.partition('=')[2]!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SparsenetsError(f"--set {key} must be an integer, got {item.partition('=')[2]!r}")
            if key in POSITIVE and value < 1:
                raise SparsenetsError(f"--set {key} must be a positive integer, got {value}")
        elif isinstance(default, float):
            value = _number(value)
            if value is None:
                raise SparsenetsError(f"--set {key} must be a number, got {item.partition('=')[2]!r}")
        params[key] = value
    return params


def _number(value: Any) -> float | None:
    """A float from a YAML value; also ``1e-3``, which YAML 1.1 reads as a string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        try:
            number = float(value)
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless ``overwrite``, and a path that cannot be one."""
    check_output_dir(out, overwrite, "output directory", not_empty_hint="use --overwrite or another --out")


def default_out(method: str, source: str) -> Path:
    """``runs/select-<method>-<input stem>-<time>``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(source).stem) or "input"
    return Path("runs") / f"select-{method}-{stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_select(
    source: str,
    *,
    method: str,
    k: int,
    out: str | Path | None = None,
    overwrite: bool = False,
    label_column: str | None = None,
    mode: str = "auto",
    epochs: int | None = None,
    backend: str = "auto",
    device: str = "auto",
    seed: int = 0,
    settings: list[str] | tuple[str, ...] = (),
    max_samples: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit selector ``method`` to INPUT, keep the ``k`` best features and write the run directory.

    Args:
        source: a CSV, ``.npy`` or ``.npz`` file or a built-in dataset name (see :func:`load_input`).
        method: a key of :data:`sparsenets.featsel.SELECTORS`.
        k: the number of features kept, in [1, n_features].
        out: the run directory (default ``runs/select-<method>-<input>-<time>``).
        overwrite: reuse a non-empty run directory.
        label_column: the CSV column of the labels.
        mode: attribution only: ``auto`` (supervised when the input has labels),
            ``supervised`` or ``unsupervised``.
        epochs: training epochs (default: the method's own).
        backend, device: passed to the selector.
        seed: ``random_state`` of the selector and the seed of ``max_samples``.
        settings: ``key=value`` selector parameters (e.g. ``hidden=100``).
        max_samples: fit on at most this many samples (a seeded random subset).
        data_dir: where the Fashion-MNIST files are.
        progress: a progress bar over the epochs.

    Returns:
        The summary (as written to ``summary.json``).
    """
    from ..training import resolve_device
    from .plots import plot_feature_scores

    cls = selector_class(method)
    if mode not in MODES:
        raise choice_error("mode", mode, MODES)
    if mode != "auto" and method != "attribution":
        raise SparsenetsError(f"--mode applies to --method attribution only ({method} is "
                              f"{'supervised' if cls.supervised else 'unsupervised'})")
    params = parse_settings(cls, list(settings))
    resolved = resolve_device(device)
    if method == "attribution":
        wants_labels = mode != "unsupervised"
    else:
        wants_labels = bool(cls.supervised)
    data = load_input(source, label_column=label_column, want_labels=wants_labels, data_dir=data_dir)
    if method == "attribution":
        mode = mode if mode != "auto" else ("supervised" if data.y is not None else "unsupervised")
        params["mode"] = mode
        supervised = mode == "supervised"
    else:
        supervised = bool(cls.supervised)
    if supervised and data.y is None:
        raise SparsenetsError(_no_labels(method, data))
    labels = "used" if supervised else ("ignored" if data.y is not None else "none")
    data = subsample(data, max_samples, seed)
    n, d = data.x.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= d:
        raise SparsenetsError(f"--k must be an integer in [1, {d}] ({source!r} has {d} features), got {k!r}")
    run_dir = Path(out) if out is not None else default_out(method, source)
    check_out_dir(run_dir, overwrite)

    params.update(n_features_to_select=k, random_state=seed, backend=backend, device=device,
                  verbose=1 if progress else 0)
    if epochs is not None:
        params["epochs"] = epochs
    selector = cls(**params)
    started = time.perf_counter()
    selector.fit(data.x, data.y if supervised else None)
    seconds = time.perf_counter() - started

    scores, support = np.asarray(selector.scores_, dtype=np.float64), np.asarray(selector.get_support())
    order = np.argsort(-scores, kind="stable")
    rank = np.empty(d, dtype=np.int64)
    rank[order] = np.arange(1, d + 1)
    selected = [int(i) for i in order if support[i]]
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / FILES["selected"], "".join(f"{i}\t{data.names[i]}\n" for i in selected))
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["index", "name", "score", "rank", "selected"])
    for j in range(d):
        writer.writerow([j, data.names[j], repr(float(scores[j])), int(rank[j]), int(support[j])])
    write_text(run_dir / FILES["scores"], table.getvalue())
    title = f"{method}{f' ({mode})' if method == 'attribution' else ''}: {k} of {d} features, {Path(source).name}"
    plot_feature_scores(scores, support, run_dir / FILES["plot"], grid=data.grid, names=data.names, title=title)

    sparsifier = getattr(selector, "sparsifier_", None)
    summary = {
        "method": method,
        "selector": cls.__name__,
        "mode": mode if method == "attribution" else ("supervised" if supervised else "unsupervised"),
        "k": k,
        "params": {key: _jsonable(v) for key, v in selector.get_params().items()},
        "input": {
            "source": source, "kind": data.kind, "label_column": data.label_column, "labels": labels,
            "n_samples_total": data.n_total, "max_samples": max_samples,
            "grid": list(data.grid) if data.grid is not None else None,
        },
        "n_samples": n,
        "n_features": d,
        "n_classes": len(selector.classes_) if supervised else None,
        "fit_seconds": round(seconds, 4),
        "device": str(resolved),
        "backends": dict(sparsifier.backends) if sparsifier is not None else {},
        "loss": [float(v) for v in getattr(selector, "history_", [])],
        "selected": [{"index": i, "name": data.names[i], "score": _finite(scores[i])} for i in selected],
        "files": {key: str(run_dir / name) for key, name in FILES.items()},
        "notes": data.notes,
    }
    write_json(run_dir / FILES["summary"], summary)
    return summary


def _no_labels(method: str, data: SelectInput) -> str:
    what = "neurofs is supervised" if method == "neurofs" else "attribution --mode supervised"
    if data.kind == "csv":
        return (f"{what} and needs labels: {data.source!r} has no column named "
                f"{', '.join(LABEL_COLUMNS)}; pass --label-column NAME")
    if data.kind == "npz":
        return f"{what} and needs labels: {data.source!r} has no array 'y'"
    return (f"{what} and needs labels: a .npy file holds only X; use an .npz with arrays X and y, "
            f"or a CSV with --label-column NAME")


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _shorten(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(str(v)) for v in items[:limit])
    return shown + (f", … ({len(items)} in all)" if len(items) > limit else "")


def _cell(value: float) -> str:
    return "missing/NaN" if math.isnan(value) else repr(float(value))


# -- text -------------------------------------------------------------------------------------
def format_select(summary: dict[str, Any], top: int = 10) -> str:
    """The text ``sparsenets select`` prints: what ran, the top features, where the files are."""
    mode = f" ({summary['mode']})" if summary["method"] == "attribution" else ""
    labels = {"used": "", "ignored": ", labels ignored", "none": ""}[summary["input"]["labels"]]
    backends = sorted(set(summary["backends"].values())) or ["dense"]
    chosen = summary["selected"]
    shown = ", ".join(f"{s['name']} ({s['score']:.4g})" if s["score"] is not None else s["name"]
                      for s in chosen[:top])
    lines = [
        f"selected   {summary['k']} of {summary['n_features']} features with {summary['method']}{mode} "
        f"on {summary['input']['source']} ({summary['n_samples']} samples{labels})",
        f"top        {shown}" + (f", … ({len(chosen) - top} more)" if len(chosen) > top else ""),
        f"fit        {summary['fit_seconds']:.1f} s on {summary['device']}, {summary['params'].get('epochs')} "
        f"epochs, backend {', '.join(backends)}",
    ]
    lines += [f"note       {note}" for note in summary.get("notes", [])]
    files = summary["files"]
    directory = str(Path(files["summary"]).parent)
    lines.append(f"saved      {directory}/ ({', '.join(Path(p).name for p in files.values())})")
    return "\n".join(lines)
