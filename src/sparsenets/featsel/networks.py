"""The networks the selectors train, and the neuron strengths they rank features by."""

from __future__ import annotations

import torch
from torch import nn

from ..sparse import SparseLinear


class Autoencoder(nn.Module):
    """One-hidden-layer (denoising) autoencoder: ``x → sigmoid(encoder x) → dropout → decoder``.

    Weights ``encoder.weight`` ``(hidden, n_in)`` and ``decoder.weight`` ``(n_in, hidden)``; the
    output is linear, ``(B, n_in)``.
    """

    def __init__(self, n_in: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.encoder = nn.Linear(n_in, hidden)
        self.dropout = nn.Dropout(dropout)
        self.decoder = nn.Linear(hidden, n_in)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden code ``(B, hidden)``."""
        return torch.sigmoid(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.dropout(self.encode(x)))


class MLP(nn.Module):
    """``n_layers`` hidden layers of ``hidden`` tanh units and a linear classifier head.

    Weights ``layers.{2i}.weight``; the first is ``(hidden, n_in)``, the head ``(n_classes, hidden)``.
    """

    def __init__(self, n_in: int, hidden: int, n_layers: int, n_classes: int, dropout: float = 0.0):
        super().__init__()
        modules: list[nn.Module] = []
        width = n_in
        for _ in range(n_layers):
            modules += [nn.Linear(width, hidden), nn.Tanh()]
            if dropout:
                modules.append(nn.Dropout(dropout))
            width = hidden
        modules.append(nn.Linear(width, n_classes))
        self.layers = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def weight_names(self) -> list[str]:
        """Names of the Linear weights, first to last."""
        return [f"layers.{i}.weight" for i, m in enumerate(self.layers) if isinstance(m, nn.Linear)]


@torch.no_grad()
def input_strength(layer: nn.Module) -> torch.Tensor:
    """Strength of each input neuron of a Linear layer: Σ|w| over its outgoing connections.

    Args:
        layer: ``nn.Linear`` (weight ``(out, in)``) or :class:`~sparsenets.SparseLinear`
            (summed straight from the CSR values, no dense matrix).

    Returns:
        ``(in,)`` float tensor on the layer's device.
    """
    if isinstance(layer, SparseLinear):
        strength = torch.zeros(layer.in_features, device=layer.values.device, dtype=layer.values.dtype)
        return strength.index_add_(0, layer.col_indices.long(), layer.values.detach().abs())
    return layer.weight.detach().abs().sum(0)


@torch.no_grad()
def output_strength(layer: nn.Module) -> torch.Tensor:
    """Strength of each output neuron of a Linear layer: Σ|w| over its incoming connections.

    Returns:
        ``(out,)`` float tensor on the layer's device.
    """
    if isinstance(layer, SparseLinear):
        counts = layer.crow_indices.long().diff()
        rows = torch.repeat_interleave(torch.arange(layer.out_features, device=counts.device), counts)
        strength = torch.zeros(layer.out_features, device=layer.values.device, dtype=layer.values.dtype)
        return strength.index_add_(0, rows, layer.values.detach().abs())
    return layer.weight.detach().abs().sum(1)
