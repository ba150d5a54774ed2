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

    n_tokens: int

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs (..., in_features)."""

    def finalize(self) -> torch.Tensor:
        """The accumulated statistic."""


class _Accumulator:
    """Shared plumbing: ``update(x) = add(batch_statistic(x), n_tokens(x))``.

    ``batch_statistic`` is a pure function of the input, so layers that receive the *same* input
    tensor (q/k/v projections, gate/up projections) can share one computation: sequential
    calibration computes it once per distinct input and adds it to each layer's accumulator.
    The running sum lives on the device of the first input, in float64.
    """

    def __init__(self, in_features: int):
        self.in_features = int(in_features)
        self.n_tokens = 0
        self.total: torch.Tensor | None = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise SparsenetsError(f"input has {x.shape[-1]} features, expected {self.in_features}")
        return x.detach().reshape(-1, self.in_features)  # (N, in)

    def batch_statistic(self, x: torch.Tensor) -> torch.Tensor:
        """The statistic of one batch of inputs ``x (..., in)`` (float64)."""
        raise NotImplementedError

    def add(self, statistic: torch.Tensor, n_tokens: int) -> None:
        """Add a batch statistic computed by :meth:`batch_statistic` over ``n_tokens`` tokens."""
        self.total = statistic.clone() if self.total is None else self.total.add_(statistic.to(self.total.device))
        self.n_tokens += int(n_tokens)

    def add_input(self, statistic: torch.Tensor, x: torch.Tensor) -> None:
        """Add ``statistic = batch_statistic(x)`` (computed once, maybe shared by several
        layers) for the input ``x`` it came from."""
        self.add(statistic, x.numel() // x.shape[-1])

    def update(self, x: torch.Tensor) -> None:
        """Add a batch of inputs (..., in_features)."""
        self.add_input(self.batch_statistic(x), x)

    def _total(self, shape: tuple[int, ...]) -> torch.Tensor:
        return self.total if self.total is not None else torch.zeros(shape, dtype=torch.float64)


class InputNormStats(_Accumulator):
    """‖X_j‖₂: L2 norm of each input feature j over all calibration tokens (Wanda, Sun et al. 2023).

    Each batch's sums of squares are taken in float32 (float64 for float64 inputs; an order of
    magnitude faster than converting the batch to float64 first) and accumulated across batches
    in float64. ``finalize()`` returns a (in_features,) float32
    tensor of norms (not divided by the token count: Wanda compares scores within a row, where a
    common scale does not matter).
    """

    def batch_statistic(self, x: torch.Tensor) -> torch.Tensor:
        """(in,) float64 sums of squares of each input feature."""
        rows = self._rows(x)
        rows = rows if rows.dtype == torch.float64 else rows.float()
        return rows.square().sum(0).double()

    def finalize(self) -> torch.Tensor:
        return self._total((self.in_features,)).sqrt().float()


class GramStats(_Accumulator):
    """H = X Xᵀ over calibration tokens, (in_features, in_features) in float64 (SparseGPT).

    Each batch's product is computed in float32 (float64 for float64 inputs) — the GEMM is the
    costly part of SparseGPT's calibration and float64 halves its speed — and summed across
    batches in float64. ``finalize()`` returns ``Σ_t x_t x_tᵀ`` (float64) with the token count in
    ``n_tokens`` (SparseGPT scales and damps it itself).
    """

    def batch_statistic(self, x: torch.Tensor) -> torch.Tensor:
        """(in, in) float64 ``Xᵀ X`` of one batch (rows = tokens)."""
        rows = self._rows(x)
        rows = rows if rows.dtype == torch.float64 else rows.float()
        return symmetric_gram(rows).double()

    def finalize(self) -> torch.Tensor:
        return self._total((self.in_features, self.in_features))


def symmetric_gram(rows: torch.Tensor, parts: int = 4) -> torch.Tensor:
    """``rowsᵀ rows`` (in, in) for ``rows`` (N, in), computing only the blocks on and above the
    diagonal (in ``parts`` column panels) and mirroring the rest: about 5/8 of the GEMM work of
    the full product for 4 panels, exactly symmetric, and the same dot products (bit-identical
    to the full product on the CPU measured; a GEMM library may order a sum differently)."""
    n = rows.shape[1]
    width = -(-n // parts)
    if parts <= 1 or width < 64:
        return rows.t() @ rows
    gram = torch.empty(n, n, dtype=rows.dtype, device=rows.device)
    for start in range(0, n, width):
        stop = min(start + width, n)
        panel = rows[:, start:stop].t() @ rows[:, start:]  # (stop-start, n-start): diagonal block and right of it
        gram[start:stop, start:] = panel
        gram[stop:, start:stop] = panel[:, stop - start:].t()
    return gram
