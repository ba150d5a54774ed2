"""The mask store: boolean masks kept outside the model, keyed by parameter name.

The model stays a plain ``nn.Module`` whose ``state_dict`` keys never change; weights at
inactive positions are exactly zero. The store also tracks, per layer, which positions have
ever been active (needed for the ITOP rate).

A layer is kept in one of two layouts:

* ``dense`` (default): a bool tensor of the parameter's shape (the masked backend);
* ``compact``: the sorted flat indices ``(nnz,)`` int64 of the active positions, and of the
  ever-active ones (the sparse backend, where nothing of the dense shape may live between
  topology updates). Reading ``store[name]`` materializes a new bool tensor; inside
  ``with store.expanded():`` the materialized masks are cached until the block ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from .errors import SparsenetsError
from .index_sets import difference, merge


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
        self._inactive: dict[str, torch.Tensor] = {}
        self._compact: set[str] = set()
        # Materialized masks of compact layers, only inside ``expanded()``.
        self._expanded: dict[str, torch.Tensor] | None = None

    # -- Mapping interface -------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        """The current bool mask of ``name`` (read it, do not edit it in place: use :meth:`set`).

        For a compact layer this is a new tensor (cached inside :meth:`expanded`).
        """
        stored = self._stored(name)
        if name not in self._compact:
            return stored
        if self._expanded is not None:
            cached = self._expanded.get(name)
            if cached is None:
                cached = self._expanded[name] = index_to_mask(stored, self._shapes[name])
            return cached
        return index_to_mask(stored, self._shapes[name])

    def _stored(self, name: str) -> torch.Tensor:
        try:
            return self._masks[name]
        except KeyError:
            raise KeyError(f"no mask for {name!r} (masked: {', '.join(self._masks)})") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        body = ", ".join(f"{n}: {self.nnz(n)}/{self.numel(n)}" for n in self._masks)
        return f"MaskStore({body})"

    # -- layout ------------------------------------------------------------------------------
    @property
    def compact(self) -> frozenset[str]:
        """Names of the layers kept as sorted flat indices (the sparse backend's layers)."""
        return frozenset(self._compact)

    def set_compact(self, name: str, compact: bool = True) -> None:
        """Switch ``name`` to the compact (indices) layout, or back to a dense bool tensor."""
        self._check_name(name)
        if compact == (name in self._compact):
            return
        mask, ever = self[name], self.ever_active(name)
        if compact:
            self._compact.add(name)
            self._masks[name] = mask_to_index(mask)
            self._ever_active[name] = mask_to_index(ever)
        else:
            self._compact.discard(name)
            self._masks[name], self._ever_active[name] = mask, ever
        self._invalidate(name)

    def index(self, name: str) -> torch.Tensor:
        """Sorted flat indices ``(nnz,)`` int64 of the active positions of ``name``.

        For a compact layer this is the stored tensor (do not edit it in place).
        """
        if name in self._compact:
            return self._masks[name]
        return mask_to_index(self[name])

    @contextmanager
    def expanded(self) -> Iterator[MaskStore]:
        """Cache the materialized masks of compact layers until the block ends (update steps)."""
        outer = self._expanded is None
        if outer:
            self._expanded = {}
        try:
            yield self
        finally:
            if outer:
                self._expanded = None

    # -- writing -----------------------------------------------------------------------------
    def _check_name(self, name: str) -> None:
        if name not in self._shapes:
            raise SparsenetsError(
                f"no masked parameter named {name!r} (masked: {', '.join(self._shapes)})"
            )

    def _invalidate(self, name: str) -> None:
        self._inactive.pop(name, None)
        if self._expanded is not None:
            self._expanded.pop(name, None)

    def set(self, name: str, mask: torch.Tensor) -> None:
        """Replace the mask of ``name`` (validated: bool dtype, the parameter's shape)."""
        self._check_name(name)
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise SparsenetsError(f"mask for {name!r} must be a torch.bool tensor, got {got}")
        if tuple(mask.shape) != self._shapes[name]:
            raise SparsenetsError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, expected {self._shapes[name]}"
            )
        if name in self._compact:
            index = mask_to_index(mask.to(self._device))
            self._masks[name] = index
            self._ever_active[name] = torch.unique(torch.cat([self._ever_active[name], index]))
        else:
            mask = mask.to(self._device, copy=True)  # a private copy: callers may edit theirs
            self._masks[name] = mask
            self._ever_active[name] |= mask
        self._invalidate(name)

    def set_index(self, name: str, index: torch.Tensor) -> None:
        """Replace the mask of ``name`` by the sorted flat positions ``index`` ``(nnz,)`` int64
        (validated: in range, strictly increasing). A compact layer builds nothing dense."""
        self._check_name(name)
        if not isinstance(index, torch.Tensor) or index.dtype != torch.int64 or index.dim() != 1:
            got = f"{index.dtype} {tuple(index.shape)}" if isinstance(index, torch.Tensor) else type(index).__name__
            raise SparsenetsError(f"index for {name!r} must be a 1-D torch.int64 tensor, got {got}")
        numel = self.numel(name)
        if index.numel() and (int(index[0]) < 0 or int(index[-1]) >= numel or bool((index.diff() <= 0).any())):
            raise SparsenetsError(f"index for {name!r} must be strictly increasing positions in [0, {numel})")
        if name not in self._compact:
            self.set(name, index_to_mask(index, self._shapes[name]))
            return
        index = index.to(self._device, copy=True)
        self._masks[name] = index
        ever = self._ever_active[name]
        self._ever_active[name] = merge(ever, difference(index, ever))
        self._invalidate(name)

    def to(self, device: torch.device | str) -> MaskStore:
        """Move every mask to ``device`` (in place); returns ``self``."""
        self._device = torch.device(device)
        self._masks = {n: m.to(self._device) for n, m in self._masks.items()}
        self._ever_active = {n: m.to(self._device) for n, m in self._ever_active.items()}
        self._inactive.clear()
        if self._expanded is not None:
            self._expanded.clear()
        return self

    # -- applying ----------------------------------------------------------------------------
    def inactive(self, name: str) -> torch.Tensor:
        """``~mask`` of ``name``, bool (cached until the mask changes). Dense layers only."""
        if name in self._compact:
            raise SparsenetsError(f"{name!r} is kept compact (sparse backend): it has no dense inactive set")
        cached = self._inactive.get(name)
        if cached is None:
            cached = self._inactive[name] = ~self[name]
        return cached

    def zero_inactive_(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Set ``tensor`` (the parameter's shape) to exactly 0 at the inactive positions of
        ``name``, in place, whatever it holds there: ``masked_fill``, not a multiplication by
        the mask (NaN · 0 is NaN, so one non-finite step would otherwise leak into inactive
        weights)."""
        return tensor.masked_fill_(self.inactive(name).to(tensor.device), 0)

    @torch.no_grad()
    def apply_(self, model: nn.Module) -> None:
        """Zero the weights of ``model`` at inactive positions (in place; dense layers only)."""
        self.apply_to_(dict(model.named_parameters()))

    @torch.no_grad()
    def apply_to_(self, params: Mapping[str, torch.Tensor]) -> None:
        """Zero ``params[name]`` at inactive positions for every dense-layout name (in place).

        Compact layers are skipped: their values exist at active positions only.
        """
        for name in self._masks:
            if name in self._compact:
                continue
            self.zero_inactive_(name, params[name])

    # -- measuring ---------------------------------------------------------------------------
    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{name: shape}`` of the masked parameters."""
        return dict(self._shapes)

    def nnz(self, name: str | None = None) -> int:
        """Active positions in one layer, or in all masked layers when ``name`` is None."""
        if name is not None:
            stored = self._stored(name)
            return stored.numel() if name in self._compact else int(torch.count_nonzero(stored))
        return sum(self.nnz(n) for n in self._masks)

    def numel(self, name: str | None = None) -> int:
        """Positions in one layer, or in all masked layers."""
        if name is not None:
            self._stored(name)
            return _numel(self._shapes[name])
        return sum(_numel(shape) for shape in self._shapes.values())

    def density(self, name: str | None = None) -> float:
        """nnz / numel of one layer or of all masked layers together."""
        return self.nnz(name) / self.numel(name)

    def ever_active(self, name: str) -> torch.Tensor:
        """Boolean tensor of the positions of ``name`` that have been active at any time."""
        ever = self._ever_active[name]
        return index_to_mask(ever, self._shapes[name]) if name in self._compact else ever

    def ever_index(self, name: str) -> torch.Tensor:
        """Sorted flat indices ``(n,)`` int64 of the positions of ``name`` ever active."""
        ever = self._ever_active[name]
        return ever if name in self._compact else mask_to_index(ever)

    def _ever_count(self, name: str) -> int:
        ever = self._ever_active[name]
        return ever.numel() if name in self._compact else int(torch.count_nonzero(ever))

    def itop_rate(self, name: str | None = None) -> float:
        """In-Time Over-Parameterization rate: fraction of positions ever active."""
        if name is not None:
            return self._ever_count(name) / self.numel(name)
        return sum(self._ever_count(n) for n in self._masks) / self.numel()

    def reset_ever_active(self) -> None:
        """Restart ITOP tracking from the current masks."""
        self._ever_active = {n: m.clone() for n, m in self._masks.items()}

    # -- persistence -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat ``{key: tensor}``: ``mask/<name>`` and ``ever_active/<name>`` (bool, dense
        layers) or ``mask_index/<name>`` and ``ever_active_index/<name>`` (int64 sorted flat
        indices, compact layers).

        Flat tensors only, so it can be written with ``safetensors`` or ``torch.save``.
        """
        state = {}
        for name in self._masks:
            suffix = "_index" if name in self._compact else ""
            state[f"mask{suffix}/{name}"] = self._masks[name].clone()
            state[f"ever_active{suffix}/{name}"] = self._ever_active[name].clone()
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore masks and ever-active record written by :meth:`state_dict` (validated).

        Either layout is accepted for any layer and converted to this store's layout.
        """
        found: dict[str, dict[str, torch.Tensor]] = {}
        unexpected, missing = [], []
        for key, value in state.items():
            kind, _, name = key.partition("/")
            if name not in self._shapes or kind not in _STATE_KINDS:
                unexpected.append(key)
            else:
                found.setdefault(name, {})[kind] = value
        for name in self._shapes:
            kinds = found.get(name, {})
            for base in ("mask", "ever_active"):
                if (base in kinds) == (f"{base}_index" in kinds):
                    missing.append(f"{base}/{name}")
        if missing or unexpected:
            raise SparsenetsError(
                f"mask state does not match the masked parameters "
                f"(missing: {sorted(missing)}, unexpected: {sorted(unexpected)})"
            )
        masks = {n: self._read(found[n], "mask", n) for n in self._shapes}
        for name, mask in masks.items():
            self.set(name, mask)
        for name in self._shapes:
            ever = self._read(found[name], "ever_active", name) | masks[name]
            self._ever_active[name] = mask_to_index(ever) if name in self._compact else ever

    def _read(self, kinds: Mapping[str, torch.Tensor], base: str, name: str) -> torch.Tensor:
        """A dense bool mask from a state entry in either layout."""
        if base in kinds:
            return kinds[base].to(device=self._device, dtype=torch.bool)
        index = kinds[f"{base}_index"].to(device=self._device, dtype=torch.int64)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.numel(name)):
            raise SparsenetsError(f"{base}_index/{name} holds positions outside the layer")
        return index_to_mask(index, self._shapes[name])


_STATE_KINDS = ("mask", "ever_active", "mask_index", "ever_active_index")


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def mask_to_index(mask: torch.Tensor) -> torch.Tensor:
    """Sorted flat indices ``(nnz,)`` int64 of the True positions of a bool tensor."""
    return mask.reshape(-1).nonzero().squeeze(1)


def index_to_mask(index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The bool tensor of ``shape`` that is True at the flat positions ``index``."""
    mask = torch.zeros(_numel(shape), dtype=torch.bool, device=index.device)
    mask[index] = True
    return mask.reshape(shape)
