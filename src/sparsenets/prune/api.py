"""``prune_at_init``: a keep mask for a dense, freshly initialized model, before any training.

The methods (:data:`METHODS`), their scores (higher = keep) and options with defaults:

* ``snip`` (:class:`~.saliency.Snip`): |∂L/∂w ⊙ w| from one pass over the first
  10 × num_classes samples; ``samples_per_class=10``, ``num_classes`` (output width), ``batch_size``.
* ``grasp`` (:class:`~.saliency.GraSP`): the highest −w ⊙ (H g) are removed; class-balanced batch,
  logits / 200; ``samples_per_class=10``, ``num_classes``, ``temperature=200``, ``batch_size``.
* ``synflow`` (:class:`~.synflow.SynFlow`): |w ⊙ ∂R/∂w| on |θ| with an all-ones input, 100
  rounds of d^(k/n), data-free; ``rounds=100``, ``dtype=float64``, ``input_shape``, ``zero_biases=False``.
* ``magnitude`` (:class:`~.baselines.Magnitude`): |w| at initialization.
* ``random`` (:class:`~.baselines.Random`): a random mask with the allocation's counts.

SNIP and GraSP score the model's actual initialization (not a re-initialized copy).

All use ``allocation="global"`` by default (one threshold across layers, as SNIP's, GraSP's and
SynFlow's references do); ``"lamp"``, ``"uniform"``, ``"er"``, ``"erk"`` or custom per-layer
densities are accepted by every method (see :mod:`sparsenets.prune.base`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from torch import nn

from ..errors import SparsenetsError, check_density, choice_error
from ..masks import MaskStore
from ..targets import find_targets
from .base import Allocation, InitPruner, PruneTask, check_allocation, target_params
from .baselines import Magnitude, Random
from .saliency import GraSP, Snip
from .synflow import SynFlow

log = logging.getLogger(__name__)

#: Pruning-at-initialization methods by name.
METHODS: dict[str, type[InitPruner]] = {
    cls.name: cls for cls in (Snip, GraSP, SynFlow, Magnitude, Random)
}


def make_pruner(method: str | InitPruner, **options: Any) -> InitPruner:
    """The method object for a name and its options (an :class:`InitPruner` is returned as is).

    Raises:
        SparsenetsError: an unknown method, or an option the method does not have.
    """
    if isinstance(method, InitPruner):
        if options:
            raise SparsenetsError(f"options {sorted(options)} given with a ready {method.name} object; set them on it")
        return method
    cls = METHODS.get(str(method).lower()) if isinstance(method, str) else None
    if cls is None:
        raise choice_error("pruning method", method, METHODS)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise SparsenetsError(
            f"unknown option(s) {unknown} for pruning method {cls.name} (valid: {', '.join(valid) or 'none'})"
        )
    return cls(**options)


def prune_at_init(
    model: nn.Module,
    method: str | InitPruner,
    density: float,
    data: object = None,
    *,
    allocation: Allocation = "global",
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    dense_first: bool = False,
    dense_last: bool = False,
    seed: int = 0,
    **options: Any,
) -> MaskStore:
    """Keep masks of the target weights of ``model`` by a pruning-at-initialization method.

    The model is not modified (its weights, ``.grad`` fields and train/eval modes are as before);
    pass the result to ``DynamicSparsity(model, optimizer, masks=masks, method="static", ...)``
    (or any DST method), which zeroes the pruned weights and takes the density from the masks.

    Args:
        model: a dense ``nn.Module`` returning logits (B, num_classes) for SNIP and GraSP.
        method: ``"snip"``, ``"grasp"``, ``"synflow"``, ``"magnitude"``, ``"random"`` (see the
            module docstring) or an :class:`~sparsenets.prune.base.InitPruner` object.
        density: share of the target weights kept, in (0, 1]; exactly ``round(density · total)``
            are kept in total (``"global"``, ``"lamp"``, uniform/ER/ERK), each layer's exact count
            for layer-wise allocations.
        data: SNIP and GraSP: one ``(x, y)`` pair of tensors or an iterable of ``(x, y)``
            batches, read in order; SynFlow: optional, only for the input shape; ignored otherwise.
        allocation: ``"global"`` (default), ``"lamp"``, ``"uniform"``, ``"er"``, ``"erk"``, or
            per-layer densities as a mapping or callable ``(name, shape) -> density``.
        include, exclude, dense_first, dense_last: which weights are targets, as in
            :func:`sparsenets.find_targets` and ``DynamicSparsity``.
        seed: seeds every tie-breaking (and random-mask) generator; same inputs and seed → same masks.
        **options: the method's options (e.g. ``temperature=200`` for GraSP, ``rounds=100`` for SynFlow).

    Returns:
        a :class:`~sparsenets.MaskStore` keyed by the target parameter names (in the model's
        order), on the weights' device, its ever-active record equal to the masks.

    Raises:
        SparsenetsError: an unknown method, option or allocation, a density outside (0, 1], or
            missing or malformed data for SNIP / GraSP.
    """
    density = check_density(density)
    pruner = make_pruner(method, **options)
    allocation = check_allocation(allocation)
    names = find_targets(model, include=include, exclude=exclude, dense_first=dense_first, dense_last=dense_last)
    params = target_params(model, names)
    masks = pruner.prune(PruneTask(model, tuple(names), density, data, allocation, int(seed)))
    store = MaskStore({n: tuple(p.shape) for n, p in params.items()}, next(iter(params.values())).device)
    for name in names:
        store.set(name, masks[name])
    store.reset_ever_active()
    log.info("pruned at init with %s (%s allocation): density %.4f over %d layers",
             pruner.name, allocation if isinstance(allocation, str) else "custom", store.density(), len(store))
    return store
