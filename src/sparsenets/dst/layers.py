"""The per-layer backends of :class:`~sparsenets.dst.sparsifier.DynamicSparsity`.

Each sparsified weight is held by one :class:`LayerBackend`, chosen per layer:

* :class:`MaskedLayer`: the weight stays a dense Parameter multiplied by its mask;
* :class:`CSRLayer`: the ``nn.Linear`` owning the weight is replaced by a CSR
  :class:`~sparsenets.sparse.SparseLinear` and the optimizer holds its ``values`` ``(nnz,)``,
  so every per-element optimizer state is ``(nnz,)`` too.

The sparsifier only talks to this interface (weight, gradient, dense gradient, masking around
the optimizer step, installing a new topology, stored bytes), so one method code path drives
both, and for the same seed, weights and gradients both choose the same topology.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from ..errors import SparsenetsError
from ..index_sets import ScoreBlocks, dense_blocks
from ..masks import MaskStore, index_to_mask
from ..optim import mapped_state, replace_param_, reset_state_
from ..sparse import SparseLinear, sparsify_linear_
from ..sparse.csr import apply_remap, csr_to_dense, remap_plan


class LayerBackend(Protocol):
    """How one sparsified weight is stored and updated.

    Attributes:
        kind: ``"masked"`` or ``"sparse"``.
        param: the Parameter the optimizer updates (dense weight, or CSR ``values``).
    """

    kind: str
    param: nn.Parameter

    def weight(self) -> torch.Tensor:
        """The dense weight (the parameter's shape), detached."""
        ...

    def grad(self) -> torch.Tensor | None:
        """The gradient as the optimizer sees it, dense (None before the first backward)."""
        ...

    def dense_grad(self) -> torch.Tensor | None:
        """∂L/∂W at every position (captured at update steps), or None."""
        ...

    def dense_grad_blocks(self) -> ScoreBlocks:
        """:meth:`dense_grad`, flat, as :data:`~sparsenets.index_sets.ScoreBlocks`."""
        ...

    def has_dense_grad(self) -> bool:
        """Whether :meth:`dense_grad` has something to give (without forming it)."""
        ...

    def active_weight(self) -> torch.Tensor:
        """``(nnz,)`` the weight at the active positions (sorted flat index order), detached."""
        ...

    def active_grad(self) -> torch.Tensor | None:
        """``(nnz,)`` the gradient at the active positions, or None."""
        ...

    def capture_dense_grad(self) -> None:
        """Keep the dense gradient of this step before the gradients are masked."""
        ...

    def captured(self) -> torch.Tensor | None:
        """What the layer holds for this step only (None when nothing)."""
        ...

    def clear_scratch(self) -> None:
        """Forget what was captured for this step."""
        ...

    def before_optimizer_step(self) -> None:
        """Zero the gradient at inactive positions (masked storage)."""
        ...

    def after_optimizer_step(self) -> None:
        """Zero the weight at inactive positions again (masked storage)."""
        ...

    def install(self, new_index: torch.Tensor, grown: torch.Tensor, grown_values: torch.Tensor | None) -> None:
        """Make the sorted flat positions ``new_index`` ``(nnz_new,)`` the topology: dropped
        weights go, the ``grown`` positions ``(n_grown,)`` (sorted, part of ``new_index``) start
        at 0 (or at ``grown_values`` ``(n_grown,)``) with fresh optimizer state, kept ones keep
        value and state. Updates the mask store."""
        ...


class MaskedLayer:
    """A dense weight multiplied by its mask (any Linear/Conv weight, CPU or GPU)."""

    kind = "masked"

    def __init__(self, name: str, param: nn.Parameter, masks: MaskStore, optimizer: torch.optim.Optimizer):
        self.name, self.param, self.masks, self.optimizer = name, param, masks, optimizer
        self._dense_grad: torch.Tensor | None = None

    def weight(self) -> torch.Tensor:
        return self.param.detach()

    def grad(self) -> torch.Tensor | None:
        return self.param.grad

    def dense_grad(self) -> torch.Tensor | None:
        return self._dense_grad if self._dense_grad is not None else self.param.grad

    def dense_grad_blocks(self) -> ScoreBlocks:
        return dense_blocks(self.dense_grad())

    def has_dense_grad(self) -> bool:
        return self.dense_grad() is not None

    def active_weight(self) -> torch.Tensor:
        return self.param.detach().reshape(-1)[self.masks.index(self.name)]

    def active_grad(self) -> torch.Tensor | None:
        grad = self.param.grad
        return None if grad is None else grad.detach().reshape(-1)[self.masks.index(self.name)]

    def capture_dense_grad(self) -> None:
        grad = self.param.grad
        self._dense_grad = None if grad is None else grad.detach().clone()

    def captured(self) -> torch.Tensor | None:
        return self._dense_grad

    def clear_scratch(self) -> None:
        self._dense_grad = None

    @torch.no_grad()
    def before_optimizer_step(self) -> None:
        grad = self.param.grad
        if grad is not None:
            self.masks.zero_inactive_(self.name, grad)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        self.masks.zero_inactive_(self.name, self.param.data)

    @torch.no_grad()
    def install(self, new_index: torch.Tensor, grown: torch.Tensor, grown_values: torch.Tensor | None) -> None:
        param, shape = self.param, tuple(self.param.shape)
        new_mask = index_to_mask(new_index.to(param.device), shape)
        grown_mask = index_to_mask(grown.to(param.device), shape)
        dropped = self.masks[self.name] & ~new_mask
        self.masks.set(self.name, new_mask)
        reset_state_(self.optimizer, param, dropped | grown_mask)
        if grown_values is not None:
            start = torch.zeros(param.numel(), dtype=param.dtype, device=param.device)
            start[grown.to(param.device)] = grown_values.to(param.device, param.dtype)
            param.copy_(torch.where(grown_mask, start.reshape(shape), param))
        else:
            param.masked_fill_(grown_mask, 0)
        self.masks.zero_inactive_(self.name, param.data)


class CSRLayer:
    """An ``nn.Linear`` replaced in the model by a CSR :class:`~sparsenets.sparse.SparseLinear`.

    Construction converts in place: the model gets a ``SparseLinear`` holding ``weight[mask]``
    (sharing the bias Parameter), the optimizer holds its ``values`` with any per-element state
    gathered at the mask, and the mask store keeps the layer compact (sorted flat indices).

    With ``capture_due`` (methods that need the dense gradient), a forward hook keeps the two
    factors of ∂L/∂W of the dense layer, the layer's input ``x`` ``(tokens, in)`` and the output
    gradient ``g`` ``(tokens, out)`` (∂L/∂W = ``gᵀ · x``), during the backward pass of the steps
    for which ``capture_due()`` is true, and only then. :meth:`dense_grad_blocks` forms the
    product a block of rows at a time (at most :data:`BLOCK_ELEMENTS` entries each), so the
    ``(out, in)`` matrix is never held whole; when the factors would outgrow it (many tokens),
    they are folded into the dense product instead.
    """

    kind = "sparse"
    #: Entries of one row block of the dense gradient (16 MiB in float32).
    BLOCK_ELEMENTS = 1 << 22

    def __init__(
        self,
        model: nn.Module,
        name: str,
        masks: MaskStore,
        optimizer: torch.optim.Optimizer,
        capture_due: Callable[[], bool] | None = None,
    ):
        self.name, self.masks, self.optimizer = name, masks, optimizer
        path = name.rpartition(".")[0]
        old = model.get_submodule(path).weight
        mask = masks[name]
        self.module: SparseLinear = sparsify_linear_(model, path, mask)
        device_mask = mask.to(old.device)
        replace_param_(optimizer, old, self.module.values, lambda tensor: tensor[device_mask])
        masks.set_compact(name)
        # ∂L/∂W held as factors [(g (tokens, out), x (tokens, in)), ...] and/or a dense sum.
        self._factors: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._dense_sum: torch.Tensor | None = None
        self.hook = None
        if capture_due is not None:
            self.hook = self.module.register_forward_hook(self._capture_hook(capture_due))

    @property
    def param(self) -> nn.Parameter:
        return self.module.values

    def weight(self) -> torch.Tensor:
        return self.module.dense_weight()

    def grad(self) -> torch.Tensor | None:
        layer = self.module
        grad = layer.values.grad
        if grad is None:
            return None
        return csr_to_dense(layer.crow_indices, layer.col_indices, grad, layer.shape)

    def active_weight(self) -> torch.Tensor:
        return self.module.values.detach()

    def active_grad(self) -> torch.Tensor | None:
        grad = self.module.values.grad
        return None if grad is None else grad.detach()

    def _captured_rows(self, start: int, stop: int) -> torch.Tensor | None:
        """Rows ``start:stop`` of the captured ∂L/∂W, ``(stop - start, in)``."""
        block = None if self._dense_sum is None else self._dense_sum[start:stop].clone()
        for g, x in self._factors:
            part = g[:, start:stop].t() @ x
            block = part if block is None else block.add_(part)
        return block

    def has_dense_grad(self) -> bool:
        return self._dense_sum is not None or bool(self._factors)

    def dense_grad(self) -> torch.Tensor | None:
        if not self.has_dense_grad():
            return None
        return self._captured_rows(0, self.module.out_features)

    def dense_grad_blocks(self) -> ScoreBlocks:
        out_features, in_features = self.module.shape
        rows = max(1, self.BLOCK_ELEMENTS // max(in_features, 1))

        def blocks():
            for start in range(0, out_features, rows):
                stop = min(start + rows, out_features)
                yield start * in_features, self._captured_rows(start, stop).reshape(-1)

        return blocks

    def capture_dense_grad(self) -> None:
        """Nothing to do: the forward hook already captured the dense gradient's factors."""

    def captured(self) -> torch.Tensor | None:
        """The captured factors (or their dense sum), flat, for inspection."""
        held = [t.reshape(-1) for pair in self._factors for t in pair]
        if self._dense_sum is not None:
            held.append(self._dense_sum.reshape(-1))
        return torch.cat(held) if held else None

    def clear_scratch(self) -> None:
        self._factors, self._dense_sum = [], None

    def before_optimizer_step(self) -> None:
        """Nothing to mask: only active positions exist."""

    def after_optimizer_step(self) -> None:
        """Nothing to mask: only active positions exist."""

    @torch.no_grad()
    def install(self, new_index: torch.Tensor, grown: torch.Tensor, grown_values: torch.Tensor | None) -> None:
        """Rebuild the CSR structure in place from the index; per-element optimizer state moves
        along (kept weights keep it, grown ones start at zero, dropped ones are discarded).
        Nothing of the dense shape is built."""
        layer, values = self.module, self.module.values
        new_index = new_index.to(values.device)
        old_index = self.masks.index(self.name).to(values.device)  # the CSR order of the values
        if old_index.numel() != values.numel():
            raise SparsenetsError(
                f"mask store and CSR layer of {self.name!r} disagree ({old_index.numel()} vs {values.numel()} "
                f"active weights); was the layer's topology changed outside the sparsifier?"
            )
        plan = remap_plan(old_index, new_index)
        new_values = apply_remap(values.detach(), plan)
        if grown_values is not None and grown.numel():
            where = torch.searchsorted(new_index, grown.to(new_index.device))
            new_values[where] = grown_values.to(new_values.device, new_values.dtype)
        state = mapped_state(self.optimizer, values, lambda tensor: apply_remap(tensor, plan))
        layer.set_topology_index(new_index, new_values)
        if state:
            self.optimizer.state[values] = state
        self.masks.set_index(self.name, new_index)

    def _capture_hook(self, due: Callable[[], bool]) -> Callable:
        def hook(module: SparseLinear, inputs: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad or not due():
                return
            x = inputs[0].detach().reshape(-1, module.in_features)  # (tokens, in)
            values = module.values

            def accumulate(grad_out: torch.Tensor) -> None:
                # Contributions of several backward passes before one step add up like
                # param.grad does; the sum restarts when values.grad is None or all zero (the
                # gradients were zeroed since).
                g = grad_out.detach().reshape(-1, module.out_features)  # (tokens, out)
                if values.grad is None or not bool(values.grad.any()):
                    self.clear_scratch()
                self._factors.append((g, x))
                held = sum(f.shape[0] for f, _ in self._factors) * (module.in_features + module.out_features)
                if held > module.in_features * module.out_features:  # the product is smaller
                    self._dense_sum = self.dense_grad()
                    self._factors = []

            output.register_hook(accumulate)

        return hook
