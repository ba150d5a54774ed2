"""Where a causal LM keeps its decoder blocks and how to feed them, found from the model itself.

Every pruning method works block by block: it needs the list of decoder blocks, the prunable
layers inside a block, the hidden states that enter block 0 and the arguments *each* block is
called with (attention mask of its layer type, position ids, rotary ``position_embeddings``,
cache position, ...). They differ between blocks in models that mix layer types
(sliding-window layers beside global ones get their own attention mask, in some families
their own rotary table), so they are captured per block, by running the model's own forward
with a pre-hook on every block and stopping at the last one (a hook that raises): the model
computes embeddings, masks and rotary tables itself; the adapter only says where things are.

Discovery (:func:`get_adapter`), for any Hugging Face decoder:

* **blocks**: the ``nn.ModuleList`` of identical modules that holds the prunable layers,
  preferring one whose class the model names in ``_no_split_modules`` (the HF class's own
  "this is one block" metadata), then the longest. :data:`FAMILY_BLOCKS` names the path for
  known families as an override; it is never required.
* **prunable layers**: every ``nn.Linear`` inside the blocks, and every HF ``Conv1D`` (GPT-2
  style, weight stored transposed ``(in, out)``; :func:`weight_matrix` gives the ``(out, in)``
  view the methods work on), narrowed by ``targets`` / ``ignore`` regular expressions on the
  full module name (``re.search``, llm-compressor style).
* **embeddings** (never pruned): every ``nn.Embedding`` outside the blocks. A layer whose weight
  shares storage with an embedding or with the model's output embeddings (a tied head) is never
  prunable, found by storage, not by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import SparsenetsError

#: Optional block paths of known families (attribute names only: discovery finds the same).
FAMILY_BLOCKS = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                     "phi3", "olmo2", "granite"), "model.layers"),
    "opt": "model.decoder.layers",
    "gpt2": "transformer.h",
    "falcon": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent: only nn.Linear exists
        return None
    return Conv1D


def is_prunable(module: nn.Module) -> bool:
    """``nn.Linear`` or HF ``Conv1D``."""
    conv = _conv1d_type()
    return isinstance(module, nn.Linear) or (conv is not None and isinstance(module, conv))


def is_transposed(layer: nn.Module) -> bool:
    """Whether ``layer.weight`` is stored ``(in, out)`` (HF ``Conv1D``)."""
    return not isinstance(layer, nn.Linear)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as ``(out, in)``: ``weight.data`` for ``nn.Linear``, its transposed
    view for ``Conv1D`` (in-place changes reach the parameter either way)."""
    weight = layer.weight.data
    return weight.t() if is_transposed(layer) else weight


def in_features(layer: nn.Module) -> int:
    """Input width of a prunable layer."""
    return int(weight_matrix(layer).shape[1])


def to_parameter_layout(layer: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """A ``(out, in)`` mask in the layout of ``layer.weight`` (transposed for ``Conv1D``)."""
    return mask.t().contiguous() if is_transposed(layer) else mask


def _storage(t: torch.Tensor) -> int:
    """Address of the tensor's first element: equal for tied weights (one tensor under two
    names), different for separate parameters even when a loader maps them from one file."""
    return t.data_ptr()


class _Captured(Exception):
    """Raised by the capture hook to stop the forward pass once it has what it needs."""


@dataclass(frozen=True)
class BlockInputs:
    """What enters decoder block ``index`` for one calibration mini-batch.

    Attributes:
        hidden: (B, T, hidden_size) float hidden states.
        kwargs: per block, the keyword arguments of its call (attention mask of its layer type,
            position ids, rotary ``position_embeddings`` (cos, sin) each (B, T, head_dim), ...).
        index: the block these hidden states enter next.
    """

    hidden: torch.Tensor
    kwargs: tuple[dict[str, Any], ...]
    index: int = 0


@dataclass(frozen=True)
class DecoderAdapter:
    """Where a model keeps its decoder blocks and embeddings (attribute paths from the model),
    and which layers inside the blocks are pruned."""

    family: str
    blocks_path: str
    embedding_paths: tuple[str, ...]
    targets: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    excluded: frozenset[str] = field(default_factory=frozenset)  # tied to an embedding (by storage)

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return model.get_submodule(self.blocks_path)

    def block_name(self, index: int) -> str:
        """Fully qualified name of block ``index`` (e.g. ``model.layers.3``)."""
        return f"{self.blocks_path}.{index}"

    def embeddings(self, model: nn.Module) -> dict[str, nn.Module]:
        """The embedding modules (never pruned), by fully qualified name."""
        return {path: model.get_submodule(path) for path in self.embedding_paths}

    def selected(self, name: str) -> bool:
        """Whether the layer of fully qualified ``name`` is pruned under targets / ignore."""
        if name in self.excluded:
            return False
        if self.targets and not any(re.search(p, name) for p in self.targets):
            return False
        return not any(re.search(p, name) for p in self.ignore)

    def linears(self, block: nn.Module, index: int | None = None) -> dict[str, nn.Module]:
        """Prunable layers of a block (``nn.Linear`` / ``Conv1D``), by name relative to the block.

        With ``index`` (the block's position) the ``targets`` / ``ignore`` patterns and tied
        layers are applied to the full names; without it every such layer is listed.
        """
        found = {name: m for name, m in block.named_modules() if is_prunable(m)}
        if index is None:
            return found
        prefix = self.block_name(index)
        return {name: m for name, m in found.items() if self.selected(f"{prefix}.{name}")}

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Module]:
        """Every pruned layer of the model, by fully qualified name (never embeddings or a head)."""
        out: dict[str, nn.Module] = {}
        for i, block in enumerate(self.blocks(model)):
            for name, layer in self.linears(block, i).items():
                out[f"{self.block_name(i)}.{name}"] = layer
        return out

    @torch.no_grad()
    def capture_inputs(self, model: nn.Module, input_ids: torch.Tensor, like: BlockInputs | None = None,
                       *, passthrough: bool = False) -> BlockInputs:
        """The inputs of block 0 and the call kwargs of every block for ``input_ids``.

        Args:
            model: a causal LM of this family.
            input_ids: (B, T) int64 token ids.
            like: inputs already captured for a batch of the same shape: its per-block kwargs are
                reused (with no padding the masks, positions and rotary tables depend on the
                shape only) and the forward stops at block 0.
            passthrough: no block runs: each returns its input hidden states unchanged while
                its arguments are recorded (they are computed by the model before its block
                loop, from the batch shape, not from what the blocks return), so blocks whose
                weights are not in memory can be captured (``--low-memory``).
        """
        blocks = self.blocks(model)
        if like is not None and like.hidden.shape[:2] != input_ids.shape:
            raise SparsenetsError(f"inputs of shape {tuple(like.hidden.shape[:2])} reused for a batch {tuple(input_ids.shape)}")
        last = 0 if like is not None else len(blocks) - 1
        hidden: list[torch.Tensor] = []
        kwargs: list[dict[str, Any]] = []

        def hook(index):
            def record(_module, args, call_kwargs):
                call_kwargs = dict(call_kwargs)
                state = args[0] if args else call_kwargs.pop("hidden_states")
                if index == 0:
                    hidden.append(state)
                call_kwargs = {k: v for k, v in call_kwargs.items() if k not in _CACHE_ARGUMENTS}
                if "use_cache" in call_kwargs:
                    call_kwargs["use_cache"] = False
                if len(args) > 1:  # replayed positionally, as the model called the block
                    call_kwargs[_POSITIONAL] = tuple(None if _is_cache(a) else a for a in args[1:])
                kwargs.append(call_kwargs)
                if index == last:
                    raise _Captured
            return record

        forward = passthrough_forward(model, blocks, input_ids) if passthrough else None
        handles = [block.register_forward_pre_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks[: last + 1])]
        if forward is not None:
            for block in blocks:
                block.forward = forward
        try:
            model(input_ids=input_ids, use_cache=False)
        except _Captured:
            per_block = like.kwargs if like is not None else tuple(kwargs)
            return BlockInputs(hidden[0], per_block, 0)
        finally:
            for handle in handles:
                handle.remove()
            if passthrough:
                for block in blocks:
                    del block.forward
        raise SparsenetsError(f"{self.family} model never reached its decoder block {last}")

    @staticmethod
    def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
        """Call block ``inputs.index`` with its own kwargs; returns what enters the next block."""
        call = dict(inputs.kwargs[inputs.index])
        extra = call.pop(_POSITIONAL, ())
        out = block(inputs.hidden, *extra, **call)
        hidden = out[0] if isinstance(out, tuple) else out
        return BlockInputs(hidden, inputs.kwargs, inputs.index + 1)


def _passthrough(hidden_states: torch.Tensor, *_args: Any, **_kwargs: Any) -> torch.Tensor:
    """A block's forward during a passthrough capture: its input, unchanged."""
    return hidden_states


def _passthrough_tuple(hidden_states: torch.Tensor, *_args: Any, **_kwargs: Any) -> tuple[torch.Tensor]:
    """The same for families whose blocks return a tuple ``(hidden_states, ...)``."""
    return (hidden_states,)


@torch.no_grad()
def passthrough_forward(model: nn.Module, blocks: nn.ModuleList, input_ids: torch.Tensor):
    """The forward that makes every block return its input unchanged *in the form the model's
    block loop expects* (a tensor, or a tuple it takes ``[0]`` of), found once per model by
    trying the tensor form: if the hidden states entering the second block lose their shape, the
    loop indexes the block output, and the tuple form is used."""
    cached = getattr(model, "_sparsenets_passthrough", None)
    if cached is not None:
        return cached
    forward = _passthrough
    if len(blocks) > 1:
        shapes: list[torch.Size] = []

        def record(_module, args, kwargs):
            state = args[0] if args else kwargs.get("hidden_states")
            shapes.append(state.shape)
            if len(shapes) == 2:
                raise _Captured

        handles = [b.register_forward_pre_hook(record, with_kwargs=True) for b in blocks[:2]]
        for block in blocks:
            block.forward = _passthrough
        try:
            model(input_ids=input_ids[:1, :2], use_cache=False)
        except _Captured:
            pass
        except (IndexError, RuntimeError, TypeError, ValueError):
            shapes = []
        finally:
            for handle in handles:
                handle.remove()
            for block in blocks:
                del block.forward
        if len(shapes) != 2 or shapes[0] != shapes[1]:
            forward = _passthrough_tuple
    model._sparsenets_passthrough = forward
    return forward


_POSITIONAL = "__positional__"  # key of a block's positional arguments after the hidden states
_CACHE_ARGUMENTS = ("past_key_values", "past_key_value", "layer_past")


def _is_cache(value: Any) -> bool:
    return type(value).__name__.endswith("Cache")


def find_blocks_path(model: nn.Module) -> str:
    """Path of the decoder block list: an ``nn.ModuleList`` of modules of one class holding
    prunable layers; a class named in the model's ``_no_split_modules`` first, then the longest
    list, then the first in module order."""
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    best: tuple[bool, int, int] | None = None
    path = None
    for order, (name, module) in enumerate(model.named_modules()):
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        if not any(is_prunable(m) for m in module[0].modules()):
            continue
        key = (type(module[0]).__name__ in no_split, len(module), -order)
        if best is None or key > best:
            best, path = key, name
    if path is None:
        raise SparsenetsError(
            f"{type(model).__name__}: no list of decoder blocks with Linear layers found "
            "(expected an nn.ModuleList of identical blocks)"
        )
    return path


def get_adapter(
    model: nn.Module, *, targets: str | list[str] | tuple[str, ...] | None = None,
    ignore: str | list[str] | tuple[str, ...] | None = None,
) -> DecoderAdapter:
    """The adapter of a causal LM: its decoder blocks (:data:`FAMILY_BLOCKS` when the family is
    known and the path exists, else :func:`find_blocks_path`), its embeddings, and the layers
    pruned (``targets`` / ``ignore``: regular expressions searched in full module names).

    Raises:
        SparsenetsError: no block list, a bad pattern, or nothing left to prune.
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__)
    path = FAMILY_BLOCKS.get(model_type)
    try:
        if path is None or not isinstance(model.get_submodule(path), nn.ModuleList):
            path = find_blocks_path(model)
    except AttributeError:
        path = find_blocks_path(model)
    as_tuple = lambda v: () if v is None else ((v,) if isinstance(v, str) else tuple(v))  # noqa: E731
    targets_t, ignore_t = as_tuple(targets), as_tuple(ignore)
    for pattern in (*targets_t, *ignore_t):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise SparsenetsError(f"bad layer pattern {pattern!r}: {exc}") from None
    embeddings = tuple(
        name for name, m in model.named_modules()
        if isinstance(m, nn.Embedding) and not name.startswith(path + ".")
    )
    shared = {_storage(model.get_submodule(n).weight) for n in embeddings}
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        shared.add(_storage(head.weight))
    blocks = model.get_submodule(path)
    excluded = frozenset(
        f"{path}.{i}.{name}"
        for i, block in enumerate(blocks)
        for name, m in block.named_modules()
        if is_prunable(m) and _storage(m.weight) in shared
    )
    adapter = DecoderAdapter(model_type, path, embeddings, targets_t, ignore_t, excluded)
    if (targets_t or ignore_t) and not adapter.prunable_linears(model):
        raise SparsenetsError(
            f"targets {list(targets_t)} / ignore {list(ignore_t)} leave no layer to prune in {path}"
        )
    return adapter
