"""Small convolutional reference model for 1-D ``(C, L)`` or 2-D ``(C, H, W)`` inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from sparsenets.errors import SparsenetsError


class SmallCNN(nn.Module):
    """Conv stages then a two-layer classifier.

    Each stage ``i`` is ``conv{i}`` (3x3 or 3-tap, padding 1) -> ReLU -> max-pool by 2, the
    pooling being skipped when it would make a spatial size smaller than 2. Then flatten ->
    ``fc1`` (``hidden`` units) -> ReLU -> ``head`` (``num_classes`` logits).

    Args:
        input_shape: per-sample shape, ``(C, H, W)`` (Conv2d) or ``(C, L)`` (Conv1d).
        num_classes: number of output logits.
        channels: output channels of each conv stage.
        hidden: width of the fully connected hidden layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        hidden: int = 128,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if len(shape) == 3:
            conv_cls, pool_cls = nn.Conv2d, nn.MaxPool2d
        elif len(shape) == 2:
            conv_cls, pool_cls = nn.Conv1d, nn.MaxPool1d
        else:
            raise SparsenetsError(
                f"SmallCNN needs input_shape (C, L) or (C, H, W), got {tuple(input_shape)}"
            )
        if any(s < 1 for s in shape) or not channels or any(int(c) < 1 for c in channels):
            raise SparsenetsError(
                f"SmallCNN sizes must be positive: input_shape={shape}, channels={list(channels)}"
            )
        self.input_shape = shape
        self.num_classes = int(num_classes)
        self.num_stages = len(channels)
        in_ch, spatial = shape[0], list(shape[1:])
        for i, out_ch in enumerate(channels, start=1):
            self.add_module(f"conv{i}", conv_cls(in_ch, int(out_ch), kernel_size=3, padding=1))
            self.add_module(f"act{i}", nn.ReLU())
            if all(s // 2 >= 2 for s in spatial):
                self.add_module(f"pool{i}", pool_cls(2))
                spatial = [s // 2 for s in spatial]
            else:
                self.add_module(f"pool{i}", nn.Identity())
            in_ch = int(out_ch)
        with torch.no_grad():
            flat = self._features(torch.zeros(1, *shape)).shape[1]
        self.fc1 = nn.Linear(flat, int(hidden))
        self.act_fc = nn.ReLU()
        self.head = nn.Linear(int(hidden), self.num_classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *input_shape)`` -> flattened conv features ``(B, F)``."""
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"pool{i}")(getattr(self, f"act{i}")(getattr(self, f"conv{i}")(x)))
        return x.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, *input_shape)`` to logits ``(B, num_classes)``."""
        x = x.reshape(x.shape[0], *self.input_shape)
        return self.head(self.act_fc(self.fc1(self._features(x))))
