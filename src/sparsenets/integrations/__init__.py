"""Sparse training inside frameworks that own the optimizer step.

Each submodule imports its framework and is imported only by the user:

* :mod:`sparsenets.integrations.hf`: ``SparsityCallback`` for the Hugging Face ``Trainer``
  (``pip install 'sparsenets[hf]'``);
* :mod:`sparsenets.integrations.lightning`: ``SparsityCallback`` for Lightning
  (``pip install 'sparsenets[lightning]'``).

Any other framework that calls ``optimizer.step()`` itself (``accelerate``, ``GradScaler``) takes
``sparsifier.wrap()``, see ``docs/integrations.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..dst import DynamicSparsity
from ..errors import SparsenetsError


def callback_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a callback's ``DynamicSparsity`` options when the callback is made (before training).

    Raises:
        SparsenetsError: no ``density``; a backend other than ``masked``; ``total_steps`` given.
    """
    if "density" not in options:
        raise SparsenetsError("SparsityCallback needs density= (the share of weights kept, in (0, 1])")
    if options.get("backend", "masked") != "masked":
        raise SparsenetsError(
            f"the framework callbacks run on backend 'masked' (got {options['backend']!r}): the framework "
            f"holds the model's dense parameters; for CSR layers build the sparsifier yourself and pass "
            f"sparsifier.wrap() as the optimizer"
        )
    if "total_steps" in options:
        raise SparsenetsError("total_steps is taken from the trainer (its planned optimizer steps); do not pass it")
    return dict(options)


def build_sparsifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    options: Mapping[str, Any],
    resume_state: Mapping[str, Any] | None = None,
) -> DynamicSparsity:
    """The sparsifier a callback builds once the framework has made the optimizer.

    With ``resume_state`` (a saved ``DynamicSparsity.state_dict()``), the masks come from it, so
    building does not touch the restored weights, and the state is loaded.
    """
    options = callback_options(options)
    masks = None
    if resume_state is not None:
        masks = {key.partition("/")[2]: value.bool() for key, value in resume_state["masks"].items()
                 if key.startswith("mask/")}
    sparsifier = DynamicSparsity(model, optimizer, total_steps=int(total_steps), masks=masks, **options)
    if resume_state is not None:
        sparsifier.load_state_dict(resume_state)
    return sparsifier
