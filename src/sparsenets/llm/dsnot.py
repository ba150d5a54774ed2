"""DSnoT (Zhang et al., ICLR 2024, "Dynamic Sparse No Training"): training-free mask repair.

On top of a one-shot mask (magnitude, Wanda, SparseGPT) DSnoT swaps pruned and kept weights
row by row so that the *expected* output of each row moves back towards the dense one, using
only first and second moments of the layer's inputs from calibration:

* contribution of weight (i, j): ``c_ij = W_ij · s_j`` with ``s_j = Σ_t x_tj / n_sequences``
  (the token sum of input feature j, averaged over calibration sequences, as in the reference);
* reconstruction error of row i: ``e_i = Σ_{j pruned} c_ij`` (what pruning removed from the
  expected output);
* grow: the pruned weight of the row whose ``c_ij / Var[x_j]^p`` (``p`` = ``var_power``) is the
  most positive when ``e_i > 0`` (most negative when ``e_i ≤ 0``) — reviving it cancels error;
* prune: unstructured, the kept weight of the opposite sign of contribution with the lowest
  Wanda score ``|W_ij| · ‖X_j‖₂``; N:M, the kept weight with the lowest score of the initial
  method *in the same group of M* as the grown one (so every group keeps exactly N);
* a row swaps while ``|e_i| > threshold`` and (with ``same_sign``) the error after the swap keeps
  the sign it had before any swap; the first refused swap stops the row for good; at most
  ``max_cycles`` swaps per row.

Each swap revives one weight and removes one in the same row (same group for N:M), so per-row
counts and N:M groups stay exact. Weights are not updated: a revived weight gets its dense value
back (DSnoT only moves the mask). The defaults are the reference's (``zyxxmu/DSnoT``,
``main.py``): 50 cycles, threshold 0.1, variance power 1, and MLP layers skipped
(``--skip_layer mlp``: they keep the initial mask). The reference's unstructured path tests the
sign condition only when ``--without_same_sign`` is false, and that flag (``type=bool``) is true
for any value given, so its default runs without it; here the condition is on by default, as the
paper describes it, and ``same_sign=False`` gives the reference's behaviour. The threshold is in
the units of ``s`` above, which grow with the sequence length (the reference used 2048 tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import SparsenetsError
from ..select import NM, Structure
from .stats import _Accumulator


@dataclass(frozen=True)
class DSnoTOptions:
    """DSnoT's parameters (defaults: the reference implementation's).

    Attributes:
        max_cycles: swaps tried per row at most.
        threshold: a row stops once its |reconstruction error| is at most this.
        var_power: the grow score divides the contribution by ``Var[x_j] ** var_power``.
        same_sign: refuse a swap that flips the sign of the row's error.
        skip: regular expression(s) (``re.search`` on the layer name inside its block, e.g.
            ``mlp.gate_proj``) of layers that keep the initial mask; default ``"mlp"`` (the
            reference skips the MLP layers); ``None`` or ``()`` processes every layer.
    """

    max_cycles: int = 50
    threshold: float = 0.1
    var_power: float = 1.0
    same_sign: bool = True
    skip: str | tuple[str, ...] | None = "mlp"

    def __post_init__(self):
        if not isinstance(self.max_cycles, int) or self.max_cycles < 0:
            raise SparsenetsError(f"DSnoT max_cycles must be an integer >= 0, got {self.max_cycles!r}")
        if not self.threshold >= 0:
            raise SparsenetsError(f"DSnoT threshold must be >= 0, got {self.threshold!r}")
        if not self.var_power >= 0:
            raise SparsenetsError(f"DSnoT var_power must be >= 0, got {self.var_power!r}")
        for pattern in self.skip_patterns():
            try:
                re.compile(pattern)
            except re.error as error:
                raise SparsenetsError(f"DSnoT skip pattern {pattern!r} is not a regular expression: {error}") from None

    def skip_patterns(self) -> tuple[str, ...]:
        if self.skip is None:
            return ()
        return (self.skip,) if isinstance(self.skip, str) else tuple(self.skip)

    def skips(self, layer_name: str) -> bool:
        """Whether the layer called ``layer_name`` (inside its block) keeps the initial mask."""
        return any(re.search(p, layer_name) for p in self.skip_patterns())


class InputMomentStats(_Accumulator):
    """First and second moments of a layer's inputs, per feature (float64), for DSnoT.

    ``batch_statistic(x)`` is the (3, in) stack of Σx, Σx² and Σ_sequences (Σ_t x)²/T over the
    batch's tokens (the last gives the within-sequence variance); the number of sequences is
    counted alongside (``n_sequences``: the leading dims of a (B, T, in) input, 1 for a (T, in)
    one). ``finalize()`` returns a :class:`InputMoments`.
    """

    def __init__(self, in_features: int):
        super().__init__(in_features)
        self.n_sequences = 0

    def batch_statistic(self, x: torch.Tensor) -> torch.Tensor:
        """(3, in) float64: Σ_t x_t, Σ_t x_t² and Σ_s (Σ_{t in s} x_t)² / T of one batch
        (sequences s of T tokens: the second-to-last dim of ``x``)."""
        rows = self._rows(x)
        rows = rows if rows.dtype == torch.float64 else rows.float()
        length = x.shape[-2] if x.dim() >= 2 else 1
        sequence_sums = rows.reshape(-1, length, self.in_features).sum(1)  # (sequences, in)
        return torch.stack((rows.sum(0), rows.square().sum(0), sequence_sums.square().sum(0) / length)).double()

    def add_input(self, statistic: torch.Tensor, x: torch.Tensor) -> None:
        super().add_input(statistic, x)
        self.n_sequences += sequences_in(x)

    def finalize(self) -> InputMoments:
        if self.total is None or self.n_tokens == 0:
            raise SparsenetsError("DSnoT needs calibration inputs: no tokens reached this layer")
        total, squares, sequence_squares = self.total
        # the within-sequence variance, averaged over sequences by their tokens (the reference's
        # running average of each calibration sequence's variance)
        var = ((squares - sequence_squares) / self.n_tokens).clamp_min(0.0)
        return InputMoments(token_sum=(total / max(self.n_sequences, 1)).float(), var=var.float(),
                            norm=squares.sqrt().float())


def sequences_in(x: torch.Tensor) -> int:
    """Calibration sequences in a layer input (B, T, in) → B; (T, in) → 1."""
    return int(x.shape[0]) if x.dim() >= 3 else 1


@dataclass(frozen=True)
class InputMoments:
    """What DSnoT reads from calibration, per input feature j (each (in,) float32).

    Attributes:
        token_sum: ``s_j = Σ_t x_tj / n_sequences``.
        var: ``Var[x_j]``: each calibration sequence's variance over its tokens, averaged over the
            sequences (weighted by tokens), as the reference accumulates it.
        norm: ``‖X_j‖₂`` over all calibration tokens (Wanda's statistic).
    """

    token_sum: torch.Tensor
    var: torch.Tensor
    norm: torch.Tensor


@torch.no_grad()
def dsnot_keep_mask(
    weight: torch.Tensor,
    keep: torch.Tensor,
    moments: InputMoments,
    structure: Structure,
    *,
    initial_scores: torch.Tensor | None = None,
    options: DSnoTOptions = DSnoTOptions(),
) -> tuple[torch.Tensor, int]:
    """The DSnoT keep mask of one layer, starting from ``keep``.

    Args:
        weight: (out, in) dense weights (before pruning).
        keep: (out, in) bool keep mask of the initial method; not modified.
        moments: the layer's input moments (:class:`InputMomentStats`).
        structure: the structure ``keep`` has (unstructured per-row counts, or N:M).
        initial_scores: (out, in) scores of the initial method (higher = more important); N:M
            prunes the lowest kept one of the grown weight's group. Default: Wanda's.
        options: :class:`DSnoTOptions`.

    Returns:
        ``(keep, swaps)``: the new (out, in) bool mask, with the same count in every row (and
        every N:M group) as ``keep``, and the number of swaps made.
    """
    out_features, in_features = weight.shape
    if keep.shape != weight.shape:
        raise SparsenetsError(f"DSnoT: mask shape {tuple(keep.shape)} does not match weight {tuple(weight.shape)}")
    device = weight.device
    w = weight.detach().float()
    s, var, norm = (t.to(device=device, dtype=torch.float32) for t in (moments.token_sum, moments.var, moments.norm))
    contribution = w * s  # (out, in): each weight's share of its row's expected output
    keep = keep.to(device=device, dtype=torch.bool).clone()
    pruned0 = ~keep
    error = (contribution * pruned0).sum(1)  # (out,)
    sign0 = torch.sign(error)
    rows = torch.arange(out_features, device=device)

    # Grow candidates: the initially pruned weights of each row, ascending by contribution / var^p.
    grow_score = contribution / var.clamp_min(torch.finfo(torch.float32).tiny).pow(options.var_power)
    grow_score = grow_score.nan_to_num(posinf=torch.finfo(torch.float32).max, neginf=-torch.finfo(torch.float32).max)
    n_pruned = pruned0.sum(1)  # (out,), equal in every row for both structures
    grow_order = torch.argsort(torch.where(pruned0, grow_score, torch.inf), dim=1, stable=True)
    low = torch.zeros(out_features, dtype=torch.long, device=device)  # next most negative
    high = n_pruned - 1  # next most positive

    nm = structure if isinstance(structure, NM) else None
    if nm is None:
        # Prune candidates: kept weights by sign of contribution, each ascending by Wanda score.
        wanda = w.abs() * norm
        negative, positive = keep & (contribution < 0), keep & (contribution > 0)
        negative_order = torch.argsort(torch.where(negative, wanda, torch.inf), dim=1, stable=True)
        positive_order = torch.argsort(torch.where(positive, wanda, torch.inf), dim=1, stable=True)
        n_negative, n_positive = negative.sum(1), positive.sum(1)
        next_negative = torch.zeros_like(low)
        next_positive = torch.zeros_like(low)
    else:
        scores = (w.abs() * norm if initial_scores is None else initial_scores.to(device).float()).clone()
        scores[pruned0] = torch.inf  # only initially kept weights are ever pruned, and each once
        group_offsets = torch.arange(nm.m, device=device)

    active = torch.ones(out_features, dtype=torch.bool, device=device)
    swaps = 0
    for _ in range(options.max_cycles):
        if not bool(active.any()):
            break
        positive_error = error > 0
        slot = torch.where(positive_error, high, low).clamp(0, in_features - 1)
        grow = grow_order.gather(1, slot.unsqueeze(1)).squeeze(1)  # (out,)
        valid = low <= high
        if nm is None:
            use_negative = positive_error
            pick = torch.where(use_negative, next_negative, next_positive).clamp(0, in_features - 1)
            order = torch.where(use_negative.unsqueeze(1), negative_order, positive_order)
            cut = order.gather(1, pick.unsqueeze(1)).squeeze(1)
            valid &= torch.where(use_negative, next_negative < n_negative, next_positive < n_positive)
        else:
            start = grow - grow % nm.m
            group = start.unsqueeze(1) + group_offsets  # (out, M)
            in_group = scores.gather(1, group)
            best, place = in_group.min(1)
            cut = start + place
            valid &= torch.isfinite(best)
        error_after = error + contribution[rows, cut] - contribution[rows, grow]
        accept = active & valid & (error.abs() > options.threshold)
        if options.same_sign:
            accept &= torch.sign(error_after) == sign0
        active = accept
        if bool(accept.any()):
            chosen = rows[accept]
            keep[chosen, grow[accept]] = True
            keep[chosen, cut[accept]] = False
            error = torch.where(accept, error_after, error)
            swaps += int(accept.sum())
            if nm is not None:
                scores[chosen, cut[accept]] = torch.inf
        high = torch.where(positive_error, high - 1, high)
        low = torch.where(positive_error, low, low + 1)
        if nm is None:
            next_negative = torch.where(positive_error, next_negative + 1, next_negative)
            next_positive = torch.where(positive_error, next_positive, next_positive + 1)
    return keep, swaps


def check_recover(recover: str | None, options: DSnoTOptions | None) -> DSnoTOptions | None:
    """Validate ``prune(recover=...)``: the DSnoT options to use, or ``None`` for no recovery."""
    if recover is None:
        if options is not None:
            raise SparsenetsError("DSnoT options were given without recover='dsnot'")
        return None
    if recover != "dsnot":
        raise SparsenetsError(f"unknown recovery method {recover!r} (valid: 'dsnot', or None)")
    return options or DSnoTOptions()


class PairedStats:
    """The initial method's accumulator and DSnoT's moments, fed the same inputs.

    ``batch_statistic`` / ``add_input`` keep the sharing of one computation between layers that
    read the same tensor (see :func:`.calibrate.sequential_calibration`); ``finalize()`` gives
    ``(method statistic or None, InputMoments)``.
    """

    def __init__(self, method_stats, in_features: int):
        self.method_stats = method_stats
        self.moments = InputMomentStats(in_features)

    @property
    def n_tokens(self) -> int:
        return self.moments.n_tokens

    def batch_statistic(self, x: torch.Tensor) -> tuple:
        first = self.method_stats.batch_statistic(x) if self.method_stats is not None else None
        return first, self.moments.batch_statistic(x)

    def add_input(self, statistic: tuple, x: torch.Tensor) -> None:
        if self.method_stats is not None:
            self.method_stats.add_input(statistic[0], x)
        self.moments.add_input(statistic[1], x)

    def update(self, x: torch.Tensor) -> None:
        self.add_input(self.batch_statistic(x), x)

    def finalize(self) -> tuple:
        return (self.method_stats.finalize() if self.method_stats is not None else None), self.moments.finalize()


def initial_scores(method: str, weight: torch.Tensor, statistic: torch.Tensor | None) -> torch.Tensor:
    """(out, in) scores of the initial method on the dense ``weight`` (higher = kept first):
    ``|W|`` (magnitude), ``|W|·‖X_j‖₂`` (Wanda, ``statistic`` = the norms), ``W² / [U]_jj²``
    with U the upper Cholesky factor of (H + 1%)⁻¹ (SparseGPT, ``statistic`` = H)."""
    w = weight.detach().float()
    if method == "magnitude" or statistic is None:
        return w.abs()
    if method == "wanda":
        return w.abs() * statistic.to(w.device, torch.float32)
    if method == "sparsegpt":
        from .sparsegpt import damped_inverse_factor

        diag = torch.diagonal(damped_inverse_factor(statistic.to(w.device), 0.01)[0]).float()
        return w.square() / diag.square()
    raise SparsenetsError(f"DSnoT has no initial score for method {method!r}")


__all__ = ["DSnoTOptions", "InputMomentStats", "InputMoments", "PairedStats", "check_recover", "dsnot_keep_mask",
           "initial_scores"]
