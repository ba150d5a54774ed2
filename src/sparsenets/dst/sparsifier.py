"""``DynamicSparsity``: the object users drive with ``loss.backward(); sparsifier.step()``."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..allocation import CustomAllocation, allocate_counts
from ..errors import SparsenetsError, check_density
from ..masks import MaskStore, mask_to_index
from ..optim import check_optimizer_covers, mask_gradients_, reset_state_
from ..rng import generator as make_generator
from ..select import random_mask
from ..sparse import SparseLinear
from ..sparse.csr import csr_to_dense
from ..targets import find_targets
from .backend import (
    DenseGradCapture,
    Timer,
    check_backend,
    choose_backends,
    convert_to_sparse_,
    set_sparse_topology_,
)
from .base import Method
from .registry import make_method

log = logging.getLogger(__name__)


class DynamicSparsity:
    """Sparse training with a fixed or evolving topology, owning the optimizer step.

    Usage::

        sparsifier = DynamicSparsity(model, optimizer, density=0.1, method="rigl", total_steps=n)
        for x, y in loader:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            sparsifier.step()   # mask grads, optimizer step, re-mask, topology update when due

    Args:
        model: the network; its sparsified weights are zeroed at inactive positions at once.
        optimizer: optimizer over the model's parameters (SGD with momentum, Adam, AdamW, …).
        density: global density in (0, 1] of the sparsified layers (final density for GMP/GraNet).
        total_steps: the number of ``step()`` calls planned (schedules are relative to it).
        method: a name (``static``, ``set``, ``rigl``, ``snfs``, ``mest``, ``ctre``, ``gmp``,
            ``granet``) or a :class:`~sparsenets.dst.base.Method` object.
        distribution: ``"erk"`` (default), ``"er"``, ``"uniform"``, or per-layer densities
            (mapping or callable), see :func:`sparsenets.allocation.allocate_counts`.
        seed: all random choices derive from (seed, step, layer).
        include, exclude, dense_first, dense_last: which parameters are sparsified, see
            :func:`sparsenets.targets.find_targets`.
        masks: optional initial masks ``{name: bool tensor}`` (e.g. from pruning at
            initialization) instead of random ones; the names must be the targets.
        backend: ``"masked"`` (default: dense weights multiplied by their masks), ``"sparse"``
            (each sparsified ``nn.Linear`` is replaced in the model by a CSR
            :class:`~sparsenets.sparse.SparseLinear` and the optimizer holds its ``values``;
            other layers stay masked), ``"auto"`` (per ``nn.Linear``, the faster of the two by
            timing forward+backward), or ``{name: "masked"|"sparse"}``. See ``docs/sparse.md``.
        auto_batch_size: rows of the dummy input ``backend="auto"`` times layers on (use the
            training batch size).
        auto_timer: ``timer(module, x) -> seconds`` replacing the default measurement of
            ``backend="auto"`` (for tests).
        **method_options: hyperparameters of a method given by name (e.g. ``update_every=100,
            drop_fraction=0.3, drop_schedule="cosine", end_fraction=0.75, explore=True``).

    Attributes:
        masks: :class:`~sparsenets.masks.MaskStore`, ``{name: bool tensor}`` (sparse-backend
            layers are kept compact, as sorted flat indices).
        params: ``{name: Parameter}`` the optimizer updates: the dense weight (masked backend)
            or the ``SparseLinear``'s ``values`` ``(nnz,)`` (sparse backend).
        backends: ``{name: "masked"|"sparse"}``; ``backend_timings`` holds what ``auto`` measured.
        sparse_modules: ``{name: SparseLinear}`` of the sparse-backend layers.
        history: one dict per topology update (step, per-layer nnz / dropped / grown, ITOP rate).
        update_seconds: wall time spent in topology updates.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        density: float,
        total_steps: int,
        method: str | Method = "rigl",
        distribution: str | CustomAllocation = "erk",
        seed: int = 0,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        dense_first: bool = False,
        dense_last: bool = False,
        masks: Mapping[str, torch.Tensor] | None = None,
        backend: str | Mapping[str, str] = "masked",
        auto_batch_size: int = 128,
        auto_timer: Timer | None = None,
        **method_options: Any,
    ):
        self.density = check_density(density)
        if not isinstance(total_steps, int) or total_steps < 1:
            raise SparsenetsError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.model, self.optimizer = model, optimizer
        self.total_steps, self.seed, self.distribution = total_steps, int(seed), distribution
        self.method = make_method(method, **method_options)
        self.method.check(total_steps)
        backend = check_backend(backend)
        all_params = dict(model.named_parameters())
        names = find_targets(
            model, include=include, exclude=exclude, dense_first=dense_first, dense_last=dense_last
        )
        self.params: dict[str, nn.Parameter] = {n: all_params[n] for n in names}
        check_optimizer_covers(optimizer, self.params)
        self.device = next(iter(self.params.values())).device
        self.masks = MaskStore({n: tuple(p.shape) for n, p in self.params.items()}, self.device)
        self.target_counts = allocate_counts(self.masks.shapes, self.density, distribution)
        self.step_count = 0
        self.history: list[dict[str, Any]] = []
        self.update_seconds = 0.0
        self.buffers: dict[str, torch.Tensor] = {}
        self.transient: dict[str, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self.sparse_modules: dict[str, SparseLinear] = {}
        self.initial_counts = self.method.initial_counts(self)
        self._init_masks(masks)
        self.backends, self.backend_timings = choose_backends(
            backend, model, self.masks, self.method, batch_size=auto_batch_size, timer=auto_timer,
            optimizer=optimizer,
        )
        self._convert_sparse_layers()
        self.method.attach(self)

    # -- construction ------------------------------------------------------------------------
    def _init_masks(self, masks: Mapping[str, torch.Tensor] | None) -> None:
        if masks is not None:
            unknown = set(masks) - set(self.params)
            missing = set(self.params) - set(masks)
            if unknown or missing:
                raise SparsenetsError(
                    f"initial masks must name exactly the sparsified parameters "
                    f"(missing: {sorted(missing)}, unknown: {sorted(unknown)})"
                )
            for name in self.params:
                self.masks.set(name, masks[name])
            self.initial_counts = {n: self.masks.nnz(n) for n in self.params}
        else:
            for index, (name, count) in enumerate(self.initial_counts.items()):
                gen = make_generator(self.seed, 0, index, 3)
                self.masks.set(name, random_mask(self.masks.shapes[name], count, gen, self.device))
        self.masks.reset_ever_active()
        self.masks.apply_(self.model)
        for name, param in self.params.items():
            reset_state_(self.optimizer, param, ~self.masks[name])

    def _convert_sparse_layers(self) -> None:
        """Put the layers chosen for the sparse backend on CSR storage (model and optimizer)."""
        for name, backend in self.backends.items():
            if backend != "sparse":
                continue
            layer = convert_to_sparse_(self.model, self.optimizer, name, self.masks[name])
            self.sparse_modules[name] = layer
            self.params[name] = layer.values
            self.masks.set_compact(name)
            if self.method.needs_dense_grad:
                self.add_forward_hook(layer, DenseGradCapture(self, name))

    @property
    def masked_params(self) -> dict[str, nn.Parameter]:
        """``{name: dense weight}`` of the masked-backend layers."""
        return {n: p for n, p in self.params.items() if n not in self.sparse_modules}

    def weight(self, name: str) -> torch.Tensor:
        """The dense weight of ``name`` (its parameter's shape), detached.

        Masked backend: the parameter itself. Sparse backend: a new tensor materialized from the
        CSR values (meant for topology updates only).
        """
        layer = self.sparse_modules.get(name)
        return layer.dense_weight() if layer is not None else self.params[name].detach()

    def grad(self, name: str) -> torch.Tensor | None:
        """The gradient of ``name`` as the optimizer sees it (zero at inactive positions), dense.

        None before the first backward. Sparse backend: materialized from ``values.grad``.
        """
        layer = self.sparse_modules.get(name)
        if layer is None:
            return self.params[name].grad
        grad = layer.values.grad
        if grad is None:
            return None
        return csr_to_dense(layer.crow_indices, layer.col_indices, grad, layer.shape)

    def initial_density(self) -> float:
        """Global density at step 0 (1.0 for dense-to-sparse methods)."""
        return sum(self.initial_counts.values()) / self.masks.numel()

    def generator(self, step: int, *index: int) -> torch.Generator:
        """The CPU generator for a random choice at ``step`` (derived from the seed)."""
        return make_generator(self.seed, step, *index)

    def add_forward_hook(self, module: nn.Module, hook: Callable) -> None:
        """Register a forward hook owned by this sparsifier (removed by :meth:`close`)."""
        self._hooks.append(module.register_forward_hook(hook))

    def close(self) -> None:
        """Remove the forward hooks this sparsifier registered."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # -- the training step -------------------------------------------------------------------
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Mask gradients, run ``optimizer.step()``, re-apply masks, update topology when due.

        Args:
            closure: optional, as for ``optimizer.step``: it zeroes the gradients, computes the
                loss and calls ``backward()``. It is evaluated once, here, before the gradients
                are read and masked (optimizers that re-evaluate it, like LBFGS, are not
                supported).

        Returns whatever ``optimizer.step`` returned (the closure's loss when one is given).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.step_count += 1
        step = self.step_count
        first = next(iter(self.params.values()))
        if first.device != self.device:  # the model was moved after construction
            self.device = first.device
            self.masks.to(self.device)
            self.buffers = {k: v.to(self.device) for k, v in self.buffers.items()}
        due = self.method.is_update(self, step)
        grads = self._dense_grads(step) if due and self.method.needs_dense_grad else None
        for key in [k for k in self.transient if k.startswith("dense_grad/")]:
            del self.transient[key]
        self.method.observe(self, step)
        masked = self.masked_params
        mask_gradients_(masked, self.masks)
        result = self.optimizer.step()
        self.masks.apply_to_(masked)
        if due:
            started = time.perf_counter()
            self._update_topology(step, grads)
            self.update_seconds += time.perf_counter() - started
        return loss if closure is not None else result

    def _dense_grads(self, step: int) -> dict[str, torch.Tensor]:
        """The dense gradient of every sparsified weight (update steps of RigL, GraNet, …).

        Masked backend: a copy of ``param.grad``. Sparse backend: ``grad_outᵀ · x`` captured by
        :class:`~sparsenets.dst.backend.DenseGradCapture` during the backward pass.
        """
        grads = {}
        for name, param in self.params.items():
            if name in self.sparse_modules:
                grad = self.transient.get(f"dense_grad/{name}")
            else:
                grad = None if param.grad is None else param.grad.detach().clone()
            if grad is None:
                raise SparsenetsError(
                    f"{self.method.name} needs the gradient of {name!r} at step {step}; "
                    f"call loss.backward() before sparsifier.step()"
                )
            grads[name] = grad
        return grads

    @torch.no_grad()
    def _update_topology(self, step: int, grads: dict[str, torch.Tensor] | None) -> None:
        with self.masks.expanded():  # compact masks are materialized once, for this update only
            self._update_topology_expanded(step, grads)

    def _update_topology_expanded(self, step: int, grads: dict[str, torch.Tensor] | None) -> None:
        new_masks = self.method.update(self, step, grads)
        record: dict[str, Any] = {"step": step, "layers": {}}
        regrow_init = getattr(self.method, "regrow_init", "zero")
        for name, new_mask in new_masks.items():
            old_mask = self.masks[name]
            dropped, grown = old_mask & ~new_mask, new_mask & ~old_mask
            self.apply_topology(name, new_mask, dropped | grown, grown, regrow_init, step)
            record["layers"][name] = {
                "nnz": int(new_mask.sum()),
                "dropped": int(dropped.sum()),
                "grown": int(grown.sum()),
                "itop_rate": self.masks.itop_rate(name),
            }
        record["nnz"] = self.masks.nnz()
        record["grown"] = sum(layer["grown"] for layer in record["layers"].values())
        record["churn"] = record["grown"] / max(record["nnz"], 1)
        record["itop_rate"] = self.masks.itop_rate()
        self.history.append(record)
        log.debug("topology update at step %d: nnz=%d grown=%d", step, record["nnz"], record["grown"])

    @torch.no_grad()
    def apply_topology(
        self,
        name: str,
        new_mask: torch.Tensor,
        reset: torch.Tensor,
        grown: torch.Tensor,
        regrow_init: str,
        step: int,
    ) -> None:
        """Install ``new_mask`` for ``name``: zero dropped weights, initialise grown ones, and
        zero the optimizer state at ``reset`` (dropped ∪ grown) so grown weights start fresh.

        Sparse backend: the CSR structure is rebuilt in place; kept weights keep their values
        and optimizer state, grown ones start as on the masked backend with zero state.
        """
        param = self.params[name]
        random_init = regrow_init == "random" and bool(grown.any())
        layer = self.sparse_modules.get(name)
        if layer is not None:
            new_index = mask_to_index(new_mask)
            init = None
            if random_init:
                values = self._regrow_values(name, step).to(param.device, param.dtype)
                init = (grown.reshape(-1)[new_index], values.reshape(-1)[new_index])
            set_sparse_topology_(layer, self.optimizer, new_mask, new_index, init)
            self.masks.set(name, new_mask)
            return
        self.masks.set(name, new_mask)
        reset_state_(self.optimizer, param, reset)
        if random_init:
            values = self._regrow_values(name, step)
            param.copy_(torch.where(grown, values.to(param.device, param.dtype), param))
        else:
            param.masked_fill_(grown, 0)
        param.mul_(self.masks.multiplier(name, param.dtype))

    def _regrow_values(self, name: str, step: int) -> torch.Tensor:
        """Dense U(-1/√fan_in, 1/√fan_in) values (CPU) for ``regrow_init="random"``."""
        shape = self.masks.shapes[name]
        fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        gen = self.generator(step, list(self.params).index(name), 4)
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "method": self.method.name,
            "seed": self.seed,
            "step": self.step_count,
            "masks": self.masks.state_dict(),
            "initial_counts": dict(self.initial_counts),
            "buffers": {k: v.clone() for k, v in self.buffers.items()},
            "history": list(self.history),
            "update_seconds": self.update_seconds,
            "backends": dict(self.backends),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`; masks are re-applied to the model."""
        if state["method"] != self.method.name:
            raise SparsenetsError(
                f"checkpoint was made with method {state['method']!r}, "
                f"this sparsifier uses {self.method.name!r}"
            )
        if int(state.get("seed", self.seed)) != self.seed:
            raise SparsenetsError(
                f"checkpoint was made with seed {state['seed']}, this sparsifier uses seed "
                f"{self.seed}; resuming with another seed would not replay the run"
            )
        saved = dict(state.get("backends") or dict.fromkeys(self.backends, "masked"))
        if saved != self.backends:
            raise SparsenetsError(
                f"checkpoint layers were on backends {saved}, this sparsifier uses "
                f"{self.backends}; build it with backend=<that mapping>"
            )
        self.masks.load_state_dict(state["masks"])
        for name, layer in self.sparse_modules.items():
            if not torch.equal(layer.flat_index(), self.masks.index(name)):
                raise SparsenetsError(
                    f"sparse layer {name!r} holds another topology than the checkpoint's masks; "
                    f"load the model's state_dict (it holds the CSR structure) first"
                )
        self.step_count = int(state["step"])
        self.initial_counts = {k: int(v) for k, v in state["initial_counts"].items()}
        self.buffers = {k: v.to(self.device) for k, v in state["buffers"].items()}
        self.history = list(state["history"])
        self.update_seconds = float(state["update_seconds"])
        self.masks.apply_(self.model)

    def __repr__(self) -> str:
        sparse = f", sparse_layers={len(self.sparse_modules)}" if self.sparse_modules else ""
        return (
            f"DynamicSparsity(method={self.method!r}, density={self.density}, "
            f"layers={len(self.masks)}{sparse}, step={self.step_count}/{self.total_steps})"
        )
