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
from ..distributed import broadcast_object, current_world, gather_rows
from ..errors import SparsenetsError, check_density
from ..index_sets import ScoreBlocks
from ..masks import MaskStore
from ..optim import check_optimizer_covers, reset_state_
from ..rng import Stream
from ..rng import generator as make_generator
from ..select import random_mask
from ..sparse import SparseLinear
from ..targets import find_targets
from .auto import Timer
from .backend import check_backend, choose_backends, distributed_backend
from .base import Method, MethodState, as_topology_change
from .layers import CSRLayer, LayerBackend, MaskedLayer
from .registry import make_method
from .wrapper import SparseOptimizer

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
            May be left out when ``masks`` is given (the masks then fix the density and each
            layer's count) or when ``distribution`` gives per-layer densities (which then fix
            it; given as well, it must agree with them).
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
        layers: ``{name: LayerBackend}``, how each sparsified weight is held
            (:mod:`sparsenets.dst.layers`).
        params: ``{name: Parameter}`` the optimizer updates: the dense weight (masked backend)
            or the ``SparseLinear``'s ``values`` ``(nnz,)`` (sparse backend).
        backends: ``{name: "masked"|"sparse"}``; ``backend_timings`` holds what ``auto`` measured.
        sparse_modules: ``{name: SparseLinear}`` of the sparse-backend layers.
        state: the method's typed per-run tensors (:class:`~sparsenets.dst.base.MethodState`).
        history: one dict per topology update (step, per-layer nnz / dropped / grown, ITOP rate).
        update_seconds: wall time spent in topology updates.

    The sparsifier is the :class:`~sparsenets.dst.base.SparsityContext` its method runs against.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        density: float | None = None,
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
        custom = not isinstance(distribution, str)
        if density is None and masks is None and not custom:
            raise SparsenetsError(
                "density is required unless masks= gives the initial topology or distribution= "
                "gives per-layer densities"
            )
        self.density = None if density is None else check_density(density)
        if not isinstance(total_steps, int) or total_steps < 1:
            raise SparsenetsError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.model, self.optimizer = model, optimizer
        self.total_steps, self.seed, self.allocation = total_steps, int(seed), distribution
        self.method = make_method(method, **method_options)
        self.method.check(total_steps)
        backend = check_backend(backend)
        all_params = dict(model.named_parameters())
        names = find_targets(
            model, include=include, exclude=exclude, dense_first=dense_first, dense_last=dense_last
        )
        self._index = {name: index for index, name in enumerate(names)}
        check_optimizer_covers(optimizer, {n: all_params[n] for n in names})
        self.device = all_params[names[0]].device
        self.masks = MaskStore({n: tuple(all_params[n].shape) for n in names}, self.device)
        if masks is not None and density is None:  # the given masks are the allocation
            self._check_mask_names(masks)
            for name in names:
                self.masks.set(name, masks[name])  # validated: bool, the parameter's shape
            self.target_counts = {n: self.masks.nnz(n) for n in names}
            self.density = sum(self.target_counts.values()) / self.masks.numel()
            if self.density == 0:
                raise SparsenetsError("the given masks keep no weight at all")
        else:
            if self.density is None:  # custom per-layer densities fix the global one
                counts = allocate_counts(self.masks.shapes, 1.0, distribution)
                self.density = sum(counts.values()) / self.masks.numel()
            self.target_counts = allocate_counts(self.masks.shapes, self.density, distribution)
            self._check_counts(distribution)
        self.step_count = 0
        self.history: list[dict[str, Any]] = []
        self.update_seconds = 0.0
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: bool | None = None  # set between the two halves of a step: is it an update?
        self.initial_counts = self.method.initial_counts(self)
        self._init_masks(masks, all_params)
        backend = distributed_backend(backend, self.method, current_world())
        self.backends, self.backend_timings = choose_backends(
            backend, model, self.masks, self.method, batch_size=auto_batch_size, timer=auto_timer,
            optimizer=optimizer,
        )
        # ``auto`` times on each rank; rank 0's choice is the run's (DDP needs one layout)
        self.backends, self.backend_timings = broadcast_object((self.backends, self.backend_timings))
        self.layers: dict[str, LayerBackend] = {
            name: self._make_layer(name, all_params[name]) for name in names
        }
        attach = getattr(optimizer, "attach_masks", None)  # a memory-lean optimizer (LeanAdamW)
        if attach is not None:
            attach(self.masks, {n: layer.param for n, layer in self.layers.items() if isinstance(layer, MaskedLayer)})
        self.state: MethodState = self.method.make_state(self)
        self.method.attach(self)

    # -- construction ------------------------------------------------------------------------
    def _init_masks(self, masks: Mapping[str, torch.Tensor] | None, params: Mapping[str, nn.Parameter]) -> None:
        names = list(self._index)
        if masks is not None:
            self._check_mask_names(masks)
            for name in names:
                self.masks.set(name, masks[name])
            self.initial_counts = {n: self.masks.nnz(n) for n in names}
        else:
            for name, count in self.initial_counts.items():
                gen = self.generator(0, name, Stream.INIT_MASK)
                self.masks.set(name, random_mask(self.masks.shapes[name], count, gen, self.device))
        self.masks.reset_ever_active()
        self.masks.apply_to_({n: params[n] for n in names})
        for name in names:
            reset_state_(self.optimizer, params[name], ~self.masks[name])

    def _check_counts(self, distribution: str | CustomAllocation) -> None:
        """Refuse allocations that keep no weight in a layer, and custom densities that
        contradict ``density``."""
        empty = [name for name, count in self.target_counts.items() if count == 0]
        if empty:
            smallest = min(math.prod(self.masks.shapes[n]) for n in empty)
            raise SparsenetsError(
                f"density {self.density:g} keeps no weight in layer {empty[0]!r}"
                f"{f' (and {len(empty) - 1} more)' if len(empty) > 1 else ''}; a layer needs at "
                f"least one (density >= 1/{smallest} there)"
            )
        if not isinstance(distribution, str):
            implied = sum(self.target_counts.values()) / self.masks.numel()
            if abs(implied - self.density) > max(1e-3, 1.0 / self.masks.numel()):
                raise SparsenetsError(
                    f"density={self.density:g} contradicts the custom per-layer densities, which "
                    f"keep {implied:.4g} of the weights; leave density out or make them agree"
                )

    def _check_mask_names(self, masks: Mapping[str, torch.Tensor]) -> None:
        unknown = set(masks) - set(self._index)
        missing = set(self._index) - set(masks)
        if unknown or missing:
            raise SparsenetsError(
                f"initial masks must name exactly the sparsified parameters "
                f"(missing: {sorted(missing)}, unknown: {sorted(unknown)})"
            )

    def _make_layer(self, name: str, param: nn.Parameter) -> LayerBackend:
        if self.backends[name] != "sparse":
            return MaskedLayer(name, param, self.masks, self.optimizer)
        due = self.next_step_is_update if self.method.needs_dense_grad else None
        layer = CSRLayer(self.model, name, self.masks, self.optimizer, capture_due=due)
        if layer.hook is not None:
            self._hooks.append(layer.hook)
        return layer

    @property
    def distribution(self) -> str | CustomAllocation:
        """The ``distribution`` argument (the layer-wise allocation; also ``allocation``)."""
        return self.allocation

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """``{name: Parameter}`` the optimizer updates for each sparsified weight."""
        return {name: layer.param for name, layer in self.layers.items()}

    @property
    def sparse_modules(self) -> dict[str, SparseLinear]:
        """``{name: SparseLinear}`` of the sparse-backend layers."""
        return {name: layer.module for name, layer in self.layers.items() if isinstance(layer, CSRLayer)}

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """The method's persistent tensors, flat (e.g. ``snfs_momentum/<layer>``)."""
        return self.state.persistent()

    @property
    def transient(self) -> dict[str, torch.Tensor]:
        """What is held for the current step only (captured dense gradients, CTRE's
        similarities); empty after every ``step()``."""
        held = {f"dense_grad/{n}": t for n, layer in self.layers.items() if (t := layer.captured()) is not None}
        return held | self.state.captured()

    # -- the SparsityContext a method sees ----------------------------------------------------
    def weight(self, name: str) -> torch.Tensor:
        """The dense weight of ``name`` (its parameter's shape), detached.

        Masked backend: the parameter itself. Sparse backend: a new tensor materialized from the
        CSR values (meant for topology updates only).
        """
        return self.layers[name].weight()

    def grad(self, name: str) -> torch.Tensor | None:
        """The gradient of ``name`` as the optimizer sees it (zero at inactive positions), dense.

        None before the first backward. Sparse backend: materialized from ``values.grad``.
        """
        return self.layers[name].grad()

    def dense_grad(self, name: str) -> torch.Tensor | None:
        """∂L/∂W of ``name`` at every position: at update steps of a method with
        ``needs_dense_grad`` (captured before masking), and in ``observe`` on masked layers."""
        return self.layers[name].dense_grad()

    def dense_grad_blocks(self, name: str) -> ScoreBlocks:
        """:meth:`dense_grad` of ``name``, flat, as :data:`~sparsenets.index_sets.ScoreBlocks`
        (CSR layers form it a row block at a time)."""
        return self.layers[name].dense_grad_blocks()

    def active_weight(self, name: str) -> torch.Tensor:
        """``(nnz,)`` the weight of ``name`` at its active positions (``masks.index`` order)."""
        return self.layers[name].active_weight()

    def active_grad(self, name: str) -> torch.Tensor | None:
        """``(nnz,)`` the gradient of ``name`` at its active positions (None before a backward)."""
        return self.layers[name].active_grad()

    def gather_batch(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's ``tensor`` ``(rows, ...)`` concatenated in rank order (the whole global
        batch under data parallelism); ``tensor`` itself in a single process."""
        return gather_rows(tensor)

    def generator(self, step: int, name: str, stream: Stream) -> torch.Generator:
        """The CPU generator for one random choice at ``step`` for layer ``name``."""
        return make_generator(self.seed, step, self._index[name], int(stream))

    def next_step_is_update(self) -> bool:
        """Whether the coming ``step()`` call updates the topology."""
        return self.method.is_update(self, self.step_count + 1)

    def add_forward_hook(self, name: str, hook: Callable) -> None:
        """Register a forward hook on the module owning weight ``name`` (removed by :meth:`close`)."""
        module = self.model.get_submodule(name.rpartition(".")[0])
        self._hooks.append(module.register_forward_hook(hook))

    def initial_density(self) -> float:
        """Global density at step 0 (1.0 for dense-to-sparse methods)."""
        return sum(self.initial_counts.values()) / self.masks.numel()

    def close(self) -> None:
        """Remove the forward hooks this sparsifier registered."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # -- the training step -------------------------------------------------------------------
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """Mask gradients, run ``optimizer.step()``, re-apply masks, update topology when due.

        The plain-loop form of the two halves :meth:`before_optimizer_step` and
        :meth:`after_optimizer_step`; a framework that calls the optimizer itself uses
        :meth:`wrap` (or the callbacks in :mod:`sparsenets.integrations`) instead.

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
        self.before_optimizer_step()
        try:
            result = self.optimizer.step()
        except BaseException:
            self.after_optimizer_step(skipped=True)
            raise
        self.after_optimizer_step()
        return loss if closure is not None else result

    def before_optimizer_step(self) -> None:
        """First half of a sparse step, after ``backward()`` and before ``optimizer.step()``.

        At an update step of a method that needs it, keep the dense gradient; let the method
        observe the gradients (SNFS's momentum); zero the gradients at inactive positions, so
        the optimizer builds no state there. Gradient clipping belongs before this call (it then
        sees the dense gradient, inactive positions included) or after it (the masked one).
        """
        if self._pending is not None:  # the last first half got no second: its step was skipped
            self._finish_step()
        self._follow_device()
        step = self.step_count + 1
        if all(layer.param.grad is None for layer in self.layers.values()):
            raise SparsenetsError(
                f"step {step}: no sparsified weight has a gradient; call loss.backward() before "
                f"sparsifier.step() (and do not zero the gradients in between)"
            )
        due = self.method.is_update(self, step)
        try:
            if due and self.method.needs_dense_grad:
                self._capture_dense_grads(step)
            self.method.observe(self, step)
            for layer in self.layers.values():
                layer.before_optimizer_step()
        except BaseException:
            self._finish_step()
            raise
        self._pending = due

    def after_optimizer_step(self, *, skipped: bool = False) -> None:
        """Second half of a sparse step, right after ``optimizer.step()``.

        Counts the step, zeroes the weights at inactive positions again and, when the schedule
        says so, updates the topology (optimizer state of dropped and grown weights reset).
        With ``skipped=True`` (the optimizer did not step, e.g. ``GradScaler`` found inf/NaN
        gradients) nothing is counted or changed: the step does not exist for sparsity.
        """
        if self._pending is None:
            raise SparsenetsError(
                "after_optimizer_step() needs a before_optimizer_step() first "
                "(call both around optimizer.step(), or use sparsifier.step() / sparsifier.wrap())"
            )
        due = self._pending
        try:
            if skipped:
                return
            self.step_count += 1
            for layer in self.layers.values():
                layer.after_optimizer_step()
            if due:
                started = time.perf_counter()
                self._update_topology(self.step_count)
                self.update_seconds += time.perf_counter() - started
        finally:
            self._finish_step()

    def _finish_step(self) -> None:
        """What was captured for a step never outlives it."""
        self._pending = None
        for layer in self.layers.values():
            layer.clear_scratch()
        self.state.clear_scratch()

    def wrap(self, optimizer: torch.optim.Optimizer | None = None) -> SparseOptimizer:
        """A ``torch.optim.Optimizer`` whose ``step()`` is this sparsifier's step.

        Give it wherever an optimizer goes (``GradScaler.step``, LR schedulers,
        ``accelerate.prepare``, ``transformers.Trainer(optimizers=...)``, Lightning's
        ``configure_optimizers``): it shares the optimizer's ``param_groups`` and ``state``, and
        its ``state_dict`` holds both the optimizer's and the sparsifier's. ``optimizer``, when
        given, must be the one this sparsifier was built with.
        """
        if optimizer is not None and optimizer is not self.optimizer:
            raise SparsenetsError("wrap() takes the optimizer the sparsifier was built with (or none)")
        return SparseOptimizer(self)

    def _follow_device(self) -> None:
        """Move masks and method state along when the model was moved after construction."""
        device = next(iter(self.layers.values())).param.device
        if device != self.device:
            self.device = device
            self.masks.to(device)
            self.state.to(device)

    def _capture_dense_grads(self, step: int) -> None:
        """Keep every layer's dense gradient for this update (RigL, GraNet, …)."""
        for name, layer in self.layers.items():
            layer.capture_dense_grad()
            if not layer.has_dense_grad():
                raise SparsenetsError(
                    f"{self.method.name} needs the gradient of {name!r} at step {step}; "
                    f"call loss.backward() before sparsifier.step()"
                )

    @torch.no_grad()
    def _update_topology(self, step: int) -> None:
        with self.masks.expanded():  # compact masks read densely are materialized once, here
            changes = self.method.update(self, step)
            record: dict[str, Any] = {"step": step, "layers": {}}
            for name, change in changes.items():
                old_index = self.masks.index(name)
                change = as_topology_change(change, old_index, self.masks.shapes[name])
                n_grown = change.grown.numel()
                values = self._regrow_values(name, step, n_grown) if n_grown else None
                self.layers[name].install(change.index, change.grown, values)
                nnz = change.index.numel()
                record["layers"][name] = {
                    "nnz": nnz,
                    "dropped": old_index.numel() - (nnz - n_grown),
                    "grown": n_grown,
                    "itop_rate": self.masks.itop_rate(name),
                }
        record["nnz"] = self.masks.nnz()
        record["grown"] = sum(layer["grown"] for layer in record["layers"].values())
        record["churn"] = record["grown"] / max(record["nnz"], 1)
        record["itop_rate"] = self.masks.itop_rate()
        self.history.append(record)
        log.debug("topology update at step %d: nnz=%d grown=%d", step, record["nnz"], record["grown"])

    def _regrow_values(self, name: str, step: int, n_grown: int) -> torch.Tensor | None:
        """CPU start values ``(n_grown,)`` of the weights grown at ``step`` (None: zero)."""
        gen = self.generator(step, name, Stream.REGROW_VALUES)
        return self.method.regrowth_values(self.masks.shapes[name], n_grown, gen)

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "method": self.method.name,
            "seed": self.seed,
            "step": self.step_count,
            "masks": self.masks.state_dict(),
            "initial_counts": dict(self.initial_counts),
            "target_counts": dict(self.target_counts),
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
        if "target_counts" in state:  # the allocation the run was built with (e.g. masks given)
            self.target_counts = {k: int(v) for k, v in state["target_counts"].items()}
        self.state.load_persistent(state["buffers"], self.device)
        self.history = list(state["history"])
        self.update_seconds = float(state["update_seconds"])
        for layer in self.layers.values():
            layer.after_optimizer_step()  # re-apply the masks to dense weights

    def __repr__(self) -> str:
        sparse = f", sparse_layers={len(self.sparse_modules)}" if self.sparse_modules else ""
        return (
            f"DynamicSparsity(method={self.method!r}, density={self.density}, "
            f"layers={len(self.masks)}{sparse}, step={self.step_count}/{self.total_steps})"
        )
