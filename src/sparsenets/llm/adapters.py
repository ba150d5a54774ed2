"""Model-family knowledge, in one place: where the decoder blocks are and how to feed them.

Every pruning method works block by block: it needs the list of decoder blocks, the prunable
Linear layers inside a block, the hidden states that enter block 0 and the keyword arguments a
block is called with (attention mask, position ids, rotary ``position_embeddings``). The inputs
and kwargs are captured by running the model's own forward up to block 0 and stopping there (a
forward pre-hook that raises), so the model computes embeddings, masks and rotary tables itself;
the adapter only says where things are.

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
    """Raised by the capture hook to stop the forward pass at block 0."""

    def __init__(self, hidden: torch.Tensor, kwargs: dict[str, Any]):
        super().__init__("captured")
        self.hidden = hidden
        self.kwargs = kwargs


@dataclass(frozen=True)
class BlockInputs:
    """What enters a decoder block for one calibration mini-batch.

    Attributes:
        hidden: (B, T, hidden_size) float hidden states.
        kwargs: keyword arguments of the block call (attention mask, position ids, rotary
            ``position_embeddings`` (cos, sin) each (B, T, head_dim), ...); the same for every block.
    """

    hidden: torch.Tensor
    kwargs: dict[str, Any]


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
    def capture_inputs(self, model: nn.Module, input_ids: torch.Tensor) -> BlockInputs:
        """Run the model up to block 0 and return that block's inputs.

        Args:
            model: a causal LM of this family.
            input_ids: (B, T) int64 token ids.
        """
        first = self.blocks(model)[0]

        def hook(_module, args, kwargs):
            kwargs = dict(kwargs)
            hidden = args[0] if args else kwargs.pop("hidden_states")
            if len(args) > 1:  # defensive: a family passing the attention mask positionally
                kwargs.setdefault("attention_mask", args[1])
            raise _Captured(hidden, kwargs)

        handle = first.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            model(input_ids=input_ids, use_cache=False)
        except _Captured as captured:
            kwargs = {k: v for k, v in captured.kwargs.items() if k != "past_key_values"}
            kwargs["use_cache"] = False
            return BlockInputs(captured.hidden, kwargs)
        finally:
            handle.remove()
        raise SparsenetsError(f"{self.family} model never reached its first decoder block")

    @staticmethod
    def run_block(block: nn.Module, inputs: BlockInputs) -> BlockInputs:
        """Call one block; returns its output (B, T, hidden_size) with the same kwargs."""
        out = block(inputs.hidden, **inputs.kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        return BlockInputs(hidden, inputs.kwargs)


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
