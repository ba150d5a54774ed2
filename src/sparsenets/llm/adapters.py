"""Model-family knowledge, in one place: where the decoder blocks are and how to feed them.

Every pruning method works block by block: it needs the list of decoder blocks, the prunable
Linear layers inside a block, the hidden states that enter block 0 and the keyword arguments
*each* block is called with (attention mask, position ids, rotary ``position_embeddings``). The
kwargs differ between blocks in models that mix layer types (sliding-window layers beside global
ones get their own attention mask, in some families their own rotary table), so they are
captured per block, by running the model's own forward with a pre-hook on every block and
stopping at the last one (a hook that raises): the model computes embeddings, masks and rotary
tables itself; the adapter only says where things are.

Supported families (by ``config.model_type``):

* LLaMA family (``llama``, ``mistral``, ``qwen2``, ``qwen3``): blocks at ``model.model.layers``,
  token embeddings ``model.model.embed_tokens``; rotary embeddings are computed once per forward
  by ``model.model.rotary_emb`` and passed to each block as ``position_embeddings``.
* OPT (``opt``): blocks at ``model.model.decoder.layers``, embeddings ``embed_tokens`` and the
  learned ``embed_positions``.

Embeddings and ``lm_head`` are never prunable (they are tied in many models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import SparsenetsError

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
OPT_FAMILY = ("opt",)


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
    """Where a family keeps its decoder blocks and embeddings (attribute paths from the model)."""

    family: str
    blocks_path: str
    embedding_paths: tuple[str, ...]

    def blocks(self, model: nn.Module) -> nn.ModuleList:
        """The decoder blocks, in order."""
        return model.get_submodule(self.blocks_path)

    def block_name(self, index: int) -> str:
        """Fully qualified name of block ``index`` (e.g. ``model.layers.3``)."""
        return f"{self.blocks_path}.{index}"

    def embeddings(self, model: nn.Module) -> dict[str, nn.Module]:
        """The embedding modules (never pruned), by fully qualified name."""
        return {path: model.get_submodule(path) for path in self.embedding_paths}

    def linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        """Prunable layers of a block: every ``nn.Linear`` inside it, by name relative to the block."""
        return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}

    def prunable_linears(self, model: nn.Module) -> dict[str, nn.Linear]:
        """Every prunable Linear of the model, by fully qualified name (never ``lm_head``)."""
        out: dict[str, nn.Linear] = {}
        for i, block in enumerate(self.blocks(model)):
            for name, layer in self.linears(block).items():
                out[f"{self.block_name(i)}.{name}"] = layer
        return out

    @torch.no_grad()
    def capture_inputs(self, model: nn.Module, input_ids: torch.Tensor, like: BlockInputs | None = None) -> BlockInputs:
        """The inputs of block 0 and the call kwargs of every block for ``input_ids``.

        Args:
            model: a causal LM of this family.
            input_ids: (B, T) int64 token ids.
            like: inputs already captured for a batch of the same shape: its per-block kwargs are
                reused (with no padding the masks, positions and rotary tables depend on the
                shape only) and the forward stops at block 0.
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
                if len(args) > 1:  # defensive: a family passing the attention mask positionally
                    call_kwargs.setdefault("attention_mask", args[1])
                if index == 0:
                    hidden.append(state)
                call_kwargs = {k: v for k, v in call_kwargs.items() if k != "past_key_values"}
                call_kwargs["use_cache"] = False
                kwargs.append(call_kwargs)
                if index == last:
                    raise _Captured
            return record

        handles = [block.register_forward_pre_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks[: last + 1])]
        try:
            model(input_ids=input_ids, use_cache=False)
        except _Captured:
            per_block = like.kwargs if like is not None else tuple(kwargs)
            return BlockInputs(hidden[0], per_block, 0)
        finally:
            for handle in handles:
                handle.remove()
        raise SparsenetsError(f"{self.family} model never reached its decoder block {last}")

    @staticmethod
    def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
        """Call block ``inputs.index`` with its own kwargs; returns what enters the next block."""
        out = block(inputs.hidden, **inputs.kwargs[inputs.index])
        hidden = out[0] if isinstance(out, tuple) else out
        return BlockInputs(hidden, inputs.kwargs, inputs.index + 1)


_ADAPTERS = {
    **{
        t: DecoderAdapter(t, "model.layers", ("model.embed_tokens",))
        for t in LLAMA_FAMILY
    },
    "opt": DecoderAdapter("opt", "model.decoder.layers", ("model.decoder.embed_tokens", "model.decoder.embed_positions")),
}


def get_adapter(model: nn.Module) -> DecoderAdapter:
    """The adapter for a Hugging Face causal LM, chosen by ``model.config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in _ADAPTERS:
        raise SparsenetsError(
            f"unsupported model type {model_type!r} (supported: {', '.join(sorted(_ADAPTERS))})"
        )
    return _ADAPTERS[model_type]
