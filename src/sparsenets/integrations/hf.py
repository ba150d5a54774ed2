"""Sparse training inside the Hugging Face ``Trainer``: ``SparsityCallback``.

Needs ``transformers`` (``pip install 'sparsenets[hf]'``)::

    from sparsenets.integrations.hf import SparsityCallback

    trainer = Trainer(model=model, args=args, train_dataset=data,
                      callbacks=[SparsityCallback(density=0.1, method="rigl", update_every=100)])
    trainer.train()
    callback.sparsifier.masks      # the MaskStore

The callback builds a :class:`~sparsenets.dst.DynamicSparsity` when training begins, around the
optimizer the Trainer made (or was given), with ``total_steps`` = the Trainer's planned
optimizer steps (``state.max_steps``). Around every optimizer step it runs the sparsifier's two
halves: ``on_pre_optimizer_step`` (after the Trainer's gradient clipping) masks the gradients and
captures what the method needs; ``on_optimizer_step`` re-applies the masks and updates the
topology when due — unless the step was skipped (mixed-precision overflow), which then counts for
nothing. Gradient accumulation is the Trainer's: the halves run once per optimizer step.

Checkpoints: the sparsifier's state is saved as ``sparsifier.pt`` in every ``checkpoint-N``
directory and loaded back when the Trainer resumes from one (the masks come from it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import SparsenetsError
from ..io import atomic_path
from . import build_sparsifier, callback_options

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "sparsenets.integrations.hf needs transformers: pip install 'sparsenets[hf]'"
    ) from error

log = logging.getLogger(__name__)

#: The file the sparsifier's state is saved to inside each Trainer checkpoint directory.
STATE_FILE = "sparsifier.pt"


def _inner(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer`` (or the optimizer itself)."""
    from accelerate.optimizer import AcceleratedOptimizer

    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return optimizer


class SparsityCallback(TrainerCallback):
    """Dynamic sparse training (or gradual pruning) inside ``transformers.Trainer``.

    Args:
        **options: what :class:`~sparsenets.dst.DynamicSparsity` takes besides the model, the
            optimizer and ``total_steps``: ``density``, ``method``, ``distribution``, ``seed``,
            ``include``/``exclude``, method options such as ``update_every``. Backend: masked.

    Attributes:
        sparsifier: the :class:`~sparsenets.dst.DynamicSparsity`, once training has begun.
    """

    def __init__(self, **options: Any):
        self.options = callback_options(options)
        self.sparsifier = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise SparsenetsError("SparsityCallback needs the Trainer's model and optimizer at train begin")
        resume = None
        if state.global_step > 0:
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE
            if path.is_file():
                resume = torch.load(path, weights_only=True)
                log.info("resuming the sparsifier from %s", path)
            else:
                log.warning("resuming at step %d without %s: masks start afresh", state.global_step, path)
        self.sparsifier = build_sparsifier(model, _inner(optimizer), state.max_steps, self.options, resume)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.sparsifier.before_optimizer_step()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        skipped = bool(getattr(optimizer, "step_was_skipped", False))
        self.sparsifier.after_optimizer_step(skipped=skipped)

    def on_save(self, args, state, control, **kwargs):
        if self.sparsifier is None or not state.is_world_process_zero:
            return
        directory = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / STATE_FILE) as tmp:
            torch.save(self.sparsifier.state_dict(), tmp)

    def on_train_end(self, args, state, control, **kwargs):
        if self.sparsifier is not None:
            self.sparsifier.close()
