"""``sparsity.init`` in training recipes: masks from pruning at initialization, built once (a
resumed run loads them from its checkpoint), with their own per-layer counts."""

from __future__ import annotations

import pytest
import torch
from test_training import digits_config

from sparsenets.config import build_config
from sparsenets.errors import SparsenetsError
from sparsenets.io import load_tensors
from sparsenets.training import Trainer, run_training


@pytest.mark.parametrize(("init", "method"), [("snip", "static"), ("synflow", "rigl"), ("random", "set")])
def test_init_masks_train_and_resume_exactly(init, method, tmp_path):
    config = build_config(digits_config(method, sparsity={"init": init}))
    trainer = Trainer.build(config)
    s = trainer.sparsifier
    assert s.masks.nnz() == round(0.2 * s.masks.numel())
    assert s.target_counts == {n: s.masks.nnz(n) for n in s.masks}
    full = run_training(config, tmp_path / "full", progress=False)
    run_training(config, tmp_path / "resumed", progress=False, stop_after_epochs=1)
    resumed = run_training(config, tmp_path / "resumed", resume=True, progress=False)
    assert resumed["test_accuracy"] == full["test_accuracy"]
    a = load_tensors(tmp_path / "full" / "checkpoint" / "masks.safetensors")
    b = load_tensors(tmp_path / "resumed" / "checkpoint" / "masks.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_init_with_erk_random_follows_the_distribution():
    config = build_config(digits_config("static", sparsity={"init": "random", "distribution": "uniform"}))
    s = Trainer.build(config).sparsifier
    for name in s.masks:  # uniform: every layer at 20% (within one weight)
        assert abs(s.masks.nnz(name) - 0.2 * s.masks.numel(name)) <= 1


def test_init_errors():
    with pytest.raises(SparsenetsError, match="unknown sparsity.init 'snipp'"):
        build_config(digits_config("static", sparsity={"init": "snipp"}))
    with pytest.raises(SparsenetsError, match="starts dense"):
        build_config(digits_config("gmp", sparsity={"init": "snip"}))


def test_the_shipped_init_recipe_is_valid():
    from pathlib import Path

    from sparsenets.config import load_recipe

    config = load_recipe(Path(__file__).resolve().parent.parent / "recipes" / "fashion_mnist_mlp_synflow.yaml", [])
    assert config.sparsity.init == "synflow" and config.sparsity.method == "static"
