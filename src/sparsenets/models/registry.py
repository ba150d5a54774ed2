"""Model construction by name."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from sparsenets.errors import SparsenetsError, choice_error
from sparsenets.models.cnn import SmallCNN
from sparsenets.models.mlp import MLP

MODELS: tuple[str, ...] = ("mlp", "cnn")
_OPTIONS: dict[str, tuple[str, ...]] = {
    "mlp": ("hidden", "activation"),
    "cnn": ("channels", "hidden"),
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **options: object
) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`) for inputs ``(B, *input_shape)``.

    Args:
        name: ``"mlp"`` (:class:`MLP`; options ``hidden``, ``activation``) or ``"cnn"``
            (:class:`SmallCNN`; options ``channels``, ``hidden``).
        input_shape: per-sample shape, channels first.
        num_classes: number of output logits.
        **options: passed to the model constructor.

    Raises:
        SparsenetsError: unknown model name or option.
    """
    if name not in _OPTIONS:
        raise choice_error("model", name, MODELS)
    valid = _OPTIONS[name]
    for key in options:
        if key not in valid:
            raise SparsenetsError(
                f"unknown option {key!r} for model {name!r} (valid: {', '.join(valid)})"
            )
    shape = tuple(int(s) for s in input_shape)
    if name == "mlp":
        return MLP(math.prod(shape), num_classes=num_classes, **options)  # type: ignore[arg-type]
    return SmallCNN(shape, num_classes=num_classes, **options)  # type: ignore[arg-type]
