"""Shared fixtures for the sparse-training tests (session-scoped so hypothesis can use them)."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn


def pytest_configure(config):
    """One torch thread: the test tensors are tiny, and on a shared 2-core machine OpenMP
    threads waiting on a busy core make small ops orders of magnitude slower."""
    torch.set_num_threads(1)


def _mlp(sizes: tuple[int, ...], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _optimizer(kind: str, params) -> torch.optim.Optimizer:
    if kind == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)
    if kind == "adam":
        return torch.optim.Adam(params, lr=0.01, weight_decay=1e-3)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.1)
    raise ValueError(kind)


@pytest.fixture(scope="session")
def make_mlp():
    """``make_mlp((n_in, hidden..., n_out), seed)``: a ReLU MLP initialised under ``seed``."""
    return _mlp


@pytest.fixture(scope="session")
def make_optimizer():
    """``make_optimizer(kind, params)`` for kind in sgd (momentum) / adam / adamw."""
    return _optimizer
