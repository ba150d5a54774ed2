"""Pruning with one decoder block in memory (``prune-llm --low-memory``).

Sequential calibration only ever needs one block at a time, so the model never has to be in
memory whole. Here it is built as a skeleton (accelerate's ``init_empty_weights``: the blocks'
parameters on the ``meta`` device, buffers real), and only the parts outside the blocks
(embeddings, final norm, head) are read from the checkpoint. Each block is then read from the
checkpoint's safetensors when calibration reaches it (:class:`BlockStreamer`), pruned, run to
give the next block its inputs, written to its own safetensors shard of the output, and dropped
back to ``meta``. The output directory has the checkpoint's own tensor names, one shard per
block plus one for the rest, and a ``model.safetensors.index.json``: it loads with plain
``transformers.AutoModelForCausalLM.from_pretrained`` like a directory ``save_pretrained`` wrote.

Peak memory is the parts outside the blocks, one block, and the calibration activations (two
copies of ``(samples, seq_len, hidden)``), instead of the whole model next to them. The
masks are the same as in memory: the same blocks see the same inputs (tested).
"""

from __future__ import annotations

import ctypes
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import nn

from ..errors import SparsenetsError
from ..io import replace_dir, save_tensors, write_json
from .adapters import BlockInputs, DecoderAdapter, get_adapter, passthrough_forward

INDEX_FILE = "model.safetensors.index.json"
_WEIGHT_FILES = ("model.safetensors", INDEX_FILE, "pytorch_model.bin", "pytorch_model.bin.index.json")


class Checkpoint:
    """The tensors of a Hugging Face safetensors checkpoint (single file or sharded), read one
    at a time (memory-mapped, nothing else is loaded)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        single, index = self.directory / "model.safetensors", self.directory / INDEX_FILE
        if single.is_file():
            with safe_open(str(single), framework="pt") as handle:
                self.files = dict.fromkeys(handle.keys(), single)
        elif index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            self.files = {name: self.directory / file for name, file in weight_map.items()}
        else:
            raise SparsenetsError(
                f"low-memory pruning reads safetensors weights: {str(self.directory)!r} has no "
                f"model.safetensors or {INDEX_FILE}"
            )

    def keys(self) -> list[str]:
        return list(self.files)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """One tensor, as a new CPU tensor (cast to ``dtype`` when given)."""
        with safe_open(str(self.files[name]), framework="pt") as handle:
            tensor = handle.get_tensor(name)
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor


def _block_prefix(adapter: DecoderAdapter, index: int) -> str:
    return f"{adapter.block_name(index)}."


def build_skeleton(directory: str | Path, dtype: torch.dtype, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """The causal LM of ``directory`` with every decoder block's parameters on ``meta`` and
    everything else (embeddings, norms, head, buffers) loaded, on ``device``.

    Raises:
        SparsenetsError: not a safetensors checkpoint, or tensor names that do not match the model.
    """
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    checkpoint = Checkpoint(directory)
    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    adapter = get_adapter(model)
    outside = [k for k in checkpoint.keys() if not k.startswith(adapter.blocks_path + ".")]
    state = {name: checkpoint.get(name, dtype) for name in outside}
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected:
        raise SparsenetsError(
            f"{str(directory)!r}: checkpoint tensors {unexpected[:3]} are not parameters of "
            f"{type(model).__name__} (low-memory mode needs the names save_pretrained writes)"
        )
    model.tie_weights()
    meta = [n for n, p in model.named_parameters() if p.is_meta and not n.startswith(adapter.blocks_path + ".")]
    if meta:
        raise SparsenetsError(f"{str(directory)!r} lacks tensors for {meta[:3]} (outside the decoder blocks)")
    del missing
    device = torch.device(device)
    for tensor in (*model.parameters(), *model.buffers()):  # .to() refuses meta tensors: move the rest
        if not tensor.is_meta and tensor.device != device:
            tensor.data = tensor.data.to(device)
    return model.eval(), checkpoint


def _release_free_heap() -> None:
    """Hand freed heap memory back to the OS (glibc ``malloc_trim``; a no-op elsewhere), so that
    the blocks released one after another do not pile up as free-but-resident memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class BlockStreamer:
    """Loads decoder blocks from a checkpoint one at a time and writes them out when released.

    ``load(i, block)`` reads the tensors of block ``i`` (cast to ``dtype``) into ``block``;
    ``release(i, block)`` writes them, as they are then (pruned), to ``staging`` as shard
    ``block-<i>.safetensors`` (checkpoint names) and puts the block back on ``meta``. Zeros and
    sizes of what is written are counted (``written``), for ``sparsity.json``.
    """

    def __init__(self, checkpoint: Checkpoint, adapter: DecoderAdapter, dtype: torch.dtype,
                 device: str | torch.device, staging: Path | None):
        self.checkpoint, self.adapter, self.dtype = checkpoint, adapter, dtype
        self.device = torch.device(device)
        self.staging = staging
        self.shards: dict[str, str] = {}  # tensor name -> shard file name
        self.written: dict[str, tuple[int, int]] = {}  # tensor name -> (numel, zeros)

    def load(self, index: int, block: nn.Module) -> None:
        prefix = _block_prefix(self.adapter, index)
        state = {k[len(prefix):]: self.checkpoint.get(k, self.dtype).to(self.device)
                 for k in self.checkpoint.keys() if k.startswith(prefix)}
        if not state:
            raise SparsenetsError(f"the checkpoint has no tensors for decoder block {index} ({prefix}*)")
        missing, unexpected = block.load_state_dict(state, strict=False, assign=True)
        left = [n for n, p in block.named_parameters() if p.is_meta]
        if unexpected or left:
            raise SparsenetsError(f"decoder block {index}: checkpoint tensors do not match its parameters "
                                  f"(missing {left[:3]}, unexpected {unexpected[:3]})")
        del missing

    def release(self, index: int, block: nn.Module) -> None:
        prefix = _block_prefix(self.adapter, index)
        if self.staging is not None:
            tensors = {prefix + name: t.detach().to("cpu").contiguous() for name, t in block.state_dict().items()
                       if prefix + name in self.checkpoint.files}
            shard = f"block-{index:05d}.safetensors"
            save_tensors(self.staging / shard, tensors, metadata={"format": "pt"})
            for name, tensor in tensors.items():
                self.shards[name] = shard
                self.written[name] = (tensor.numel(), int((tensor == 0).sum()))
            del tensors
        block.to("meta")
        _release_free_heap()


def run_blocks(model: nn.Module, adapter: DecoderAdapter, batches: list[BlockInputs], load: Any) -> list[BlockInputs]:
    """``batches`` through every block (each loaded with ``load(i, block)`` and put back on
    ``meta``): what leaves the last block."""
    for index, block in enumerate(adapter.blocks(model)):
        load(index, block)
        with torch.no_grad():
            batches = [adapter.run_block(block, inputs) for inputs in batches]
        block.to("meta")
    return batches


def staged_perplexity(model: nn.Module, streamer: BlockStreamer, windows: torch.Tensor, batch_size: int = 4) -> float:
    """Perplexity of the pruned model whose blocks are in the staging shards, one block in memory.

    The windows' hidden states go through the blocks one block at a time; the model's own
    forward then turns the last block's output into logits (every block replaced by a
    passthrough, the last one returning the staged result), so the final norm and head are
    the model's, whatever the family.
    """
    import math

    from safetensors.torch import load_file

    from .perplexity import check_windows, logits_batch, next_token_nll

    check_windows(windows)
    adapter = streamer.adapter
    chunks = list(windows.long().split(logits_batch(model, windows.shape[1], batch_size)))
    batches = [adapter.capture_inputs(model, c.to(streamer.device), passthrough=True) for c in chunks]

    def load(index: int, block: nn.Module) -> None:
        prefix = _block_prefix(adapter, index)
        state = load_file(str(streamer.staging / f"block-{index:05d}.safetensors"))
        block.load_state_dict({k[len(prefix):]: v.to(streamer.device) for k, v in state.items()},
                              strict=False, assign=True)

    finals = run_blocks(model, adapter, batches, load)
    blocks = adapter.blocks(model)
    passthrough = passthrough_forward(model, blocks, chunks[0])
    total_nll, total_tokens = 0.0, 0
    for chunk, final in zip(chunks, finals, strict=True):
        for i, block in enumerate(blocks):  # the last block hands on the staged result, in the loop's form
            block.forward = ((lambda h, *a, _f=final.hidden, **k: passthrough(_f)) if i == len(blocks) - 1
                             else passthrough)
        try:
            with torch.no_grad():
                logits = model(input_ids=chunk.to(streamer.device), use_cache=False).logits
        finally:
            for block in blocks:
                del block.forward
        nll, count = next_token_nll(logits, chunk)
        total_nll += nll
        total_tokens += count
    return math.exp(total_nll / total_tokens)


def finish(directory: str | Path, model_dir: str | Path, streamer: BlockStreamer, record: dict[str, Any],
           mask_state: dict[str, torch.Tensor] | None, sparsity_file: str, mask_file: str) -> Path:
    """Write the output directory: the staged block shards, one shard of the tensors outside the
    blocks (copied from the checkpoint), the index, the model's config and every other file of
    ``model_dir`` (tokenizer, generation config), the masks and ``sparsity.json``; swapped in
    whole at the end (:func:`sparsenets.io.replace_dir`)."""
    directory, model_dir = Path(directory), Path(model_dir)
    checkpoint = streamer.checkpoint
    rest = {k: checkpoint.get(k, streamer.dtype) for k in checkpoint.keys() if k not in streamer.shards}
    weight_map = dict(streamer.shards)
    itemsize = torch.empty((), dtype=streamer.dtype).element_size()
    total = sum(t.numel() * t.element_size() for t in rest.values())
    total += sum(numel * itemsize for numel, _ in streamer.written.values())

    def fill(tmp: Path) -> None:
        for shard in sorted(set(streamer.shards.values())):
            shutil.copyfile(streamer.staging / shard, tmp / shard)
        save_tensors(tmp / "rest.safetensors", {k: v.contiguous() for k, v in rest.items()}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(rest, "rest.safetensors"))
        write_json(tmp / INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})
        for item in model_dir.iterdir():
            if item.is_file() and item.name not in (*_WEIGHT_FILES, sparsity_file, mask_file) \
                    and not item.name.endswith((".safetensors", ".bin")):
                shutil.copyfile(item, tmp / item.name)
        config = json.loads((tmp / "config.json").read_text())
        config["dtype"] = str(streamer.dtype).removeprefix("torch.")
        config.pop("torch_dtype", None)
        write_json(tmp / "config.json", config)
        if mask_state is not None:
            save_tensors(tmp / mask_file, mask_state)
        write_json(tmp / sparsity_file, record)

    directory.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(directory, fill)
    return directory


def summary(streamer: BlockStreamer, pruned: list[str], rest: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """``sparsity.json``'s ``summary`` from the counts of what was written (see
    :func:`.export.sparsity_summary`, which computes the same from a model in memory)."""
    n_params = sum(streamer.written[n][0] for n in pruned)
    n_zero = sum(streamer.written[n][1] for n in pruned)
    every = {**streamer.written, **rest}
    total, total_zero = sum(v[0] for v in every.values()), sum(v[1] for v in every.values())
    return {"pruned_layers": len(pruned), "prunable_params": n_params, "prunable_zeros": n_zero,
            "prunable_sparsity": n_zero / max(n_params, 1), "model_params": total,
            "model_sparsity": total_zero / max(total, 1)}


def outside_counts(streamer: BlockStreamer) -> dict[str, tuple[int, int]]:
    """(numel, zeros) of every checkpoint tensor outside the blocks."""
    counts = {}
    for name in streamer.checkpoint.keys():
        if name not in streamer.written:
            t = streamer.checkpoint.get(name)
            counts[name] = (t.numel(), int((t == 0).sum()))
    return counts


def staging_dir(out: Path | None) -> Path:
    """A scratch directory for block shards, beside ``out`` (same file system) or in the temp dir."""
    parent = out.parent if out is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name if out is not None else 'sparsenets'}.blocks-", dir=parent))
