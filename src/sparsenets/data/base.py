"""The :class:`Dataset` container shared by all loaders."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..errors import SparsenetsError


@dataclass(frozen=True)
class Dataset:
    """An in-memory classification dataset, already standardized.

    Attributes:
        name: registry name, e.g. ``"digits"``.
        x_train: float32 tensor of shape ``(N_train, *input_shape)``.
        y_train: int64 tensor of shape ``(N_train,)`` with labels in ``[0, num_classes)``.
        x_test: float32 tensor of shape ``(N_test, *input_shape)``.
        y_test: int64 tensor of shape ``(N_test,)``.
        input_shape: per-sample shape, channels first, e.g. ``(1, 28, 28)``, ``(1, 8, 8)``,
            ``(1, 40)``.
        num_classes: number of classes.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]
    num_classes: int

    @property
    def num_features(self) -> int:
        """Number of input features per sample, ``prod(input_shape)``."""
        return math.prod(self.input_shape)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, num_classes={self.num_classes})"
        )


def hold_out(data: Dataset, size: int, generator: torch.Generator) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]:
    """Split ``size`` training examples off as a validation set (never seen in training).

    Args:
        data: the dataset.
        size: validation examples, in [1, N_train - 1].
        generator: CPU generator choosing which examples (a seeded permutation).

    Returns:
        ``(data with the remaining training examples, (x_val, y_val))``; the test set is unchanged.
    """
    n = len(data.y_train)
    if not 0 < size < n:
        raise SparsenetsError(f"validation_size must be in [1, {n - 1}] for {data.name} ({n} training examples), got {size}")
    order = torch.randperm(n, generator=generator)
    keep, val = order[size:].sort().values, order[:size].sort().values
    train = replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
    return train, (data.x_train[val], data.y_train[val])
