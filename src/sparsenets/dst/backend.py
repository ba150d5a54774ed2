"""Which backend each sparsified layer gets: ``DynamicSparsity(backend=...)`` validated and resolved.

* ``masked``: every sparsified weight stays a dense Parameter multiplied by its mask.
* ``sparse``: each sparsified ``nn.Linear`` goes on CSR storage
  (:class:`~sparsenets.dst.layers.CSRLayer`); other sparsified parameters (convolutions, …) stay
  masked.
* ``auto``: per ``nn.Linear``, the faster of the two by timing a training step
  (:mod:`sparsenets.dst.auto`).
* ``{name: "masked"|"sparse"}``: chosen per layer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..distributed import World
from ..errors import SparsenetsError, choice_error
from ..sparse.csr import SUPPORTED_DTYPES
from .auto import Timer, time_layers

if TYPE_CHECKING:
    from .base import Method

log = logging.getLogger(__name__)

#: Values of ``DynamicSparsity(backend=...)`` (a per-layer mapping is also accepted).
BACKENDS = ("masked", "sparse", "auto")
#: What each layer ends up on.
LAYER_BACKENDS = ("masked", "sparse")


def check_backend(backend: object) -> str | dict[str, str]:
    """Validate ``backend``: one of :data:`BACKENDS` or ``{parameter name: "masked"|"sparse"}``."""
    if isinstance(backend, str):
        if backend.lower() not in BACKENDS:
            raise choice_error("backend", backend, BACKENDS)
        return backend.lower()
    if isinstance(backend, Mapping):
        for name, value in backend.items():
            if not isinstance(value, str) or value not in LAYER_BACKENDS:
                raise SparsenetsError(
                    f"backend of {name!r} must be one of {', '.join(LAYER_BACKENDS)}, got {value!r}"
                )
        return dict(backend)
    raise choice_error("backend", backend, BACKENDS)


def distributed_backend(spec: str | dict[str, str], method: Method, world: World) -> str | dict[str, str]:
    """``spec`` as it can run under data parallelism (``world.size > 1``).

    The sparse backend resizes its ``values`` Parameters at every topology update, which
    ``DistributedDataParallel`` (whose gradient buckets are laid out once) cannot follow. A method
    that never changes the topology runs on it; with any other, ``auto`` becomes ``masked`` and
    an explicit ``sparse`` is refused.
    """
    if not world.active or not changes_topology(method):
        return spec
    if spec == "auto":
        log.info("backend auto: masked on every layer under torch.distributed (method %r changes the "
                 "topology, and DDP cannot follow resized sparse parameters)", method.name)
        return "masked"
    if spec == "sparse" or (isinstance(spec, dict) and "sparse" in spec.values()):
        raise SparsenetsError(
            f"backend 'sparse' cannot run under torch.distributed with method {method.name!r}: its "
            f"topology updates resize the CSR parameters, which DistributedDataParallel cannot follow; "
            f"use backend='masked' (or a static method on the sparse backend)"
        )
    return spec


def changes_topology(method: Method) -> bool:
    """Whether ``method`` ever updates the topology (its ``is_update`` is not the static one)."""
    from .base import Method

    return type(method).is_update is not Method.is_update


def linear_module_path(model: nn.Module, name: str) -> str | None:
    """Module path of ``name`` when it is the ``weight`` of an ``nn.Linear`` (root: ``""``)."""
    path, _, attr = name.rpartition(".")
    if attr != "weight":
        return None
    module = model.get_submodule(path)
    return path if type(module) is nn.Linear else None


def _sparse_problem(model: nn.Module, name: str) -> str | None:
    """Why ``name`` cannot go on the sparse backend, or None when it can."""
    path = linear_module_path(model, name)
    if path is None:
        return f"{name!r} is not the weight of an nn.Linear"
    if path == "":
        return "the model itself is an nn.Linear (wrap it in a module, e.g. nn.Sequential)"
    dtype = model.get_submodule(path).weight.dtype
    if dtype not in SUPPORTED_DTYPES:
        return f"{name!r} has dtype {dtype} (sparse layers support float32 and float64)"
    return None


def choose_backends(
    spec: str | Mapping[str, str],
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    method: Method,
    *,
    batch_size: int = 128,
    timer: Timer | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[dict[str, str], dict[str, dict[str, float]]]:
    """The backend of each sparsified parameter, and the timings ``auto`` measured.

    Args:
        spec: ``"masked"``, ``"sparse"``, ``"auto"`` or ``{name: "masked"|"sparse"}`` (names left
            out are masked).
        model: the (still dense, masked) model.
        masks: ``{name: bool mask}`` of the sparsified parameters, in order.
        method: the DST method; ``method.sparse_backend`` says whether it runs on CSR layers.
        batch_size: rows of the dummy input ``auto`` times each layer on.
        timer: ``timer(module, x) -> seconds``, called with a throwaway copy of the dense layer
            and with its ``SparseLinear`` twin. Default:
            :func:`~sparsenets.dst.auto.time_forward_backward` with the
            :func:`~sparsenets.dst.auto.training_update` of ``optimizer``.
        optimizer: the training optimizer (its class and defaults make the timed update).

    Returns:
        ``({name: "masked"|"sparse"}, {name: {"masked": s, "sparse": s}})``.

    Raises:
        SparsenetsError: ``sparse`` (or a mapping) asks for the sparse backend on a layer or
            with a method that does not support it.
    """
    spec = check_backend(spec)
    names = list(masks)
    if spec == "masked":
        return dict.fromkeys(names, "masked"), {}
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise SparsenetsError(
                f"backend names {unknown[0]!r}, which is not sparsified (sparsified: {', '.join(names)})"
            )
        wanted = [n for n in names if spec.get(n, "masked") == "sparse"]
        for name in wanted:
            problem = _sparse_problem(model, name)
            if problem:
                raise SparsenetsError(f"backend 'sparse' is impossible for {name!r}: {problem}")
    elif spec == "sparse":
        wanted = [n for n in names if linear_module_path(model, n) is not None]
        for name in wanted:
            problem = _sparse_problem(model, name)
            if problem:
                raise SparsenetsError(f"backend 'sparse' is impossible: {problem}")
        if not wanted:
            log.warning("backend 'sparse': no sparsified nn.Linear, every layer stays masked")
    else:  # auto
        if not method.sparse_backend:
            log.info("backend auto: method %r runs on the masked backend only", method.name)
            return dict.fromkeys(names, "masked"), {}
        wanted, timings = time_layers(model, masks, [n for n in names if _sparse_problem(model, n) is None],
                                batch_size, timer, optimizer)
        backends = {n: ("sparse" if n in wanted else "masked") for n in names}
        log.info("backend auto: %s", ", ".join(f"{n}={b}" for n, b in backends.items()))
        return backends, timings
    if wanted and not method.sparse_backend:
        raise SparsenetsError(
            f"method {method.name!r} is not supported on the sparse backend "
            f"({method.sparse_unsupported_reason}); use backend='masked'"
        )
    return {n: ("sparse" if n in wanted else "masked") for n in names}, {}
