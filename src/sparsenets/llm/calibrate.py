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

import copy
import logging
from collections.abc import Callable
from typing import Any, Protocol

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
    calib_dtype: torch.dtype | None = None,
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
        calib_dtype: run the calibration forwards in this dtype (e.g. ``torch.bfloat16``, several
            times faster on CPUs with bf16 matrix units) on a copy of each block, while
            ``on_block`` prunes the block itself in its own dtype; ``None``: the block's dtype.
            Statistics accumulate in float32/float64 either way.
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
    device = model.get_input_embeddings().weight.device
    batches: list[BlockInputs] = []
    by_shape: dict[tuple[int, ...], BlockInputs] = {}  # one full capture of the per-block kwargs per shape
    for chunk in calibration.split(batch_size):
        chunk = chunk.to(device)
        # passthrough: no block runs while the arguments are captured (a full-precision forward
        # through every block would cost more than a quarter of a calibration pass)
        inputs = adapter.capture_inputs(model, chunk, like=by_shape.get(tuple(chunk.shape)), passthrough=True)
        by_shape.setdefault(tuple(chunk.shape), inputs)
        batches.append(inputs)
    if calib_dtype is not None:
        cast = {id(b.kwargs): _cast_kwargs(b.kwargs, calib_dtype) for b in by_shape.values()}
        batches = [BlockInputs(b.hidden.to(calib_dtype), cast.get(id(b.kwargs)) or _cast_kwargs(b.kwargs, calib_dtype),
                               b.index) for b in batches]
    for index, block in enumerate(tqdm(blocks, desc="calibrating blocks", disable=not progress)):
        if loader is not None:
            loader.load(index, block)
        linears = adapter.linears(block, index)
        stats = {name: stats_factory(layer) for name, layer in linears.items()}
        seen: list[tuple[InputStats, torch.Tensor]] = []
        runner = _forward_copy(block, calib_dtype)
        handles = [
            runner.get_submodule(name).register_forward_pre_hook(_record_hook(stats[name], seen, len(linears)))
            for name in linears
        ]
        try:
            for inputs in batches:
                try:
                    adapter.run_block(runner, inputs)
                except _InputsRecorded:
                    pass  # every Linear has its input: the rest of the block's forward is not needed
                _accumulate(seen)
                seen.clear()
        finally:
            for handle in handles:
                handle.remove()
        on_block(index, block, stats)
        runner = _forward_copy(block, calib_dtype)  # the pruned block, in the calibration dtype
        batches = [adapter.run_block(runner, inputs) for inputs in batches]
        del runner
        if loader is not None:
            loader.release(index, block)
        log.debug("block %d done: %d mini-batches of %s", index, len(batches), tuple(batches[0].hidden.shape))


def _forward_copy(block: nn.Module, dtype: torch.dtype | None) -> nn.Module:
    """``block`` itself, or a copy of it in ``dtype`` for the calibration forwards."""
    if dtype is None or all(p.dtype == dtype for p in block.parameters()):
        return block
    return copy.deepcopy(block).to(dtype)


def _cast_kwargs(kwargs: tuple[dict[str, Any], ...], dtype: torch.dtype) -> tuple[dict[str, Any], ...]:
    """Every floating tensor in the blocks' captured arguments cast to ``dtype`` (rotary tables,
    float attention masks), tuples and lists included."""
    def cast(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(dtype) if value.is_floating_point() else value
        if isinstance(value, (tuple, list)):
            return type(value)(cast(v) for v in value)
        return value

    return tuple({k: cast(v) for k, v in call.items()} for call in kwargs)


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
        accumulator.add_input(shared[key], x)

