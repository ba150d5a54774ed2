"""The bad-input catalogue of every CLI command: each case exits non-zero with one line on
stderr (``sparsenets: error: …`` naming the bad value), no traceback, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "digits_cnn_rigl.yaml"


def _prepare(tmp: Path) -> None:
    """Files the cases point at, made before the snapshot of the directory."""
    (tmp / "binary.yaml").write_bytes(b"\x00\xff\x00garbage")
    (tmp / "a_file").write_text("not a directory")
    (tmp / "full").mkdir()
    (tmp / "full" / "keep.txt").write_text("someone's file")
    (tmp / "bad_summary").mkdir()
    (tmp / "bad_summary" / "summary.json").write_text("{bad json")
    (tmp / "foreign_summary").mkdir()
    (tmp / "foreign_summary" / "summary.json").write_text(json.dumps({"name": 1}))
    (tmp / "list_summary").mkdir()
    (tmp / "list_summary" / "summary.json").write_text("[1, 2]")
    (tmp / "bad_config").mkdir()
    (tmp / "bad_config" / "config.json").write_text("{not json")
    (tmp / "no_type").mkdir()
    (tmp / "no_type" / "config.json").write_text(json.dumps({"hidden_size": 8}))
    (tmp / "no_weights").mkdir()
    (tmp / "no_weights" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp / "run_without_checkpoint").mkdir()
    (tmp / "run_without_checkpoint" / "config.yaml").write_text(RECIPE.read_text())
    (tmp / "data.csv").write_text("a,b,c\n1,2,3\n4,5,6\n")


R = str(RECIPE)
CASES = [
    # (command line, words the one error line must hold)
    (["frobnicate"], "invalid choice"),
    (["train", "missing.yaml"], "recipe file 'missing.yaml' not found"),
    (["train", "binary.yaml"], "is not a text file"),
    (["train"], "a recipe is required"),
    (["train", R, "--set", "nonsense_key=1", "--out", "o"], "nonsense_key"),
    (["train", R, "--set", "lr=-1", "--out", "o"], "lr"),
    (["train", R, "--set", "sparsity.density=1.5", "--out", "o"], "density"),
    (["train", R, "--set", "sparsity.method=nope", "--out", "o"], "nope"),
    (["train", R, "--set", "epochs", "--out", "o"], "KEY=VALUE"),
    (["train", R, "--device", "mps", "--out", "o"], "device 'mps'"),
    (["train", R, "--device", "tpu", "--out", "o"], "tpu"),
    (["train", R, "--out", "a_file"], "a_file"),
    (["train", R, "--out", "full"], "full"),
    (["train", R, "--logger", "nope", "--out", "o"], "nope"),
    (["train", R, "--nproc", "0", "--out", "o"], "--nproc"),
    (["train", R, "--nproc", "two", "--out", "o"], "--nproc"),
    (["train", R, "--max-restarts", "1", "--out", "o"], "--max-restarts needs --nproc"),
    (["train", R, "--max-restarts", "-1", "--out", "o"], "--max-restarts"),
    (["train", "--resume", "nowhere"], "nowhere"),
    (["train", "--resume", "run_without_checkpoint"], "no checkpoint"),
    (["train", "--resume", "run_without_checkpoint", "--out", "o"], "drop --out"),
    (["train", R, "--resume", "run_without_checkpoint"], "not both"),
    (["report", "nowhere"], "no summary.json"),
    (["report", "bad_summary"], "is not valid JSON"),
    (["report", "foreign_summary"], "is not one sparsenets wrote"),
    (["report", "list_summary"], "must hold a JSON object"),
    (["methods", "--bogus"], "unrecognized arguments"),
    (["select", "missing.csv", "--method", "wast", "--k", "2", "--out", "o"], "missing.csv"),
    (["select", "data.csv", "--method", "nope", "--k", "2", "--out", "o"], "nope"),
    (["select", "data.csv", "--method", "wast", "--k", "9", "--out", "o"], "9"),
    (["select", "data.csv", "--method", "wast", "--k", "2", "--device", "mps", "--out", "o"], "mps"),
    (["prune-llm", "--model", "no-such-model", "--out", "o"], "unknown model"),
    (["prune-llm", "--model", "bad_config", "--out", "o"], "is not valid JSON"),
    (["prune-llm", "--model", "no_type", "--out", "o"], "no model_type"),
    (["prune-llm", "--model", "no_weights", "--out", "o"], "holds no weights"),
    (["prune-llm", "--model", "no_weights", "--sparsity", "1.5", "--out", "o"], "1.5"),
    (["prune-llm", "--model", "no_weights", "--nm", "5:4", "--out", "o"], "5:4"),
    (["prune-llm", "--model", "no_weights", "--method", "nope", "--out", "o"], "nope"),
    (["prune-llm", "--model", "no_weights", "--device", "mps", "--out", "o"], "mps"),
    (["finetune-llm", "--model", "no_weights", "--steps", "2", "--out", "o"], "not a pruned model directory"),
    (["finetune-llm", "--model", "no-such-dir", "--steps", "2", "--out", "o"], "not a pruned model directory"),
    (["finetune-llm", "--model", "no_weights", "--steps", "0", "--out", "o"], "--steps"),
    (["finetune-llm", "--model", "no_weights", "--steps", "2", "--lr", "-1", "--out", "o"], "-1"),
    (["finetune-llm", "--model", "no_weights", "--steps", "2", "--device", "mps", "--out", "o"], "mps"),
    (["eval-ppl", "--model", "no-such-model"], "unknown model"),
    (["eval-ppl", "--model", "bad_config"], "is not valid JSON"),
    (["eval-ppl", "--model", "no_weights"], "holds no weights"),
    (["eval-ppl", "--model", "no_weights", "--seq-len", "0"], "--seq-len"),
    (["eval-ppl", "--model", "no_weights", "--text", "missing.txt"], "missing.txt"),
]
def _read_only(path: str) -> bool:
    """Whether nothing can be created in ``path`` (even as root), e.g. /sys."""
    try:
        os.rmdir(tempfile.mkdtemp(dir=path))
    except OSError:
        return Path(path).is_dir()
    return False


if _read_only("/sys"):  # permissions: a run directory that cannot be created
    CASES.append((["train", R, "--out", "/sys/sparsenets-run"], "is not writable"))
    CASES.append((["select", "data.csv", "--method", "wast", "--k", "2", "--epochs", "1", "--out", "/sys/sparsenets-select"],
                  "/sys/sparsenets-select"))
if not torch.cuda.is_available():
    CASES.append((["train", R, "--device", "cuda", "--out", "o"], "CUDA is not available"))
    CASES.append((["eval-ppl", "--model", "no_weights", "--device", "cuda"], "CUDA"))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>") for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("argv, words", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_without_traceback_and_leaves_nothing(argv, words, tmp_path):
    _prepare(tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    result = subprocess.run([sys.executable, "-m", "sparsenets.cli", *argv], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, result.stderr
    assert re.match(r"sparsenets( [a-z-]+)?: error: ", lines[0]), lines[0]
    assert words in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # nothing written, nothing removed


def test_report_into_a_pipe_closed_early_is_quiet(tmp_path):
    """``sparsenets report RUN | head -1``: the reader leaves; no BrokenPipeError traceback."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    run = tmp_path / "run"
    made = subprocess.run([sys.executable, "-m", "sparsenets.cli", "train", R, "--set", "epochs=1", "--out", str(run),
                           "--quiet"], capture_output=True, text=True, timeout=300, env=env)
    assert made.returncode == 0, made.stderr
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m sparsenets.cli report {run} | head -1"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.startswith("run ") and len(piped.stdout.splitlines()) == 1
    assert "Traceback" not in piped.stderr and "BrokenPipe" not in piped.stderr
    # a reader that exits before reading anything, and more output than a pipe buffers (a long
    # report): the write itself fails with EPIPE
    script = ("import sys, time; import sparsenets.cli as c; "
              "c._cmd_report = lambda args: (time.sleep(0.5), print('x' * 300000))[0] or 0; "
              "sys.exit(c.main(['report', 'anything']))")
    closed = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -c \"{script}\" | true"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert closed.returncode == 0, closed.stderr
    assert "Traceback" not in closed.stderr and "BrokenPipe" not in closed.stderr, closed.stderr
