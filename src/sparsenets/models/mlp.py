"""Fully connected reference model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparsenets.errors import SparsenetsError, choice_error

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (relu, tanh, sigmoid)."""
    try:
        return ACTIVATIONS[name]()
    except (KeyError, TypeError):
        raise choice_error("activation", name, ACTIVATIONS) from None


class MLP(nn.Module):
    """Multi-layer perceptron ``in_features -> hidden... -> num_classes``.

    Hidden linear layers are named ``fc1``, ``fc2``, ... and the output layer ``head``, so
    parameters read as ``fc1.weight``, ``head.bias``, etc.

    Args:
        in_features: number of input features; inputs ``(B, *shape)`` are flattened to
            ``(B, in_features)``.
        hidden: widths of the hidden layers.
        num_classes: number of output logits.
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (1024, 512),
        num_classes: int = 10,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        widths = [int(h) for h in hidden]
        if int(in_features) < 1 or int(num_classes) < 1 or any(w < 1 for w in widths):
            raise SparsenetsError(
                f"MLP sizes must be positive: in_features={in_features}, hidden={list(hidden)}, "
                f"num_classes={num_classes}"
            )
        make_activation(activation)  # validate early
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.activation = activation
        prev = self.in_features
        for i, width in enumerate(widths, start=1):
            self.add_module(f"fc{i}", nn.Linear(prev, width))
            self.add_module(f"act{i}", make_activation(activation))
            prev = width
        self.num_hidden = len(widths)
        self.head = nn.Linear(prev, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, *shape)`` with ``prod(shape) == in_features`` to logits ``(B, num_classes)``."""
        h = x.reshape(x.shape[0], -1)
        for i in range(1, self.num_hidden + 1):
            h = getattr(self, f"act{i}")(getattr(self, f"fc{i}")(h))
        return self.head(h)
