"""``backend="auto"``: time each layer's training step dense (masked) and as CSR, keep the faster.

For each sparsifiable ``nn.Linear``, a throwaway copy of the dense layer and its
:class:`~sparsenets.sparse.SparseLinear` twin are timed on a dummy batch of the training batch
size: forward, backward (to the input and the weights), the update by a throwaway optimizer of
the training optimizer's class and defaults and, for the dense candidate, masking the gradient
and the weight, as the masked backend does. Medians of a few repeats, on the layer's device.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..errors import SparsenetsError
from ..rng import generator as make_generator
from ..sparse import SparseLinear
from ..timing import median_seconds

log = logging.getLogger(__name__)

#: ``timer(module, x) -> seconds`` of one forward+backward of ``module`` on ``x``.
Timer = Callable[[nn.Module, torch.Tensor], float]


@torch.no_grad()
def timing_input(linear: nn.Linear, batch_size: int) -> torch.Tensor:
    """A fixed ``(batch_size, in_features)`` batch (the same for every run) to time ``linear`` on."""
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


def time_layers(
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

    """Time each of ``names`` masked and as CSR; the layers where CSR is faster, and the timings
    ``{name: {"masked": s, "sparse": s}}``."""
    chosen, timings = [], {}
    for name in names:
        linear = model.get_submodule(name.rpartition(".")[0])
        x = timing_input(linear, batch_size)
        masked = measure(copy.deepcopy(linear), x, masks[name])
        sparse = measure(SparseLinear.from_dense(linear, masks[name]), x, None)
        timings[name] = {"masked": masked, "sparse": sparse}
        if sparse < masked:
            chosen.append(name)
        log.debug("auto %s: masked %.3g s, sparse %.3g s", name, masked, sparse)
    return chosen, timings
