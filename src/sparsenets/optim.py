"""Keeping optimizer state consistent with masks (SGD momentum, Adam/AdamW moments, …).

Per-element state is every tensor in ``optimizer.state[param]`` with the parameter's shape
(``momentum_buffer``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``, …); scalar state such as
Adam's ``step`` is shared by the whole tensor and left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import SparsenetsError


def check_optimizer_covers(optimizer: torch.optim.Optimizer, params: Mapping[str, nn.Parameter]) -> None:
    """Raise if a sparsified parameter is not optimized by ``optimizer``."""
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [name for name, p in params.items() if id(p) not in owned]
    if missing:
        raise SparsenetsError(f"the optimizer does not hold the sparsified parameters {missing}")


def per_element_state(optimizer: torch.optim.Optimizer, param: nn.Parameter) -> Iterable[torch.Tensor]:
    """The optimizer's state tensors for ``param`` that have one entry per weight."""
    state = optimizer.state.get(param, {})
    return [v for v in state.values() if isinstance(v, torch.Tensor) and v.shape == param.shape]


@torch.no_grad()
def reset_state_(optimizer: torch.optim.Optimizer, param: nn.Parameter, positions: torch.Tensor) -> None:
    """Zero the per-element optimizer state of ``param`` at ``positions`` (bool, param's shape).

    Used for dropped weights (their moments must not revive them) and for regrown weights (they
    start with fresh state).
    """
    for tensor in per_element_state(optimizer, param):
        tensor.masked_fill_(positions, 0)


def mapped_state(
    optimizer: torch.optim.Optimizer, param: nn.Parameter, fn: Callable[[torch.Tensor], torch.Tensor]
) -> dict[str, Any]:
    """A copy of ``optimizer.state[param]`` with ``fn`` applied to each per-element tensor.

    Scalar state (Adam's ``step``) is kept as is. Read it while ``param`` still has the shape
    the state refers to (e.g. before a sparse layer changes its number of nonzeros).
    """
    state = optimizer.state.get(param, {})
    return {
        key: fn(value) if isinstance(value, torch.Tensor) and value.shape == param.shape else value
        for key, value in state.items()
    }


def replace_param_(
    optimizer: torch.optim.Optimizer,
    old: nn.Parameter,
    new: nn.Parameter,
    fn: Callable[[torch.Tensor], torch.Tensor],
) -> None:
    """Make ``optimizer`` hold ``new`` where it held ``old`` (same group, same position).

    The state of ``old`` is carried over with ``fn`` applied to its per-element tensors (e.g.
    gathering a dense momentum at the nonzeros of a sparse layer); ``old`` keeps no state.
    """
    for group in optimizer.param_groups:
        params = group["params"]
        for index, param in enumerate(params):
            if param is old:
                params[index] = new
    state = mapped_state(optimizer, old, fn)
    optimizer.state.pop(old, None)
    if state:
        optimizer.state[new] = state
