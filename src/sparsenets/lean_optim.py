"""A memory-lean AdamW for sparse training: moments only for active weights, and a per-weight
step count so that a regrown weight warms up afresh (SMET, Xiao et al. 2026).

Dense AdamW keeps two float32 moments for *every* weight (8 bytes each). :class:`LeanAdamW`,
once its masks are attached (``DynamicSparsity`` does it), keeps for a masked parameter only
its active weights' moments, in the order of the mask's own layout (row-major active
positions: the boolean mask itself, or the sorted flat indices of a compact layer), plus an
``int16`` step count per active weight: 10 bytes per *active* weight, so 3 bytes per weight at
70% sparsity (37.5% of dense AdamW's 8). No index is stored: the state is gathered and scattered
with the mask store's current mask, and when the mask changes (a topology update) the state is
remapped on the next step: positions active before and after keep their moments and count,
dropped positions lose theirs, grown positions start at zero with step 0.

Per-weight steps fix Adam's cold start on regrown weights: with a shared step counter t ≫ 1 the
bias corrections are ≈ 1, a regrown weight's first update is ``lr · (1−β1) g / sqrt((1−β2) g²)``
≈ ``lr · 0.1 / 0.0316`` ≈ 3.16·lr; with its own t = 1 the corrections cancel the (1−β) factors
and the first update is ``lr · g/(|g| + ε')`` ≤ lr. Two optional SMET refinements: a linear
warm-up of each regrown weight's step size over ``warmup_steps`` of its own steps, and a
density-aware learning-rate scale ``lr · density ** -density_lr_power`` per parameter (SMET
scales the base learning rate by the density; the exact rule was not available here, so the
power is a parameter, 0 = off by default).

Unmasked parameters (biases, norms, the values of CSR layers) keep dense-shaped state, with the
per-element step count too, so the masked-state helpers of :mod:`sparsenets.optim` (reset of
dropped/grown positions, gathering for the CSR backend) apply to them unchanged. With a fixed
topology every weight has the same step and the update is computed exactly as
``torch.optim.AdamW`` computes it (same operations, same order: bitwise equal, tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .errors import SparsenetsError
from .masks import MaskStore

#: Largest per-weight step count (int16); beyond it the bias corrections are 1 to float precision.
MAX_STEP = torch.iinfo(torch.int16).max


class LeanAdamW(torch.optim.Optimizer):
    """AdamW whose state for masked parameters exists only at active weights (see module doc).

    Args:
        params: parameters or parameter groups, as for ``torch.optim.AdamW``.
        lr, betas, eps, weight_decay: as ``torch.optim.AdamW`` (decoupled weight decay).
        warmup_steps: linear warm-up of each weight's step size over its first
            ``warmup_steps`` steps (after regrowth); 0 = none.
        density_lr_power: the learning rate of a masked parameter is multiplied by
            ``density ** -density_lr_power`` (0 = off).
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, *, warmup_steps: int = 0, density_lr_power: float = 0.0):
        if not lr >= 0:
            raise SparsenetsError(f"LeanAdamW lr must be >= 0, got {lr!r}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise SparsenetsError(f"LeanAdamW betas must be in [0, 1), got {betas!r}")
        if not eps >= 0 or not weight_decay >= 0:
            raise SparsenetsError(f"LeanAdamW eps and weight_decay must be >= 0, got {eps!r}, {weight_decay!r}")
        if not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise SparsenetsError(f"LeanAdamW warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, density_lr_power=float(density_lr_power)))
        self.masks: MaskStore | None = None
        self.mask_names: dict[int, str] = {}  # id(param) -> mask name
        # id(param) -> the mask layout its compact state follows. Kept beside the state, not in
        # it: helpers that zero per-element state (sparsenets.optim.reset_state_) must not touch it.
        self.layouts: dict[int, torch.Tensor] = {}

    # -- masks --------------------------------------------------------------------------------
    def attach_masks(self, masks: MaskStore, params: Mapping[str, nn.Parameter]) -> None:
        """Keep the state of ``params`` (mask name → parameter) only at their active weights.

        Existing dense state of those parameters is gathered at the current masks.
        """
        owned = {id(p) for group in self.param_groups for p in group["params"]}
        for name, param in params.items():
            if id(param) not in owned:
                raise SparsenetsError(f"LeanAdamW does not optimize the masked parameter {name!r}")
            if tuple(param.shape) != masks.shapes[name]:
                raise SparsenetsError(f"mask {name!r} has shape {masks.shapes[name]}, the parameter {tuple(param.shape)}")
        self.masks = masks
        self.mask_names = {id(p): name for name, p in params.items()}
        for name, param in params.items():
            state = self.state.get(param)
            if state and id(param) not in self.layouts:  # dense state from before: gather it
                token = self._token(name)
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    state[key] = self._gather(token, state[key]).clone()
                self.layouts[id(param)] = token

    def _token(self, name: str) -> torch.Tensor:
        """The mask store's current layout of ``name``: the stored bool mask, or the stored
        sorted flat indices of a compact layer (a new object whenever the mask changes)."""
        return self.masks.index(name) if name in self.masks.compact else self.masks[name]

    @staticmethod
    def _gather(token: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
        flat = tensor.reshape(-1)
        return flat[token.reshape(-1)] if token.dtype == torch.bool else flat[token]

    @staticmethod
    def _nnz(token: torch.Tensor) -> int:
        return int(token.sum()) if token.dtype == torch.bool else token.numel()

    @staticmethod
    def _carried(old: torch.Tensor, new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(which entries of the new compact state come from the old one (bool, new nnz), and
        which old entries they are (bool over the old nnz, same order))."""
        if old.dtype == torch.bool:
            old_flat, new_flat = old.reshape(-1), new.reshape(-1)
            return old_flat[new_flat], new_flat[old_flat]
        if old.numel() == 0 or new.numel() == 0:
            return (torch.zeros(new.numel(), dtype=torch.bool, device=new.device),
                    torch.zeros(old.numel(), dtype=torch.bool, device=old.device))
        place = torch.searchsorted(old, new).clamp_max(old.numel() - 1)
        from_old = old[place] == new
        taken = torch.zeros(old.numel(), dtype=torch.bool, device=old.device)
        taken[place[from_old]] = True
        return from_old, taken

    def _remap(self, param: nn.Parameter, token: torch.Tensor) -> None:
        """Move compact state from the layout it was built on to ``token`` (see module doc)."""
        state = self.state[param]
        into, out_of = self._carried(self.layouts[id(param)], token)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            old = state[key]
            fresh = torch.zeros(into.numel(), dtype=old.dtype, device=old.device)
            fresh[into] = old[out_of]
            state[key] = fresh
        self.layouts[id(param)] = token

    # -- the step -----------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update(param, group)
        return loss

    def _update(self, param: nn.Parameter, group: dict) -> None:
        if param.grad.is_sparse:
            raise SparsenetsError("LeanAdamW does not support sparse gradients")
        name = self.mask_names.get(id(param)) if self.masks is not None else None
        state = self.state[param]
        lr = group["lr"]
        if name is None:
            if not state:
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] = torch.zeros(param.shape, dtype=torch.int16, device=param.device)
            _adamw_(param, param.grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr, group)
            return
        token = self._token(name)
        if not state:
            nnz = self._nnz(token)
            state["exp_avg"] = torch.zeros(nnz, dtype=param.dtype, device=param.device)
            state["exp_avg_sq"] = torch.zeros(nnz, dtype=param.dtype, device=param.device)
            state["step"] = torch.zeros(nnz, dtype=torch.int16, device=param.device)
            self.layouts[id(param)] = token
        elif id(param) not in self.layouts:  # state loaded from a checkpoint: it follows the current mask
            nnz = self._nnz(token)
            if state["exp_avg"].shape != (nnz,):
                raise SparsenetsError(f"LeanAdamW state of {name!r} holds {state['exp_avg'].numel()} entries, its mask "
                                      f"{nnz}: load the sparsifier's masks from the same checkpoint")
            self.layouts[id(param)] = token
        elif self.layouts[id(param)] is not token:
            self._remap(param, token)
        power = group["density_lr_power"]
        if power:
            lr = lr * max(self.masks.density(name), 1e-12) ** -power
        # the active positions as flat indices, for this update only (not kept: the state has no
        # index of its own); one nonzero pass instead of one per boolean gather and scatter
        index = token.reshape(-1).nonzero().squeeze(1) if token.dtype == torch.bool else token
        values = param.detach().reshape(-1).index_select(0, index)
        grad = param.grad.reshape(-1).index_select(0, index)
        _adamw_(values, grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr, group)
        param.data.view(-1).index_copy_(0, index, values)

    def state_bytes(self) -> int:
        """Bytes of every tensor this optimizer keeps in its state (moments and step counts;
        the mask store's masks, referenced for the layout, are not its own)."""
        self.sync()
        return sum(value.numel() * value.element_size() for state in self.state.values()
                   for value in state.values() if isinstance(value, torch.Tensor))

    def sync(self) -> None:
        """Bring every compact state to its parameter's current mask now (it is otherwise done
        at the parameter's next step); :meth:`state_dict` calls it, so a checkpoint written
        right after a topology update resumes exactly."""
        if self.masks is None:
            return
        for group in self.param_groups:
            for param in group["params"]:
                name = self.mask_names.get(id(param))
                if name is not None and self.state.get(param) and id(param) in self.layouts:
                    token = self._token(name)
                    if self.layouts[id(param)] is not token:
                        self._remap(param, token)

    def state_dict(self):
        self.sync()
        return super().state_dict()

    def load_state_dict(self, state_dict):
        """Load a state saved by :meth:`state_dict`. Compact state is matched to the masks at
        the next step, so load the sparsifier's masks from the same checkpoint before training
        on (in either order)."""
        super().load_state_dict(state_dict)
        self.layouts = {}


def _adamw_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
            step: torch.Tensor, lr: float, group: dict) -> None:
    """One AdamW update of ``param`` in place with per-element ``step`` counts (int16, +1 here,
    saturating). Elements sharing one step count take torch.optim.AdamW's exact operations."""
    beta1, beta2 = group["betas"]
    eps, weight_decay, warmup = group["eps"], group["weight_decay"], group["warmup_steps"]
    step.add_(1).clamp_(max=MAX_STEP)
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    if step.numel() == 0:
        return
    low, high = int(step.min()), int(step.max())
    if low == high and (not warmup or low >= warmup):
        bias_correction1 = 1 - beta1 ** low
        bias_correction2_sqrt = (1 - beta2 ** low) ** 0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        return
    t = step.to(torch.float64)
    step_size = lr / (1 - beta1 ** t)  # (n,) float64
    if warmup:
        step_size = step_size * (t / warmup).clamp(max=1.0)
    bias_correction2_sqrt = (1 - beta2 ** t).sqrt().to(param.dtype)
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.sub_(exp_avg * step_size.to(param.dtype) / denom)
