"""Pure scoring functions: a score per weight, the same shape as the weight.

Higher means "more important" (keep or grow); drop steps remove the lowest scores.
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
