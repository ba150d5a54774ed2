"""Step-level checkpoints: ``checkpoint_every`` writes a checkpoint inside an epoch, and a run
SIGKILLed in the middle of an epoch resumes to exactly the uninterrupted run's result."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparsenets.config import load_recipe
from sparsenets.io import load_tensors, load_torch
from sparsenets.training import run_training

ROOT = Path(__file__).resolve().parent.parent
RECIPE = """
name: step_ckpt
dataset: digits
model: mlp
hidden: [32]
epochs: {epochs}
batch_size: 50
lr: 0.1
seed: 0
device: cpu
threads: 1
checkpoint_every: 4
sparsity:
  method: rigl
  density: 0.3
  update_every: 5
"""
TIMING = {"train_seconds", "wall_seconds", "topology_seconds"}


def recipe(tmp_path: Path, epochs: int) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(epochs=epochs))
    return path


def same_run(a: Path, b: Path) -> None:
    for part in ("model", "masks"):
        x, y = load_tensors(a / "checkpoint" / f"{part}.safetensors"), load_tensors(b / "checkpoint" / f"{part}.safetensors")
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), (part, key)
    def epochs(path):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert epochs(a) == epochs(b)
    def steps(path):
        with open(path / "steps.csv") as fh:
            return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(fh)]
    assert steps(a) == steps(b)


def test_a_checkpoint_inside_the_epoch_holds_the_step_and_the_running_sums(tmp_path):
    config = load_recipe(recipe(tmp_path, 1))
    result = run_training(config, tmp_path / "run", progress=False)
    assert result["epochs"] == 1
    state = load_torch(tmp_path / "run" / "checkpoint" / "state.pt")
    assert "partial" not in state and state["epoch"] == 1  # the epoch end replaced the step checkpoints


def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(tmp_path):
    path = recipe(tmp_path, 6)
    whole = subprocess.run([sys.executable, "-m", "sparsenets.cli", "train", str(path), "--out",
                            str(tmp_path / "whole"), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "sparsenets.cli", "train", str(path), "--out", str(run), "--quiet"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, killed_at = time.time() + 120, None
    while time.time() < deadline and proc.poll() is None:
        state_file = run / "checkpoint" / "state.pt"
        if state_file.exists():
            try:
                state = load_torch(state_file)
            except Exception:  # being replaced right now
                state = {}
            partial = state.get("partial")
            if partial and state.get("epoch", 0) >= 2:  # inside the third epoch or later
                os.kill(proc.pid, signal.SIGKILL)
                killed_at = partial["step"]
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert proc.returncode == -signal.SIGKILL
    resumed = subprocess.run([sys.executable, "-m", "sparsenets.cli", "train", "--resume", str(run), "--quiet"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    same_run(tmp_path / "whole", run)


@pytest.mark.parametrize("crash_at", ["before the first rename", "between the renames", "after both renames"])
def test_sigkill_inside_a_checkpoint_write_leaves_a_resumable_checkpoint(tmp_path, crash_at):
    """The process SIGKILLs itself at a point of the second checkpoint's swap (old checkpoint
    moved aside, new one renamed in), then resumes; the result equals the uninterrupted run."""
    path = recipe(tmp_path, 2)
    whole = tmp_path / "whole"
    run_training(load_recipe(path), whole, progress=False)
    run = tmp_path / "crashed"
    script = f"""
import os, signal
import sparsenets.io as io
from sparsenets.config import load_recipe
from sparsenets.training import run_training
calls = {{"replace": 0, "writes": 0}}
real_replace, real_replace_dir = os.replace, io.replace_dir
def replace_dir(target, fill):
    calls["writes"] += 1
    return real_replace_dir(target, fill)
def replace(src, dst):
    if calls["writes"] != 2 or not str(dst).endswith(("checkpoint", ".checkpoint.old")):
        return real_replace(src, dst)
    calls["replace"] += 1
    point = {crash_at!r}
    if (point, calls["replace"]) in (("before the first rename", 1), ("between the renames", 2)):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
    if (point, calls["replace"]) == ("after both renames", 2):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
import sparsenets.training as training
training.replace_dir = replace_dir
run_training(load_recipe({str(path)!r}), {str(run)!r}, progress=False)
"""
    crashed = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    resumed = subprocess.run([sys.executable, "-m", "sparsenets.cli", "train", "--resume", str(run), "--quiet"],
                             cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    same_run(whole, run)
    assert not list(run.glob(".checkpoint*"))  # the swap's leftovers are gone
