"""``sparsifier.wrap(optimizer)``: an optimizer whose ``step()`` is a whole sparse step.

Frameworks that own the optimizer step (``torch.amp.GradScaler``, LR schedulers, ``accelerate``,
the Hugging Face ``Trainer``, Lightning) get the sparsifier by being handed this optimizer. Its
``step(closure=None)`` evaluates the closure (if any), then runs the sparsifier's first half, the
wrapped optimizer's step and the second half. A step the framework does not take (the
``GradScaler`` skips ``optimizer.step()`` when it finds inf/NaN gradients) never reaches it, so it
counts for nothing; with gradient accumulation it runs once per optimizer step, so topology
updates count optimizer steps, not micro-batches.

It *is* a ``torch.optim.Optimizer`` (``isinstance`` checks pass, step hooks work) sharing the
wrapped optimizer's ``param_groups`` and ``state`` objects, so schedulers and gradient unscaling
act on the real optimizer. ``state_dict()`` is ``{"optimizer": ..., "sparsifier": ...}``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch

from ..errors import SparsenetsError


class _Sparsifier(Protocol):
    optimizer: torch.optim.Optimizer

    def step(self, closure: Callable[[], Any] | None = None) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class SparseOptimizer(torch.optim.Optimizer):
    """The optimizer of a sparsifier, with the sparse step inside ``step()`` (see the module).

    Args:
        sparsifier: the :class:`~sparsenets.dst.DynamicSparsity` built around the optimizer.
    """

    def __init__(self, sparsifier: _Sparsifier):
        # Not Optimizer.__init__: it would build new param groups. The state of the base class
        # is set up by hand, and param_groups / state are the wrapped optimizer's own objects.
        self.sparsifier = sparsifier
        self.optimizer = sparsifier.optimizer
        self._optimizer_step_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_step_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: OrderedDict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: OrderedDict = OrderedDict()
        self._patch_step_function()

    # the wrapped optimizer's objects, never copies
    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self.optimizer.defaults = defaults

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One sparse step: closure (if any), mask gradients, optimizer step, masks, topology."""
        return self.sparsifier.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        """``{"optimizer": the wrapped optimizer's state_dict, "sparsifier": the sparsifier's}``."""
        return {"optimizer": self.optimizer.state_dict(), "sparsifier": self.sparsifier.state_dict()}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:  # type: ignore[override]
        """Restore what :meth:`state_dict` wrote (load the model's weights first)."""
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"optimizer", "sparsifier"}:
            keys = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise SparsenetsError(
                f"a SparseOptimizer state has the keys 'optimizer' and 'sparsifier', got {keys}"
            )
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.sparsifier.load_state_dict(state_dict["sparsifier"])

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"SparseOptimizer({self.optimizer.__class__.__name__}, {self.sparsifier!r})"
