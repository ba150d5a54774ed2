"""Perplexity of a causal LM on fixed token windows."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..errors import SparsenetsError

#: Largest float32 logits tensor one evaluation forward may produce (windows x T x vocab x 4 B).
LOGITS_BUDGET_BYTES = 512 << 20


def logits_batch(model: nn.Module, seq_len: int, batch_size: int) -> int:
    """``batch_size``, lowered so that one forward's logits stay within :data:`LOGITS_BUDGET_BYTES`
    (a 262k-token vocabulary makes 4 windows of 512 tokens 2 GiB of logits, and the loss as much
    again); at least 1."""
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
    if vocab <= 0:
        return batch_size
    return max(1, min(batch_size, LOGITS_BUDGET_BYTES // max(1, seq_len * vocab * 4)))


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch_size: int = 4, *, progress: bool = True) -> float:
    """exp(mean next-token NLL) over non-overlapping windows.

    Every window of T tokens contributes T − 1 predictions (token t+1 from tokens ≤ t, no context
    across windows); the mean is over all predictions of all windows, as in the Wanda and
    SparseGPT evaluation.

    Args:
        model: causal LM whose ``model(input_ids=...)`` returns ``.logits`` (B, T, vocab).
        windows: (n_windows, T) int64 token ids, T >= 2 (e.g. :func:`.data.eval_windows`).
        batch_size: windows per forward call (lowered by :func:`logits_batch` for large
            vocabularies: the result does not depend on it).
        progress: show a tqdm bar.
    """
    check_windows(windows)
    device = next(model.parameters()).device
    batch_size = logits_batch(model, windows.shape[1], batch_size)
    total_nll, total_tokens = 0.0, 0
    for chunk in tqdm(windows.long().split(batch_size), desc="perplexity", disable=not progress):
        chunk = chunk.to(device)
        nll, count = next_token_nll(model(input_ids=chunk, use_cache=False).logits, chunk)
        total_nll += nll
        total_tokens += count
    return math.exp(total_nll / total_tokens)


def check_windows(windows: torch.Tensor) -> None:
    """One-line error unless ``windows`` is a non-empty (n_windows, T >= 2) tensor."""
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.shape[1] < 2 or windows.shape[0] == 0:
        shape = tuple(windows.shape) if isinstance(windows, torch.Tensor) else type(windows).__name__
        raise SparsenetsError(f"windows must be a (n_windows, T >= 2) tensor of token ids, got {shape}")


def next_token_nll(logits: torch.Tensor, chunk: torch.Tensor) -> tuple[float, int]:
    """Summed NLL of tokens 1..T-1 of ``chunk (B, T)`` under ``logits (B, T, vocab)`` (position t
    predicts token t+1), in float32, and the number of predictions."""
    logits = logits[:, :-1]
    targets = chunk[:, 1:].to(logits.device)
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
    return float(nll), targets.numel()
