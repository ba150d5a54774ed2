"""Pure scoring functions: a score per weight, the same shape as the weight.

Higher means "more important" (keep or grow); drop steps remove the lowest scores. The one
exception is :func:`grasp`, whose paper removes the *highest* scores (said in its docstring).
"""

from __future__ import annotations

import torch


def magnitude(param: torch.Tensor) -> torch.Tensor:
    """|w| — the drop score of SET, RigL, SNFS, GraNet and GMP."""
    return param.detach().abs()


def gradient_magnitude(grad: torch.Tensor) -> torch.Tensor:
    """|∂L/∂w| of the dense gradient — RigL's and GraNet's grow score."""
    return grad.detach().abs()


def wanda(weight: torch.Tensor, input_norms: torch.Tensor) -> torch.Tensor:
    """Wanda scores S_ij = |W_ij| · ‖X_j‖₂ (Sun et al. 2023, "A Simple and Effective Pruning Approach for LLMs").

    Args:
        weight: (out, in) Linear weight, any float dtype.
        input_norms: (in,) L2 norm of each input feature over all calibration tokens
            (e.g. :class:`sparsenets.llm.stats.InputNormStats`), any device.

    Returns:
        (out, in) float32 scores on ``weight``'s device (the product is taken in float32).
    """
    return weight.detach().abs().float() * input_norms.to(weight.device).float().unsqueeze(0)


def random_scores(shape: tuple[int, ...], generator: torch.Generator, device=None) -> torch.Tensor:
    """Uniform random scores (random growth of SET and MEST), drawn on CPU then moved."""
    scores = torch.rand(shape, generator=generator)
    return scores.to(device) if device is not None else scores


def mest_drop_score(param: torch.Tensor, grad: torch.Tensor | None, weight: float) -> torch.Tensor:
    """MEST's drop score |w| + λ|∂L/∂w| (the gradient only at active positions is needed)."""
    score = param.detach().abs()
    if grad is not None and weight:
        score = score + weight * grad.detach().abs()
    return score


def sign_sided_rank(score: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Drop score that takes the same share from the positive and the negative weights.

    Each active weight gets its rank within its own sign side, divided by the side's size:
    ``r / n_side`` in ``[0, 1)`` ascending by ``score`` (ties by position). Exactly zero weights
    get ``-1`` (dropped first). Dropping the ``k`` lowest of these then removes about the same
    fraction of each side, each by its own lowest scores, as SET's reference does with "the
    largest negative and the smallest positive" weights.

    Args:
        score: (any shape) the drop score, lower = drop first (e.g. |w|).
        weight: the weight (same shape); only its sign is read.
        mask: bool (same shape), the active positions; inactive ones get ``+inf``. None: every
            position is active (e.g. ``score`` and ``weight`` are a sparse layer's ``(nnz,)`` values).

    Returns:
        float32 tensor of ``score``'s shape.
    """
    flat_score = score.detach().reshape(-1).float()
    flat_weight = weight.detach().reshape(-1)
    active = (
        torch.ones_like(flat_score, dtype=torch.bool) if mask is None else mask.reshape(-1).to(flat_score.device)
    )
    rank = torch.full_like(flat_score, float("inf"))
    rank[active & (flat_weight == 0)] = -1.0
    for side in (flat_weight > 0, flat_weight < 0):
        index = (side & active).nonzero().squeeze(1)
        if index.numel():
            order = torch.argsort(flat_score[index], stable=True)
            ranks = torch.empty(index.numel(), device=rank.device)
            ranks[order] = torch.arange(index.numel(), device=rank.device, dtype=torch.float32)
            rank[index] = ranks / index.numel()
    return rank.reshape(score.shape)


def activation_cosine_similarity(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Cosine similarity between every output neuron and every input neuron over a batch (CTRE).

    Args:
        inputs: (B, n_in) activations entering the layer.
        outputs: (B, n_out) activations leaving the layer.

    Returns:
        (n_out, n_in) similarities in [-1, 1]; a neuron that never fires has similarity 0.
    """
    x = torch.nn.functional.normalize(inputs.detach().float(), dim=0)
    y = torch.nn.functional.normalize(outputs.detach().float(), dim=0)
    return y.t() @ x


# --------------------------------------------------------------- pruning at initialization


def snip(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """SNIP's connection sensitivity |∂L/∂w ⊙ w| (Lee et al. 2019, "SNIP: Single-shot Network
    Pruning based on Connection Sensitivity"), the gradient of the loss with respect to a
    multiplicative mask c at c = 1. Higher = keep.

    Args:
        weight: a weight of any shape (out, in, ...).
        grad: ∂L/∂w of the same shape, over the pruning batch.

    Returns:
        non-negative scores of ``weight``'s shape and dtype.
    """
    return (grad.detach() * weight.detach()).abs()


def grasp(weight: torch.Tensor, hessian_grad: torch.Tensor) -> torch.Tensor:
    """GraSP's score S = −w ⊙ (H g) (Wang et al. 2020, "Picking Winning Tickets Before Training
    by Preserving Gradient Flow"). **The highest scores are removed** (removing them reduces the
    gradient flow gᵀHg the least), so callers keep the *lowest*, e.g. by selecting on ``-S``.

    Args:
        weight: a weight of any shape (out, in, ...).
        hessian_grad: (H g) restricted to this weight, the same shape: the Hessian of the loss
            times its gradient, from double backpropagation.

    Returns:
        signed scores of ``weight``'s shape and dtype.
    """
    return -weight.detach() * hessian_grad.detach()


def synflow(weight: torch.Tensor, flow_grad: torch.Tensor) -> torch.Tensor:
    """SynFlow's synaptic saliency |w ⊙ ∂R/∂w| (Tanaka et al. 2020, "Pruning neural networks
    without any data by iteratively conserving synaptic flow"), where R = 1ᵀ f(1) is the summed
    output of the network with every parameter replaced by its absolute value. Higher = keep.

    Args:
        weight: the (absolute-valued, masked) weight of any shape, in the dtype scored.
        flow_grad: ∂R/∂w of the same shape.

    Returns:
        non-negative scores of ``weight``'s shape and dtype (score in float64 for deep
        networks: in float32 the products flush to zero and tie).
    """
    return (weight.detach() * flow_grad.detach()).abs()


def lamp(
    weight: torch.Tensor, eligible: torch.Tensor | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """LAMP scores (Lee et al. 2021, "Layer-adaptive Sparsity for the Magnitude-based Pruning").

    Within the layer the eligible weights are sorted ascending by w², u = 0 … n−1, and

        score(u) = w_u² / Σ_{v ≥ u} w_v²,

    which increases with |w| inside a layer and is comparable across layers: select globally on
    it. The largest weight of every layer scores exactly 1 and every other weight at most 1/2,
    so a global selection that keeps at least one weight per layer keeps every layer's largest.
    Equal weights take distinct consecutive places in the sort (at random with ``generator``,
    else by position). Computed in float64; a layer of zeros scores 0 except its last place.

    Args:
        weight: a weight of any shape.
        eligible: bool mask of the positions that compete (e.g. the surviving weights of an IMP
            round); others score −inf. ``None`` means all.
        generator: CPU generator ordering equal weights.

    Returns:
        float64 scores of ``weight``'s shape in [0, 1] (−inf at ineligible positions).
    """
    squares = weight.detach().double().reshape(-1) ** 2
    pool = torch.arange(squares.numel(), device=squares.device)
    if eligible is not None:
        pool = pool[eligible.reshape(-1).to(squares.device)]
    values = squares[pool]  # (m,)
    if generator is not None:  # a random order among equal values: shuffle, then stable sort
        shuffle = torch.randperm(values.numel(), generator=generator).to(values.device)
        order = shuffle[torch.argsort(values[shuffle], stable=True)]
    else:
        order = torch.argsort(values, stable=True)
    ascending = values[order]  # (m,)
    tails = ascending.flip(0).cumsum(0).flip(0)  # Σ_{v ≥ u} w_v²
    ranked = torch.where(tails > 0, ascending / tails.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    if ranked.numel():
        ranked[-1] = 1.0
    scores = torch.full_like(squares, float("-inf"))
    scores[pool[order]] = ranked
    return scores.reshape(weight.shape)
