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

from ..masks import MaskStore, mask_to_index
from ..optim import mapped_state, replace_param_, reset_state_
from ..sparse import SparseLinear, remap, sparsify_linear_
from ..sparse.csr import csr_to_dense


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

    def install(self, new_mask: torch.Tensor, grown: torch.Tensor, grown_values: torch.Tensor | None) -> None:
        """Make ``new_mask`` the topology: dropped weights go, grown ones start at 0 (or at
        ``grown_values``, dense CPU values of the weight's shape) with fresh optimizer state,
        kept ones keep value and state. Updates the mask store."""
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
    def install(self, new_mask: torch.Tensor, grown: torch.Tensor, grown_values: torch.Tensor | None) -> None:
        param = self.param
        dropped = self.masks[self.name] & ~new_mask
        self.masks.set(self.name, new_mask)
        reset_state_(self.optimizer, param, dropped | grown)
        if grown_values is not None:
            param.copy_(torch.where(grown, grown_values.to(param.device, param.dtype), param))
        else:
            param.masked_fill_(grown, 0)
        self.masks.zero_inactive_(self.name, param.data)


class CSRLayer:
    """An ``nn.Linear`` replaced in the model by a CSR :class:`~sparsenets.sparse.SparseLinear`.

    Construction converts in place: the model gets a ``SparseLinear`` holding ``weight[mask]``
    (sharing the bias Parameter), the optimizer holds its ``values`` with any per-element state
    gathered at the mask, and the mask store keeps the layer compact (sorted flat indices).

    With ``capture_due`` (methods that need the dense gradient), a forward hook forms
    ``grad_outᵀ · x`` (``(out, in)``, equal to ∂L/∂W of the dense layer) during the backward
    pass of the steps for which ``capture_due()`` is true, and only then.
    """

    kind = "sparse"

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
        self._dense_grad: torch.Tensor | None = None
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

    def dense_grad(self) -> torch.Tensor | None:
        return self._dense_grad

    def capture_dense_grad(self) -> None:
        """Nothing to do: the forward hook already formed the dense gradient."""

    def captured(self) -> torch.Tensor | None:
        return self._dense_grad

    def clear_scratch(self) -> None:
        self._dense_grad = None

    def before_optimizer_step(self) -> None:
        """Nothing to mask: only active positions exist."""

    def after_optimizer_step(self) -> None:
        """Nothing to mask: only active positions exist."""

    @torch.no_grad()
    def install(self, new_mask: torch.Tensor, grown: torch.Tensor, grown_values: torch.Tensor | None) -> None:
        """Rebuild the CSR structure in place; per-element optimizer state moves along
        (kept weights keep it, grown ones start at zero, dropped ones are discarded)."""
        layer, values = self.module, self.module.values
        new_index = mask_to_index(new_mask)
        old_index = layer.flat_index()
        new_values = remap(values.detach(), old_index, new_index)
        if grown_values is not None:
            is_grown = grown.reshape(-1)[new_index]
            init = grown_values.to(new_values.device, new_values.dtype).reshape(-1)[new_index]
            new_values = torch.where(is_grown, init, new_values)
        state = mapped_state(self.optimizer, values, lambda tensor: remap(tensor, old_index, new_index))
        layer.set_topology(new_mask, new_values)
        if state:
            self.optimizer.state[values] = state
        self.masks.set(self.name, new_mask)

    def _capture_hook(self, due: Callable[[], bool]) -> Callable:
        def hook(module: SparseLinear, inputs: tuple, output: torch.Tensor) -> None:
            if not output.requires_grad or not due():
                return
            x = inputs[0].detach().reshape(-1, module.in_features)  # (tokens, in)
            values = module.values

            def accumulate(grad_out: torch.Tensor) -> None:
                # (out, tokens) @ (tokens, in) -> (out, in). Contributions of several backward
                # passes before one step add up like param.grad does; the sum restarts when
                # values.grad is None or all zero (the gradients were zeroed since).
                contribution = grad_out.detach().reshape(-1, module.out_features).t() @ x
                fresh = values.grad is None or not bool(values.grad.any())
                current = self._dense_grad
                self._dense_grad = contribution if current is None or fresh else current + contribution

            output.register_hook(accumulate)

        return hook
