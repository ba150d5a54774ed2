"""Sparse training inside Lightning: ``SparsityCallback``.

Needs ``lightning`` (``pip install 'sparsenets[lightning]'``)::

    from sparsenets.integrations.lightning import SparsityCallback

    callback = SparsityCallback(density=0.1, method="rigl", update_every=100)
    lightning.Trainer(max_epochs=10, callbacks=[callback]).fit(module, loader)
    callback.sparsifier.masks      # the MaskStore

When fitting starts the callback builds a :class:`~sparsenets.dst.DynamicSparsity` around the
module's (single) optimizer, with ``total_steps`` = the trainer's planned optimizer steps
(``trainer.estimated_stepping_batches``). The sparsifier's first half runs in
``on_before_optimizer_step`` (after backward, before Lightning's gradient clipping, so clipping
sees the masked gradient); the second half runs as a step post-hook of the optimizer, i.e. only
when the optimizer really stepped: a step that mixed precision skipped never reaches it.
Gradient accumulation is Lightning's (``accumulate_grad_batches``): once per optimizer step.

Checkpoints: the sparsifier's state is the callback's ``state_dict`` (saved in Lightning
checkpoints); fitting from a checkpoint takes the masks from it.
"""

from __future__ import annotations

from typing import Any

from ..errors import SparsenetsError
from . import build_sparsifier, callback_options

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - depends on the environment
    try:
        import pytorch_lightning as pl  # the standalone package
    except ImportError as error:
        raise ImportError(
            "sparsenets.integrations.lightning needs lightning: pip install 'sparsenets[lightning]'"
        ) from error


class SparsityCallback(pl.Callback):
    """Dynamic sparse training (or gradual pruning) inside a Lightning ``Trainer``.

    Args:
        **options: what :class:`~sparsenets.dst.DynamicSparsity` takes besides the model, the
            optimizer and ``total_steps``: ``density``, ``method``, ``distribution``, ``seed``,
            ``include``/``exclude``, method options such as ``update_every``. Backend: masked.

    Attributes:
        sparsifier: the :class:`~sparsenets.dst.DynamicSparsity`, once fitting has started.
    """

    def __init__(self, **options: Any):
        self.options = callback_options(options)
        self.sparsifier = None
        self._resume: dict[str, Any] | None = None
        self._handle = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization or len(trainer.optimizers) != 1:
            raise SparsenetsError(
                "SparsityCallback needs automatic optimization with one optimizer; with manual "
                "optimization call sparsifier.step() (or use sparsifier.wrap()) in training_step"
            )
        optimizer = trainer.optimizers[0]
        self.sparsifier = build_sparsifier(
            pl_module, optimizer, trainer.estimated_stepping_batches, self.options, self._resume
        )
        self._resume = None
        self._handle = optimizer.register_step_post_hook(self._after_step)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.sparsifier.before_optimizer_step()

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.sparsifier.after_optimizer_step()

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        if self.sparsifier is not None:
            self.sparsifier.close()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.sparsifier is None else {"sparsifier": self.sparsifier.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = state_dict.get("sparsifier")
