"""Execution backends of :class:`~sparsenets.dst.sparsifier.DynamicSparsity`.

* ``masked``: every sparsified weight stays a dense Parameter multiplied by its mask.
* ``sparse``: the weight of each sparsified ``nn.Linear`` becomes a
  :class:`~sparsenets.sparse.SparseLinear` (CSR); the optimizer holds its ``values``, so every
  per-element optimizer state is ``(nnz,)``. Other sparsified parameters (convolutions, …) stay
  masked.
* ``auto``: per ``nn.Linear``, time a training step of the dense (masked) and of the CSR layer
  on a batch of the given size (forward, backward, the optimizer's update and, for the dense
  layer, the masking) and take the faster.

Only the storage differs: both backends feed the same masks, scores and selection functions
(:mod:`sparsenets.dst.base`), so for the same seed and the same weights and gradients they
choose the same topology.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import SparsenetsError, choice_error
from ..optim import mapped_state, replace_param_
from ..rng import generator as make_generator
from ..sparse import SparseLinear, remap, sparsify_linear_
from ..sparse.csr import SUPPORTED_DTYPES
from ..timing import median_seconds

if TYPE_CHECKING:
    from .base import Method
    from .sparsifier import DynamicSparsity

log = logging.getLogger(__name__)

#: Values of ``DynamicSparsity(backend=...)`` (a per-layer mapping is also accepted).
BACKENDS = ("masked", "sparse", "auto")
#: What each layer ends up on.
LAYER_BACKENDS = ("masked", "sparse")

#: ``timer(module, x) -> seconds`` of one forward+backward of ``module`` on ``x``.
Timer = Callable[[nn.Module, torch.Tensor], float]


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


@torch.no_grad()
def _timing_input(linear: nn.Linear, batch_size: int) -> torch.Tensor:
    gen = make_generator(0, batch_size, linear.in_features)
    x = torch.randn(batch_size, linear.in_features, generator=gen, dtype=linear.weight.dtype)
    return x.to(linear.weight.device)


def time_forward_backward(
    module: nn.Module, x: torch.Tensor, repeats: int = 5, update: Callable[[], None] | None = None
) -> float:
    """Median seconds of ``module(x)``, its backward (to the input and the weights) and
    ``update()`` (the parameter update of a training step, when given).

    One warm-up call, then ``repeats`` timed calls (CUDA is synchronized after each). ``x`` is
    given ``requires_grad`` as for a hidden layer; gradients are set to ``None`` before each
    call, as ``optimizer.zero_grad()`` does.
    """
    x = x.detach().requires_grad_(True)

    def once() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        module(x).sum().backward()
        if update is not None:
            update()
        if x.is_cuda:  # kernels run asynchronously: wait for them inside the timed region
            torch.cuda.synchronize(x.device)

    seconds = median_seconds(once, repeats, warmup=1)
    module.zero_grad(set_to_none=True)
    return seconds


def training_update(
    module: nn.Module, optimizer: torch.optim.Optimizer | None, mask: torch.Tensor | None = None
) -> Callable[[], None] | None:
    """The parameter update of one training step of ``module`` (a throwaway copy), for timing.

    A new optimizer of ``optimizer``'s class and defaults over ``module``'s parameters, so the
    update costs what it costs in training: per element of the dense weight, or per nonzero of
    a ``SparseLinear``. With ``mask`` (the dense candidate), the gradient is masked before and
    the weight after the update, as the masked backend does. ``None`` when there is no optimizer
    or it cannot be rebuilt from its defaults.
    """
    if optimizer is None:
        return None
    params = [p for p in module.parameters() if p.requires_grad]
    try:
        twin = type(optimizer)(params, **optimizer.defaults)
    except (TypeError, ValueError) as exc:
        log.debug("auto: %s cannot be rebuilt from its defaults (%s); timing without it",
                  type(optimizer).__name__, exc)
        return None
    if mask is None:
        return twin.step
    weight = module.weight
    keep = mask.to(device=weight.device, dtype=weight.dtype)

    @torch.no_grad()
    def masked_step() -> None:
        weight.grad.mul_(keep)
        twin.step()
        weight.mul_(keep)

    return masked_step


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
            and with its ``SparseLinear`` twin. Default: :func:`time_forward_backward` with the
            :func:`training_update` of ``optimizer``.
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
        wanted, timings = _auto(model, masks, [n for n in names if _sparse_problem(model, n) is None],
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


def _auto(
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    names: list[str],
    batch_size: int,
    timer: Timer | None,
    optimizer: torch.optim.Optimizer | None,
) -> tuple[list[str], dict[str, dict[str, float]]]:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise SparsenetsError(f"auto_batch_size must be a positive integer, got {batch_size!r}")

    def measure(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> float:
        if timer is not None:
            return float(timer(module, x))
        return float(time_forward_backward(module, x, update=training_update(module, optimizer, mask)))

    chosen, timings = [], {}
    for name in names:
        linear = model.get_submodule(name.rpartition(".")[0])
        x = _timing_input(linear, batch_size)
        masked = measure(copy.deepcopy(linear), x, masks[name])
        sparse = measure(SparseLinear.from_dense(linear, masks[name]), x, None)
        timings[name] = {"masked": masked, "sparse": sparse}
        if sparse < masked:
            chosen.append(name)
        log.debug("auto %s: masked %.3g s, sparse %.3g s", name, masked, sparse)
    return chosen, timings


def convert_to_sparse_(
    model: nn.Module, optimizer: torch.optim.Optimizer, name: str, mask: torch.Tensor
) -> SparseLinear:
    """Put the ``nn.Linear`` owning weight ``name`` on the sparse backend, in place.

    The model gets a ``SparseLinear`` holding ``weight[mask]`` (sharing the bias Parameter);
    the optimizer holds its ``values`` instead of the dense weight, with any per-element state
    gathered at the mask (``(out, in) -> (nnz,)``).
    """
    path = name.rpartition(".")[0]
    old = model.get_submodule(path).weight
    layer = sparsify_linear_(model, path, mask)
    device_mask = mask.to(old.device)
    replace_param_(optimizer, old, layer.values, lambda tensor: tensor[device_mask])
    return layer


@torch.no_grad()
def set_sparse_topology_(
    layer: SparseLinear,
    optimizer: torch.optim.Optimizer,
    new_mask: torch.Tensor,
    new_index: torch.Tensor,
    grown_values: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Install a new topology in ``layer`` and move its optimizer state along (in place).

    Args:
        layer: the sparse layer (its CSR order is the sorted flat order).
        optimizer: holds ``layer.values``.
        new_mask: bool ``(out, in)``, the new topology.
        new_index: ``(nnz_new,)`` sorted flat positions of ``new_mask``.
        grown_values: optional ``(is_grown (nnz_new,) bool, values (nnz_new,))`` initial values
            of grown weights (default: 0).

    Kept weights keep their value and their per-element optimizer state (SGD momentum, Adam
    moments, …); grown weights start at 0 (or ``grown_values``) with zero state; dropped weights
    and their state are discarded, as the masked backend zeroes them.
    """
    values = layer.values
    old_index = layer.flat_index()
    new_values = remap(values.detach(), old_index, new_index)
    if grown_values is not None:
        is_grown, init = grown_values
        new_values = torch.where(is_grown, init.to(new_values.dtype), new_values)
    state = mapped_state(optimizer, values, lambda tensor: remap(tensor, old_index, new_index))
    layer.set_topology(new_mask, new_values)
    if state:
        optimizer.state[values] = state


class DenseGradCapture:
    """Forward hook on a ``SparseLinear``: the dense weight gradient at update steps only.

    On a forward pass that precedes an update step of a method needing the dense gradient, a
    hook on the output adds ``grad_outᵀ · x`` (``(out, in)``, equal to ``∂L/∂W`` of the dense
    layer) to ``ctx.transient["dense_grad/<name>"]`` during backward. Contributions of several
    backward passes before one ``step()`` add up like ``param.grad`` does; the sum restarts when
    the layer's ``values.grad`` is None or all zero (the gradients were zeroed since).
    """

    def __init__(self, ctx: DynamicSparsity, name: str):
        self.ctx, self.name = ctx, name

    @property
    def key(self) -> str:
        return f"dense_grad/{self.name}"

    def __call__(self, module: SparseLinear, inputs: tuple, output: torch.Tensor) -> None:
        ctx = self.ctx
        if not output.requires_grad or not ctx.method.is_update(ctx, ctx.step_count + 1):
            return
        x = inputs[0].detach().reshape(-1, module.in_features)
        values = module.values

        def accumulate(grad_out: torch.Tensor) -> None:
            contribution = grad_out.detach().reshape(-1, module.out_features).t() @ x
            current = ctx.transient.get(self.key)
            fresh = values.grad is None or not bool(values.grad.any())
            ctx.transient[self.key] = contribution if current is None or fresh else current + contribution

        output.register_hook(accumulate)
