"""The command line: bad input gives one line and a non-zero exit; a real run and its report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparsenets.cli import main

ROOT = Path(__file__).resolve().parent.parent
RIGL = str(ROOT / "recipes" / "fashion_mnist_mlp_rigl.yaml")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sparsity.density=0"], ["0", "(0, 1]"]),
        (["sparsity.density=1.5"], ["1.5", "(0, 1]"]),
        (["sparsity.density=-0.1"], ["-0.1", "(0, 1]"]),
        (["sparsity.density=abc"], ["abc"]),
        (["sparsity.method=foo"], ["'foo'", "rigl", "set", "granet", "dense"]),
        (["sparsity.bogus=1"], ["sparsity.bogus", "update_every"]),
        (["bogus=1"], ["'bogus'", "epochs"]),
        (["dataset=cifar"], ["'cifar'", "fashion_mnist", "digits", "mnist1d"]),
        (["sparsity.distribution=foo"], ["'foo'", "erk"]),
        (["device=tpu"], ["tpu"]),
        (["epochs=0"], ["epochs"]),
        (["novalue"], ["KEY=VALUE"]),
    ],
)
def test_bad_input_is_one_line_error(capsys, tmp_path, overrides, expected):
    argv = ["train", RIGL, "--out", str(tmp_path / "run"), "--quiet"]
    for item in overrides:
        argv += ["--set", item]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sparsenets: error: ")
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "summary.json").exists()


def test_missing_dataset_names_the_fix(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(
        capsys, "train", RIGL, "--out", str(tmp_path / "run"), "--set", f"data_dir={empty}", "--quiet"
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "dataset-fashion-mnist" in err and str(empty) in err
    assert not (tmp_path / "run").exists()


def test_missing_recipe_and_unknown_run(capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", str(tmp_path / "nope.yaml"))
    assert code == 2 and "nope.yaml" in err and "not found" in err
    code, _, err = run_cli(capsys, "report", str(tmp_path))
    assert code == 2 and "summary.json" in err
    code, _, err = run_cli(capsys, "train")
    assert code == 2 and "recipe" in err


def test_non_empty_run_dir_is_refused(capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "something").write_text("x")
    code, _, err = run_cli(capsys, "train", RIGL, "--out", str(run), "--quiet")
    assert code == 2 and "--overwrite" in err


def test_methods_lists_every_method(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    for name in ("static", "set", "rigl", "snfs", "mest", "ctre", "gmp", "granet"):
        assert f"\n{name}" in f"\n{out}"


def _recipe(tmp_path: Path) -> Path:
    recipe = {
        "dataset": "digits",
        "model": "mlp",
        "hidden": [32],
        "epochs": 2,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 0.01,
        "sparsity": {"method": "set", "density": 0.3, "update_every": 5},
    }
    path = tmp_path / "digits_set.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_subprocess_train_resume_report(tmp_path):
    """The installed entry point end to end, in a fresh process (no traceback on errors)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "sparsenets.cli"]
    recipe = _recipe(tmp_path)
    run = tmp_path / "run"
    done = subprocess.run(
        [*cli, "train", str(recipe), "--out", str(run), "--set", "epochs=3"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "test acc" in done.stdout and "ITOP" in done.stdout and "plots" in done.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["method"] == "set"
    shown = subprocess.run([*cli, "report", str(run)], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0 and "TOTAL" in shown.stdout
    bad = subprocess.run(
        [*cli, "train", str(recipe), "--set", "sparsity.density=2"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_methods_lists_pruning_at_init_and_lottery(capsys):
    code, out, _ = run_cli(capsys, "methods")
    assert code == 0
    for name in ("snip", "grasp", "synflow", "magnitude", "random", "lottery"):
        assert f"\n{name} " in f"\n{out}"
    assert "sparsity.init" in out and "prune_fraction=0.2" in out
