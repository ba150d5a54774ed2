"""SparseGPT (Frantar & Alistarh 2023): blocked OBS pruning with weight reconstruction.

For a Linear weight W (out, in) and the Gram matrix H = Σ_t x_t x_tᵀ of its inputs (in, in):

1. dead inputs (H_jj = 0) carry no signal: W[:, j] = 0 and H_jj = 1 (as in the reference code);
2. damping: H += λ·I with λ = ``percdamp`` (1%) of the mean diagonal;
3. H⁻¹ via Cholesky, then the *upper* Cholesky factor U of H⁻¹ (the rows of U are the OBS
   update directions for the not-yet-processed columns);
4. columns are processed left to right in blocks of ``blocksize`` (128). Within a block the mask
   is chosen adaptively per row by the score w² / U_jj² using the weights *already updated* by
   earlier columns; for each column the pruning error is propagated to the later columns of the
   block, and after the block to all remaining columns (lazy batch update).

Mask selection (the comparison group is the output row, like Wanda):

* unstructured: the reference prunes a fixed fraction of each row *within every block*, so row
  totals drift from ``round(sparsity · in)`` through per-block rounding. Here block [i1, i2)
  prunes exactly ``round(sparsity · i2) − round(sparsity · i1)`` weights of every row; the counts
  telescope, so every row loses exactly ``round(sparsity · in)`` weights — the same total as
  magnitude and Wanda — while the choice stays adaptive per block.
* N:M: at the first column of each group of M, the N weights with the highest score (on the
  updated weights) are kept.

The OBS arithmetic on W runs in float32 (as in the reference); H, its damping and its inverse
are computed in float64 for a robust Cholesky factorization.
"""

from __future__ import annotations

import torch

from ..errors import SparsenetsError
from ..select import NM, Structure, select


def _upper_inverse_factor(gram: torch.Tensor, percdamp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + λI)⁻¹, float64; retries with 10× damping if H is singular."""
    eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    damp = percdamp * float(torch.diagonal(gram).mean())
    for _ in range(4):
        chol, info = torch.linalg.cholesky_ex(gram + damp * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(chol)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp *= 10.0
    raise SparsenetsError("sparsegpt: the input Gram matrix is not positive definite even with damping; use more calibration data")


def damped_inverse_factor(gram: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, dead): the upper Cholesky factor of (H + λI)⁻¹ in float64 after dead inputs
    (H_jj = 0) got H_jj = 1, and the (in,) bool mask of those dead inputs. ``gram`` is not modified."""
    H = gram.to(torch.float64).clone()
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    return _upper_inverse_factor(H, percdamp), dead


@torch.no_grad()
def sparsegpt_prune(
    weight: torch.Tensor,
    gram: torch.Tensor,
    sparsity: float,
    structure: Structure,
    *,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> torch.Tensor:
    """Prune ``weight`` in place with SparseGPT and return its keep mask.

    Args:
        weight: (out, in) Linear weight; overwritten with the pruned, reconstructed weights
            (pruned entries are exactly 0), in its own dtype.
        gram: (in, in) Σ_t x_t x_tᵀ of the layer inputs (e.g. :class:`.stats.GramStats`), any
            float dtype/device; not modified.
        sparsity: fraction of every row to prune (unstructured; ignored for N:M).
        structure: unstructured or N:M (``in`` must be divisible by M).
        blocksize: columns per lazy-update block (reference: 128).
        percdamp: damping as a fraction of the mean diagonal of H (reference: 0.01).

    Returns:
        (out, in) bool keep mask: exactly ``in − round(sparsity · in)`` True per row, or exactly
        N per group of M consecutive inputs.
    """
    out_features, in_features = weight.shape
    if gram.shape != (in_features, in_features):
        raise SparsenetsError(f"sparsegpt: Gram matrix shape {tuple(gram.shape)} does not match in_features {in_features}")
    nm = structure if isinstance(structure, NM) else None
    if nm is not None:
        nm.check_fits(in_features)
        if blocksize % nm.m:
            raise SparsenetsError(f"sparsegpt: blocksize {blocksize} must be a multiple of M={nm.m}")
    device = weight.device
    W = weight.detach().to(torch.float32).clone()
    upper, dead = damped_inverse_factor(gram.to(device), percdamp)
    W[:, dead] = 0.0
    Hinv = upper.to(torch.float32)  # (in, in), upper triangular
    del upper

    pruned = torch.zeros(out_features, in_features, dtype=torch.bool, device=device)
    for i1 in range(0, in_features, blocksize):
        i2 = min(i1 + blocksize, in_features)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag = torch.diagonal(Hinv1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)  # True = prune
        if nm is None:
            n_prune = int(round(sparsity * i2)) - int(round(sparsity * i1))
            if n_prune > 0:  # the n_prune lowest scores of every row (ties pruned by position)
                mask1 = ~select(W1.pow(2) / diag.unsqueeze(0).pow(2), count - n_prune, group="row")
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if nm is not None and i % nm.m == 0:  # this group of M, scored on the updated weights
                scores = W1[:, i:i + nm.m].pow(2) / diag[i:i + nm.m].unsqueeze(0).pow(2)  # (out, M)
                mask1[:, i:i + nm.m] = ~select(scores, nm.n, group="row")
            q = w.masked_fill(mask1[:, i], 0.0)
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Q1[:, i] = q
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        pruned[:, i1:i2] = mask1

    keep = ~pruned
    weight.copy_((W * keep).to(weight.dtype))
    return keep


def _sparsegpt(weight: torch.Tensor, stat: torch.Tensor | None, sparsity: float, structure: Structure) -> torch.Tensor:
    """:class:`.methods.LayerPruner` entry: ``stat`` is the Gram matrix from :class:`.stats.GramStats`."""
    if stat is None:
        raise SparsenetsError("sparsegpt needs calibration data (input Gram matrix X Xᵀ)")
    return sparsegpt_prune(weight, stat, sparsity, structure)
