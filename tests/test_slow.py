"""Slow end-to-end checks on Fashion-MNIST (run with `make test-all`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparsenets.config import load_recipe
from sparsenets.errors import SparsenetsError
from sparsenets.training import run_training

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rigl", "set"])
def test_fashion_mnist_two_epochs_at_90_percent(tmp_path, method):
    config = load_recipe(ROOT / "recipes" / f"fashion_mnist_mlp_{method}.yaml", ["epochs=2", "device=cpu"])
    try:
        summary = run_training(config, tmp_path / "run", progress=False)
    except SparsenetsError as error:
        if "Fashion-MNIST" in str(error):
            pytest.skip(str(error))
        raise
    assert summary["density"] == pytest.approx(0.1, abs=1e-4)
    assert summary["test_accuracy"] > 0.83
    assert summary["itop_rate"] > 0.15
