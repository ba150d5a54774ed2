"""The :class:`Dataset` container shared by all loaders."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


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
