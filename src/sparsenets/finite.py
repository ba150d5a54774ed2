"""Finding non-finite values (NaN, ±inf) in a training step, and strict JSON for records."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def first_nonfinite(loss: torch.Tensor | None, model: nn.Module, *, grads: bool = True) -> str | None:
    """Where a step first went non-finite, or None when everything is finite.

    Checks the loss, then (``grads``) each parameter's gradient, else each parameter, in the
    model's registration order.

    Returns:
        e.g. ``"loss (nan)"``, ``"gradient of '0.weight'"`` or ``"weights of '2.bias'"``.
    """
    if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
        return f"loss ({float(loss.detach())})"
    for name, param in model.named_parameters():
        tensor = param.grad if grads else param.detach()
        if tensor is not None and not bool(torch.isfinite(tensor).all()):
            return f"{'gradient' if grads else 'weights'} of {name!r}"
    return None


def finite_or_none(data: Any) -> Any:
    """``data`` with every non-finite float replaced by None (recursively), for strict JSON."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {key: finite_or_none(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [finite_or_none(value) for value in data]
    return data
