"""``sparsenets select``: CSV, NumPy and built-in inputs, the files it writes, one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sparsenets.cli import main

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: A small, fast network for every method (each fit well under a second on digits).
FAST = ["--epochs", "1", "--backend", "masked", "--device", "cpu", "--quiet", "--set", "hidden=16"]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def select(capsys, source, out, *extra: str) -> tuple[int, str, str]:
    return run_cli(capsys, "select", str(source), "--out", str(out), *FAST, *extra)


def write_csv(path: Path, header: list[str], rows) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def data(tmp_path):
    """``(X (80, 6), y (80,))``: features 0 and 3 carry the class, the rest is noise."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    x = rng.normal(size=(80, 6))
    x[:, 0] += 3 * y
    x[:, 3] -= 3 * y
    return x, y


@pytest.fixture
def table(tmp_path, data):
    x, y = data
    rows = [[*map(float, row), int(label)] for row, label in zip(x, y)]
    return write_csv(tmp_path / "table.csv", ["f0", "f1", "f2", "f3", "f4", "f5", "label"], rows)


def check_run(out: Path, k: int, n_features: int) -> dict:
    """The four files exist and agree: K lines, one score row per feature, valid PNG and JSON."""
    lines = (out / "selected.txt").read_text().splitlines()
    assert len(lines) == k
    with (out / "scores.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == n_features
    assert [r["index"] for r in rows] == [str(j) for j in range(n_features)]
    assert sum(int(r["selected"]) for r in rows) == k
    by_rank = sorted(rows, key=lambda r: int(r["rank"]))
    assert [line.split("\t")[0] for line in lines] == [r["index"] for r in by_rank[:k]]
    assert all(r["selected"] == "1" for r in by_rank[:k])
    png = (out / "scores.png").read_bytes()
    assert png.startswith(PNG_MAGIC)
    import matplotlib.image

    image = matplotlib.image.imread(out / "scores.png")
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
    summary = json.loads((out / "summary.json").read_text())
    assert summary["k"] == k and summary["n_features"] == n_features
    assert [s["index"] for s in summary["selected"]] == [int(line.split("\t")[0]) for line in lines]
    assert summary["fit_seconds"] >= 0
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    return summary


def test_csv_unsupervised_names_from_header(capsys, tmp_path, table):
    out = tmp_path / "run"
    code, stdout, err = select(capsys, table, out, "--method", "quickselection", "--k", "3",
                               "--label-column", "label")
    assert code == 0, err
    summary = check_run(out, 3, 6)
    names = [line.split("\t")[1] for line in (out / "selected.txt").read_text().splitlines()]
    assert set(names) <= {"f0", "f1", "f2", "f3", "f4", "f5"}
    assert summary["method"] == "quickselection" and summary["mode"] == "unsupervised"
    assert summary["input"] == {**summary["input"], "kind": "csv", "label_column": "label", "labels": "ignored"}
    assert summary["n_samples"] == 80 and summary["params"]["hidden"] == 16
    assert summary["params"]["epochs"] == 1 and summary["params"]["random_state"] == 0
    assert summary["device"] == "cpu" and summary["n_classes"] is None


def test_csv_unsupervised_keeps_a_label_named_column_and_says_so(capsys, tmp_path, table):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "select", str(table), "--out", str(out), "--method", "wast", "--k", "2",
                                "--epochs", "1", "--backend", "masked", "--device", "cpu", "--set", "hidden=16")
    assert code == 0, err
    summary = check_run(out, 2, 7)
    assert summary["input"]["labels"] == "none"
    assert "--label-column label" in stdout and "selected   2 of 7 features with wast" in stdout
    assert str(out) in stdout


def test_csv_supervised_defaults_to_the_label_column(capsys, tmp_path, table):
    out = tmp_path / "run"
    code, _, err = select(capsys, table, out, "--method", "neurofs", "--k", "2")
    assert code == 0, err
    summary = check_run(out, 2, 6)
    assert summary["input"]["label_column"] == "label" and summary["input"]["labels"] == "used"
    assert summary["mode"] == "supervised" and summary["n_classes"] == 2


def test_csv_string_labels_and_named_label_column(capsys, tmp_path, data):
    x, y = data
    rows = [[np.array(["cat", "dog"])[label], *map(float, row)] for row, label in zip(x, y)]
    path = write_csv(tmp_path / "animals.csv", ["kind", "a", "b", "c", "d", "e", "f"], rows)
    out = tmp_path / "run"
    code, _, err = select(capsys, path, out, "--method", "attribution", "--k", "2", "--label-column", "kind",
                          "--set", "attribution_samples=50", "--epochs", "5", "--set", "batch_size=16")
    assert code == 0, err
    summary = check_run(out, 2, 6)
    assert summary["mode"] == "supervised" and summary["n_classes"] == 2
    # the class signal is in columns a (0) and d (3)
    assert {s["name"] for s in summary["selected"]} == {"a", "d"}


def test_npy_input_sorted_plot_and_default_names(capsys, tmp_path, data):
    np.save(tmp_path / "x.npy", data[0])
    out = tmp_path / "run"
    code, _, err = select(capsys, tmp_path / "x.npy", out, "--method", "wast", "--k", "4",
                          "--set", "learning_rate=1e-3")  # YAML reads 1e-3 as a string
    assert code == 0, err
    summary = check_run(out, 4, 6)
    assert summary["params"]["learning_rate"] == 0.001
    assert summary["input"]["kind"] == "npy" and summary["input"]["grid"] is None
    assert all(s["name"] == f"x{s['index']}" for s in summary["selected"])


def test_npz_with_labels_makes_attribution_supervised(capsys, tmp_path, data):
    np.savez(tmp_path / "xy.npz", X=data[0], y=data[1])
    np.savez(tmp_path / "x.npz", x=data[0])
    for name, mode in (("xy.npz", "supervised"), ("x.npz", "unsupervised")):
        out = tmp_path / f"run-{mode}"
        code, _, err = select(capsys, tmp_path / name, out, "--method", "attribution", "--k", "2",
                              "--set", "attribution_samples=50")
        assert code == 0, err
        summary = check_run(out, 2, 6)
        assert summary["mode"] == mode and summary["params"]["mode"] == mode
    out = tmp_path / "forced"
    code, _, err = select(capsys, tmp_path / "xy.npz", out, "--method", "attribution", "--k", "2",
                          "--mode", "unsupervised", "--set", "attribution_samples=50")
    assert code == 0, err
    assert check_run(out, 2, 6)["input"]["labels"] == "ignored"


def test_builtin_digits_on_the_pixel_grid(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = select(capsys, "digits", out, "--method", "quickselection", "--k", "12",
                          "--max-samples", "300", "--seed", "3")
    assert code == 0, err
    summary = check_run(out, 12, 64)
    assert summary["input"]["grid"] == [8, 8] and summary["input"]["kind"] == "dataset"
    assert summary["n_samples"] == 300 and summary["input"]["n_samples_total"] > 300
    assert summary["input"]["labels"] == "ignored"
    assert all(s["name"].startswith("pixel_") for s in summary["selected"])


def test_builtin_digits_supervised_uses_its_labels(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = select(capsys, "digits", out, "--method", "neurofs", "--k", "8", "--max-samples", "300")
    assert code == 0, err
    summary = check_run(out, 8, 64)
    assert summary["n_classes"] == 10 and summary["input"]["labels"] == "used"


def test_same_seed_same_selection_and_overwrite(capsys, tmp_path, data):
    np.save(tmp_path / "x.npy", data[0])
    out = tmp_path / "run"
    assert select(capsys, tmp_path / "x.npy", out, "--method", "quickselection", "--k", "3")[0] == 0
    first = (out / "scores.csv").read_text()
    code, _, err = select(capsys, tmp_path / "x.npy", out, "--method", "quickselection", "--k", "3")
    assert code == 2 and "not empty" in err and "--overwrite" in err
    code, _, err = select(capsys, tmp_path / "x.npy", out, "--method", "quickselection", "--k", "3", "--overwrite")
    assert code == 0, err
    assert (out / "scores.csv").read_text() == first


def _bad_inputs(tmp: Path, data) -> dict[str, Path]:
    x, y = data
    files = {}
    files["binary.csv"] = tmp / "binary.csv"
    files["binary.csv"].write_bytes(bytes(range(256)) * 4)
    files["ragged.csv"] = tmp / "ragged.csv"
    files["ragged.csv"].write_text("a,b,c\n1,2,3\n4,5,6,7,8\n")
    files["latin1.csv"] = tmp / "latin1.csv"
    files["latin1.csv"].write_bytes("a,b\n1,\xe9\n2,3\n".encode("latin-1"))
    files["empty.csv"] = tmp / "empty.csv"
    files["empty.csv"].write_text("")
    files["text.csv"] = write_csv(tmp / "text.csv", ["a", "b", "label"], [[1, "red", 0], [2, "blue", 1], [3, "red", 0]])
    files["nan.csv"] = tmp / "nan.csv"
    files["nan.csv"].write_text("a,b\n1,2\n3,\n5,6\n")
    files["inf.csv"] = tmp / "inf.csv"
    files["inf.csv"].write_text("a,b\n1,2\n3,inf\n5,6\n")
    files["nolabel.csv"] = write_csv(tmp / "nolabel.csv", ["a", "b"], x[:, :2].tolist())
    files["oneclass.csv"] = write_csv(tmp / "oneclass.csv", ["a", "b", "label"], [[*r, 1] for r in x[:, :2].tolist()])
    files["continuous.csv"] = write_csv(tmp / "continuous.csv", ["a", "b", "target"], [[1, 2, 0.5], [3, 4, 1.5]])
    np.save(tmp / "flat.npy", x[:, 0])
    files["flat.npy"] = tmp / "flat.npy"
    arr = x.copy()
    arr[3, 2] = np.nan
    np.save(tmp / "nan.npy", arr)
    files["nan.npy"] = tmp / "nan.npy"
    np.save(tmp / "x.npy", x)
    files["x.npy"] = tmp / "x.npy"
    np.savez(tmp / "nox.npz", features=x, y=y)
    files["nox.npz"] = tmp / "nox.npz"
    np.savez(tmp / "oneclass.npz", X=x, y=np.zeros(len(x), dtype=int))
    files["oneclass.npz"] = tmp / "oneclass.npz"
    files["truncated.npy"] = tmp / "truncated.npy"
    files["truncated.npy"].write_bytes((tmp / "x.npy").read_bytes()[:100])
    return files


@pytest.mark.parametrize(
    ("source", "extra", "expected"),
    [
        ("x.npy", ["--method", "lasso"], ["unknown method 'lasso'", "quickselection", "wast", "neurofs", "attribution"]),
        ("x.npy", ["--method", "wast", "--k", "0"], ["--k", "[1, 6]"]),
        ("x.npy", ["--method", "wast", "--k", "7"], ["--k", "[1, 6]", "got 7"]),
        ("missing.csv", ["--method", "wast"], ["missing.csv' not found", "digits"]),
        ("binary.csv", ["--method", "wast"], ["not a text CSV"]),
        ("latin1.csv", ["--method", "wast"], ["not a UTF-8"]),
        ("ragged.csv", ["--method", "wast"], ["not a valid CSV", "line 3"]),
        ("empty.csv", ["--method", "wast"], ["is empty"]),
        ("text.csv", ["--method", "wast", "--label-column", "label"], ["non-numeric", "'b'", "'red'"]),
        ("nan.csv", ["--method", "wast"], ["NaN", "'b'", "line 3"]),
        ("inf.csv", ["--method", "wast"], ["infinite", "'b'", "line 3"]),
        ("flat.npy", ["--method", "wast"], ["2-D", "1-D"]),
        ("nan.npy", ["--method", "wast"], ["1 NaN", "row 3", "feature 2"]),
        ("truncated.npy", ["--method", "wast"], ["not a valid NumPy file"]),
        ("nox.npz", ["--method", "wast"], ["no array 'X'", "'features'"]),
        ("x.npy", ["--method", "neurofs"], ["supervised", "needs labels", ".npz"]),
        ("nolabel.csv", ["--method", "neurofs"], ["supervised", "--label-column"]),
        ("nolabel.csv", ["--method", "attribution", "--mode", "supervised"], ["needs labels"]),
        ("nolabel.csv", ["--method", "wast", "--label-column", "y"], ["label column 'y'", "'a', 'b'"]),
        ("oneclass.csv", ["--method", "neurofs"], ["single class"]),
        ("oneclass.npz", ["--method", "attribution"], ["single class"]),
        ("continuous.csv", ["--method", "neurofs"], ["continuous", "0.5"]),
        ("x.npy", ["--method", "wast", "--set", "bogus=1"], ["unknown option 'bogus'", "hidden"]),
        ("x.npy", ["--method", "wast", "--set", "hidden=abc"], ["hidden", "integer"]),
        ("x.npy", ["--method", "wast", "--set", "hidden=0"], ["hidden", "positive"]),
        ("x.npy", ["--method", "wast", "--set", "noise=nan"], ["noise", "number"]),
        ("x.npy", ["--method", "wast", "--set", "epochs=3"], ["--epochs"]),
        ("x.npy", ["--method", "wast", "--set", "novalue"], ["KEY=VALUE"]),
        ("x.npy", ["--method", "wast", "--mode", "supervised"], ["--mode", "attribution"]),
        ("x.npy", ["--method", "attribution", "--mode", "half"], ["unknown mode 'half'"]),
        ("x.npy", ["--method", "wast", "--label-column", "y"], ["CSV input only"]),
        ("x.npy", ["--method", "wast", "--device", "tpu"], ["unknown device 'tpu'"]),
        ("x.npy", ["--method", "wast", "--backend", "csr"], ["unknown backend 'csr'"]),
        ("x.npy", ["--method", "wast", "--k", "two"], ["--k", "invalid int"]),
        ("x.npy", ["--method", "wast", "--epochs", "0"], ["--epochs", "positive"]),
    ],
)
def test_bad_input_is_one_line_error(capsys, tmp_path, data, source, extra, expected):
    files = _bad_inputs(tmp_path, data)
    argv = ["select", str(files.get(source, tmp_path / source)), "--out", str(tmp_path / "run"), "--quiet"]
    if "--k" not in extra:
        argv += ["--k", "2"]
    argv += ["--epochs", "1", "--set", "hidden=16"] if "--epochs" not in extra else []
    try:
        code, out, err = run_cli(capsys, *argv, *extra)
    except SystemExit as exit_:  # argparse's own errors
        code, captured = exit_.code, capsys.readouterr()
        out, err = captured.out, captured.err
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sparsenets") and "error: " in lines[0]
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_the_installed_command_prints_one_line_without_traceback(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,oops\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run(
        [sys.executable, "-m", "sparsenets.cli", "select", str(tmp_path / "x.csv"), "--method", "wast",
         "--k", "1", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "non-numeric" in result.stderr
    assert "Traceback" not in result.stderr
