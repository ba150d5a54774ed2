"""Per-layer statistics of a Linear layer's inputs, accumulated over calibration tokens.

Accumulators share one interface: ``update(x)`` with the layer input ``x`` of shape
(..., in_features) (any leading batch/sequence dims), then ``finalize()`` for the result.
They are fed by a forward pre-hook on the layer during sequential calibration.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..errors import SparsenetsError


class InputStats(Protocol):
    """A statistics accumulator of one layer's inputs."""

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs (..., in_features)."""

    def finalize(self) -> torch.Tensor:
        """The accumulated statistic."""


class _Accumulator:
    def __init__(self, in_features: int):
        self.in_features = int(in_features)
        self.n_tokens = 0

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise SparsenetsError(f"input has {x.shape[-1]} features, expected {self.in_features}")
        return x.detach().reshape(-1, self.in_features)  # (N, in)


class InputNormStats(_Accumulator):
    """‖X_j‖₂: L2 norm of each input feature j over all calibration tokens (Wanda, Sun et al. 2023).

    Sums of squares are accumulated in float64. ``finalize()`` returns a (in_features,) float32
    tensor of norms (not divided by the token count: Wanda compares scores within a row, where a
    common scale does not matter).
    """

    def __init__(self, in_features: int):
        super().__init__(in_features)
        self.sq_sum = torch.zeros(self.in_features, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        rows = self._rows(x)
        self.sq_sum += rows.double().pow(2).sum(0).cpu()
        self.n_tokens += rows.shape[0]

    def finalize(self) -> torch.Tensor:
        return self.sq_sum.sqrt().float()


class GramStats(_Accumulator):
    """H = X Xᵀ over calibration tokens, (in_features, in_features) in float64 (SparseGPT).

    ``finalize()`` returns the float64 sum of outer products ``Σ_t x_t x_tᵀ`` together with the
    token count in ``n_tokens`` (SparseGPT scales and damps it itself).
    """

    def __init__(self, in_features: int):
        super().__init__(in_features)
        self.gram = torch.zeros(self.in_features, self.in_features, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        rows = self._rows(x).double().cpu()  # (N, in)
        self.gram.addmm_(rows.t(), rows)
        self.n_tokens += rows.shape[0]

    def finalize(self) -> torch.Tensor:
        return self.gram
