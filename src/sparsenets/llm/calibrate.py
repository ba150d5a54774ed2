"""Sequential layer-wise calibration: feed a calibration set block by block.

The calibration token ids enter the model once; the hidden states in front of block 0 are
captured (see :mod:`.adapters`). Then, for each decoder block in order:

1. a forward pass of every mini-batch through the block, with input statistics accumulated on
   each prunable Linear (forward pre-hooks, removed afterwards); the pass stops as soon as the
   last Linear has received its input (its own matmul and what follows are not needed);
2. ``on_block(index, block, stats)`` (e.g. pruning the block with those statistics);
3. a second forward pass through the (now pruned) block, whose outputs are the next block's inputs.

So every block is calibrated on activations that flowed through the *already pruned* earlier
blocks (as in SparseGPT and Wanda), and only one block's activations are held at a time:
memory is n_samples × seq_len × hidden_size floats, independent of depth.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import SparsenetsError
from .adapters import BlockInputs, DecoderAdapter, get_adapter
from .stats import InputStats

log = logging.getLogger(__name__)

StatsFactory = Callable[[nn.Linear], InputStats]
BlockCallback = Callable[[int, nn.Module, dict[str, InputStats]], None]


def check_calibration(calibration: torch.Tensor) -> torch.Tensor:
    """Validate calibration token ids: a (n_samples, seq_len) integer tensor."""
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 2 or calibration.is_floating_point():
        shape = tuple(calibration.shape) if isinstance(calibration, torch.Tensor) else type(calibration).__name__
        raise SparsenetsError(f"calibration must be a (n_samples, seq_len) integer tensor of token ids, got {shape}")
    if calibration.shape[0] == 0 or calibration.shape[1] == 0:
        raise SparsenetsError(f"calibration is empty: shape {tuple(calibration.shape)}")
    return calibration.long()


@torch.no_grad()
def sequential_calibration(
    model: nn.Module,
    calibration: torch.Tensor | None,
    *,
    stats_factory: StatsFactory | None,
    on_block: BlockCallback,
    batch_size: int = 8,
    adapter: DecoderAdapter | None = None,
    progress: bool = True,
    loader: BlockLoader | None = None,
) -> None:
    """Run the calibration set through the decoder blocks one at a time.

    Args:
        model: a Hugging Face causal LM supported by :func:`.adapters.get_adapter`.
        calibration: (n_samples, seq_len) int64 token ids.
        stats_factory: builds one accumulator per prunable Linear (``None``: no statistics, and
            the calibration data is not run at all; ``on_block`` gets empty dicts).
        on_block: called as ``on_block(index, block, stats_by_linear_name)`` after statistics of
            block ``index`` are gathered and before its outputs are computed.
        batch_size: calibration sequences per forward call.
        adapter: model-family adapter (default: chosen from ``model.config``).
        progress: show a tqdm bar over blocks.
        loader: for a model whose blocks are not in memory (``--low-memory``): block ``i`` is
            ``loader.load(i, block)``-ed before it is used and ``loader.release(i, block)``-d
            once its outputs are computed; the block inputs are then captured without running
            any block (see :meth:`.adapters.DecoderAdapter.capture_inputs`).
    """
    adapter = adapter or get_adapter(model)
    blocks = adapter.blocks(model)
    if stats_factory is None:
        for index, block in enumerate(blocks):
            if loader is not None:
                loader.load(index, block)
            on_block(index, block, {})
            if loader is not None:
                loader.release(index, block)
        return
    calibration = check_calibration(calibration)
    device = next(model.parameters()).device
    batches: list[BlockInputs] = []
    by_shape: dict[tuple[int, ...], BlockInputs] = {}  # one full capture of the per-block kwargs per shape
    for chunk in calibration.split(batch_size):
        chunk = chunk.to(device)
        inputs = adapter.capture_inputs(model, chunk, like=by_shape.get(tuple(chunk.shape)),
                                        passthrough=loader is not None)
        by_shape.setdefault(tuple(chunk.shape), inputs)
        batches.append(inputs)
    for index, block in enumerate(tqdm(blocks, desc="calibrating blocks", disable=not progress)):
        if loader is not None:
            loader.load(index, block)
        linears = adapter.linears(block, index)
        stats = {name: stats_factory(layer) for name, layer in linears.items()}
        seen: list[tuple[InputStats, torch.Tensor]] = []
        handles = [
            layer.register_forward_pre_hook(_record_hook(stats[name], seen, len(linears)))
            for name, layer in linears.items()
        ]
        try:
            for inputs in batches:
                try:
                    adapter.run_block(block, inputs)
                except _InputsRecorded:
                    pass  # every Linear has its input: the rest of the block's forward is not needed
                _accumulate(seen)
                seen.clear()
        finally:
            for handle in handles:
                handle.remove()
        on_block(index, block, stats)
        batches = [adapter.run_block(block, inputs) for inputs in batches]
        if loader is not None:
            loader.release(index, block)
        log.debug("block %d done: %d mini-batches of %s", index, len(batches), tuple(batches[0].hidden.shape))


class BlockLoader(Protocol):
    """Brings decoder blocks into memory one at a time (see :mod:`.lowmem`)."""

    def load(self, index: int, block: nn.Module) -> None: ...

    def release(self, index: int, block: nn.Module) -> None: ...


class _InputsRecorded(Exception):
    """Raised by the last Linear's pre-hook of a statistics pass to skip the rest of the block."""


def _record_hook(accumulator: InputStats, seen: list[tuple[InputStats, torch.Tensor]], n_linears: int):
    def hook(_module, args):
        seen.append((accumulator, args[0]))
        if len({id(acc) for acc, _ in seen}) == n_linears:
            raise _InputsRecorded

    return hook


def _accumulate(seen: list[tuple[InputStats, torch.Tensor]]) -> None:
    """Feed one block forward's recorded inputs to their accumulators.

    Layers given the very same input tensor (q/k/v, gate/up) by accumulators of the same type
    share one ``batch_statistic`` computation; other accumulators get ``update(x)``.
    """
    shared: dict[tuple[int, type], torch.Tensor] = {}
    for accumulator, x in seen:
        if not hasattr(accumulator, "batch_statistic"):
            accumulator.update(x)
            continue
        key = (id(x), type(accumulator))
        if key not in shared:
            shared[key] = accumulator.batch_statistic(x)
        accumulator.add(shared[key], x.numel() // x.shape[-1])

