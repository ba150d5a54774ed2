"""Integration: short training runs on digits for every method, resume exactness, run files."""

from __future__ import annotations

import json

import pytest
import torch

from sparsenets.config import build_config
from sparsenets.dst import METHODS
from sparsenets.io import load_tensors
from sparsenets.training import run_training


def digits_config(method: str, **extra) -> dict:
    sparsity = {"method": method}
    if method != "dense":
        sparsity.update({"density": 0.2, "distribution": "erk"})
        if method != "static":
            sparsity["update_every"] = 10
    sparsity.update(extra.pop("sparsity", {}))
    return {
        "name": f"digits_{method}",
        "dataset": "digits",
        "model": "mlp",
        "hidden": [64, 32],
        "epochs": 3,
        "batch_size": 64,
        "optimizer": "adam",
        "lr": 0.01,
        "weight_decay": 0.0,
        "device": "cpu",
        "seed": 3,
        "sparsity": sparsity,
        **extra,
    }


@pytest.mark.parametrize("method", ["dense", *METHODS])
def test_every_method_trains_on_digits(tmp_path, method):
    config = build_config(digits_config(method))
    summary = run_training(config, tmp_path / "run", progress=False)
    # Digits is easy: every method must learn well beyond chance (0.1) in 3 short epochs.
    assert summary["test_accuracy"] > 0.6, summary["test_accuracy"]
    if method == "dense":
        assert summary["density"] == pytest.approx(1.0)
    else:
        assert summary["density"] == pytest.approx(0.2, abs=1e-3)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for name in ("summary.json", "config.yaml", "accuracy.png", "layer_density.png"):
        assert (tmp_path / "run" / name).stat().st_size > 0
    if method in ("set", "rigl"):
        assert summary["itop_rate"] > summary["density"] + 0.01
        assert summary["topology_updates"] > 0
    if method == "static":
        assert summary["itop_rate"] == pytest.approx(summary["density"])


@pytest.mark.parametrize("method", ["rigl", "snfs", "granet", "ctre"])
def test_resume_equals_uninterrupted(tmp_path, method):
    config = build_config(digits_config(method, epochs=4))
    full = run_training(config, tmp_path / "full", progress=False)
    partial = run_training(config, tmp_path / "resumed", progress=False, stop_after_epochs=2)
    assert partial["finished"] is False and partial["epoch"] == 2
    resumed = run_training(config, tmp_path / "resumed", resume=True, progress=False)
    a = load_tensors(tmp_path / "full" / "checkpoint" / "model.safetensors")
    b = load_tensors(tmp_path / "resumed" / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ma = load_tensors(tmp_path / "full" / "checkpoint" / "masks.safetensors")
    mb = load_tensors(tmp_path / "resumed" / "checkpoint" / "masks.safetensors")
    for key in ma:
        assert torch.equal(ma[key], mb[key]), key
    assert resumed["test_accuracy"] == full["test_accuracy"]
    assert resumed["topology_updates"] == full["topology_updates"]


def test_same_seed_same_run(tmp_path):
    config = build_config(digits_config("set", epochs=1))
    first = run_training(config, tmp_path / "a", progress=False)
    second = run_training(config, tmp_path / "b", progress=False)
    assert first["test_accuracy"] == second["test_accuracy"]
    a = load_tensors(tmp_path / "a" / "checkpoint" / "model.safetensors")
    b = load_tensors(tmp_path / "b" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cnn_on_digits_with_conv_layers(tmp_path):
    config = build_config(
        digits_config("rigl", model="cnn", channels=[8, 16], hidden=[32], epochs=4, lr=0.02)
    )
    summary = run_training(config, tmp_path / "cnn", progress=False)
    names = [layer["name"] for layer in summary["report"]["layers"]]
    assert "conv1.weight" in names and "head.weight" in names
    assert summary["flops_sparse"] < summary["flops_dense"]
    assert summary["test_accuracy"] > 0.5
