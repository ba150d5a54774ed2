"""The mask store: boolean masks kept outside the model, keyed by parameter name.

The model stays a plain ``nn.Module`` whose ``state_dict`` keys never change; weights at
inactive positions are exactly zero. The store also tracks, per layer, which positions have
ever been active (needed for the ITOP rate).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from .errors import SparsenetsError


class MaskStore(Mapping[str, torch.Tensor]):
    """A validated mapping ``parameter name -> torch.bool mask`` of the parameter's shape.

    Reading is like a dict (``store["fc1.weight"]``, ``len``, iteration in insertion order).
    Writing goes through :meth:`set`, which validates dtype and shape and updates the
    ever-active record.

    Args:
        shapes: ``{name: shape}`` of the masked parameters (fixes the valid keys and shapes).
        device: where masks live (normally the parameters' device).
    """

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], device: torch.device | str = "cpu"):
        self._shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self._device = torch.device(device)
        self._masks: dict[str, torch.Tensor] = {
            name: torch.ones(shape, dtype=torch.bool, device=self._device)
            for name, shape in self._shapes.items()
        }
        self._ever_active: dict[str, torch.Tensor] = {
            name: m.clone() for name, m in self._masks.items()
        }
        # Float copies of the masks per dtype: multiplying by a float mask is ~100x faster
        # than by a bool mask on CPU. Invalidated whenever a mask changes.
        self._multipliers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    # -- Mapping interface -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        """The current mask of ``name`` (read it, do not edit it in place: use :meth:`set`)."""
        try:
            return self._masks[name]
        except KeyError:
            raise KeyError(f"no mask for {name!r} (masked: {', '.join(self._masks)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        body = ", ".join(f"{n}: {int(m.sum())}/{m.numel()}" for n, m in self._masks.items())
        return f"MaskStore({body})"

    # -- writing -----------------------------------------------------------------------------
    def set(self, name: str, mask: torch.Tensor) -> None:
        """Replace the mask of ``name`` (validated: bool dtype, the parameter's shape)."""
        if name not in self._shapes:
            raise SparsenetsError(
                f"no masked parameter named {name!r} (masked: {', '.join(self._shapes)})"
            )
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise SparsenetsError(f"mask for {name!r} must be a torch.bool tensor, got {got}")
        if tuple(mask.shape) != self._shapes[name]:
            raise SparsenetsError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, expected {self._shapes[name]}"
            )
        mask = mask.to(self._device, copy=True)  # a private copy: callers may edit theirs
        self._masks[name] = mask
        self._ever_active[name] |= mask
        for key in [k for k in self._multipliers if k[0] == name]:
            del self._multipliers[key]

    def to(self, device: torch.device | str) -> MaskStore:
        """Move every mask to ``device`` (in place); returns ``self``."""
        self._device = torch.device(device)
        self._masks = {n: m.to(self._device) for n, m in self._masks.items()}
        self._ever_active = {n: m.to(self._device) for n, m in self._ever_active.items()}
        self._multipliers.clear()
        return self

    # -- applying ----------------------------------------------------------------------------
    def multiplier(self, name: str, dtype: torch.dtype) -> torch.Tensor:
        """The mask of ``name`` as 0/1 values of ``dtype`` (cached until the mask changes)."""
        key = (name, dtype)
        cached = self._multipliers.get(key)
        if cached is None:
            cached = self._multipliers[key] = self[name].to(dtype)
        return cached

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the weights of ``model`` at inactive positions (in place)."""
        self.apply_to_(dict(model.named_parameters()))

    @torch.no_grad()
    def apply_to_(self, params: Mapping[str, torch.Tensor]) -> None:
        """Zero ``params[name]`` at inactive positions for every masked name (in place)."""
        for name in self._masks:
            param = params[name]
            param.mul_(self.multiplier(name, param.dtype))

    # -- measuring ---------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the masked parameters."""
        return dict(self._shapes)

    def nnz(self, name: str | None = None) -> int:
        """Active positions in one layer, or in all masked layers when ``name`` is None."""
        if name is not None:
            return int(torch.count_nonzero(self[name]))
        return sum(int(torch.count_nonzero(m)) for m in self._masks.values())

    def numel(self, name: str | None = None) -> int:
        """Positions in one layer, or in all masked layers."""
        if name is not None:
            return self[name].numel()
        return sum(m.numel() for m in self._masks.values())

    def density(self, name: str | None = None) -> float:
        """nnz / numel of one layer or of all masked layers together."""
        return self.nnz(name) / self.numel(name)

    def ever_active(self, name: str) -> torch.Tensor:
        """Boolean tensor of the positions of ``name`` that have been active at any time."""
        return self._ever_active[name]

    def itop_rate(self, name: str | None = None) -> float:
        """In-Time Over-Parameterization rate: fraction of positions ever active."""
        if name is not None:
            return int(self._ever_active[name].sum()) / self._ever_active[name].numel()
        total = sum(int(m.sum()) for m in self._ever_active.values())
        return total / self.numel()

    def reset_ever_active(self) -> None:
        """Restart ITOP tracking from the current masks."""
        self._ever_active = {n: m.clone() for n, m in self._masks.items()}

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{key: bool tensor}`` with keys ``mask/<name>`` and ``ever_active/<name>``.

        Flat tensors only, so it can be written with ``safetensors`` or ``torch.save``.
        """
        state = {f"mask/{n}": m.clone() for n, m in self._masks.items()}
        state.update({f"ever_active/{n}": m.clone() for n, m in self._ever_active.items()})
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore masks and ever-active record written by :meth:`state_dict` (validated)."""
        expected = {f"mask/{n}" for n in self._shapes} | {f"ever_active/{n}" for n in self._shapes}
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise SparsenetsError(
                f"mask state does not match the masked parameters "
                f"(missing: {sorted(missing)}, unexpected: {sorted(unexpected)})"
            )
        for name in self._shapes:
            self.set(name, state[f"mask/{name}"].to(torch.bool))
        for name in self._shapes:
            ever = state[f"ever_active/{name}"].to(device=self._device, dtype=torch.bool)
            self._ever_active[name] = ever | self._masks[name]
