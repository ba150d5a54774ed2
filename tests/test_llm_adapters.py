"""Model adapters, sequential calibration and perplexity on tiny random HF models (no downloads)."""

from __future__ import annotations

import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

from sparsenets.errors import SparsenetsError  # noqa: E402
from sparsenets.llm import get_adapter, perplexity, sequential_calibration  # noqa: E402
from sparsenets.llm.stats import GramStats, InputNormStats  # noqa: E402

FAMILIES = ("llama", "mistral", "qwen2", "opt")
VOCAB = 96


def tiny_model(family: str, *, tied: bool = False, seed: int = 0, hidden: int = 32) -> torch.nn.Module:
    """A 2-block random causal LM of ``family`` (hidden 32, 4 heads), eval mode, float32."""
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=64, tie_word_embeddings=tied)
    if family == "opt":
        config = transformers.OPTConfig(ffn_dim=2 * hidden, word_embed_proj_dim=hidden,
                                        enable_bias=True, **common)
    else:
        cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
               "qwen2": transformers.Qwen2Config}[family]
        config = cls(intermediate_size=2 * hidden, num_key_value_heads=2, **common)
    return _widened(transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32))


def _widened(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in eval mode with its matrices redrawn from N(0, 0.3²): the random init is tiny,
    and pruning effects should be visible."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


def _block_outputs(model, adapter, ids):
    outputs = []
    hooks = [b.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for b in adapter.blocks(model)]
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return outputs


def tokens(n: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_finds_blocks_and_linears(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    assert len(blocks) == 2
    linears = adapter.prunable_linears(model)
    expected = 7 if family != "opt" else 6  # q,k,v,o,gate,up,down | q,k,v,out,fc1,fc2
    assert len(linears) == 2 * expected
    assert all(isinstance(m, torch.nn.Linear) for m in linears.values())
    assert not any("lm_head" in n or "embed" in n for n in linears)
    assert model.lm_head not in linears.values()
    embeddings = adapter.embeddings(model)
    assert all(isinstance(m, torch.nn.Embedding) for m in embeddings.values())
    assert all(name.startswith(adapter.blocks_path + ".") for name in linears)


@pytest.mark.parametrize("family", FAMILIES)
def test_block_by_block_matches_full_forward(family):
    """Captured block-0 inputs and kwargs (masks, rotary tables) reproduce the model's forward."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    ids = tokens(3, 12)
    reference = _block_outputs(model, adapter, ids)
    inputs = adapter.capture_inputs(model, ids)
    assert inputs.hidden.shape == (3, 12, 32)
    with torch.no_grad():
        for block, ref in zip(adapter.blocks(model), reference, strict=True):
            inputs = adapter.run_block(block, inputs)
            torch.testing.assert_close(inputs.hidden, ref)


def test_sequential_calibration_feeds_pruned_blocks_and_shapes():
    """Block 1 sees the outputs of the already-modified block 0, one block at a time."""
    model = tiny_model("llama")
    adapter = get_adapter(model)
    ids = tokens(5, 10)
    seen: dict[int, torch.Tensor] = {}

    class Recorder(InputNormStats):
        def batch_statistic(self, x):
            assert x.shape[:2] in {(2, 10), (1, 10)} and x.shape[-1] == self.in_features
            return super().batch_statistic(x)

    def on_block(index, block, stats):
        assert set(stats) == set(adapter.linears(block))
        assert all(s.n_tokens == 5 * 10 for s in stats.values())
        seen[index] = stats["self_attn.q_proj"].finalize()
        if index == 0:  # zero the block's linears: its output then equals its input (residuals)
            for layer in adapter.linears(block).values():
                layer.weight.data.zero_()
                if layer.bias is not None:
                    layer.bias.data.zero_()

    sequential_calibration(model, ids, stats_factory=lambda layer: Recorder(layer.in_features),
                           on_block=on_block, batch_size=2, progress=False)
    assert seen[0].shape == (32,)
    # both RMSNorms have weight 1 at init, so block 1's q_proj input equals block 0's
    torch.testing.assert_close(seen[1], seen[0])


def test_gram_stats_match_direct_computation():
    x = torch.randn(3, 7, 5)
    stats = GramStats(5)
    stats.update(x[:2])
    stats.update(x[2:])
    flat = x.reshape(-1, 5).double()
    torch.testing.assert_close(stats.finalize(), flat.t() @ flat, rtol=1e-5, atol=1e-5)  # float32 GEMM per batch
    exact = GramStats(5)
    exact.update(x.double())  # float64 inputs: float64 GEMM
    torch.testing.assert_close(exact.finalize(), flat.t() @ flat)
    assert stats.n_tokens == 21
    norms = InputNormStats(5)
    norms.update(x)
    torch.testing.assert_close(norms.finalize(), flat.norm(dim=0).float())
    with pytest.raises(SparsenetsError):
        norms.update(torch.randn(2, 4))


@pytest.mark.parametrize("family", ("llama", "opt"))
def test_perplexity_matches_hf_loss(family):
    model = tiny_model(family)
    windows = tokens(3, 16)
    with torch.no_grad():
        losses = [float(model(input_ids=w[None], labels=w[None]).loss) for w in windows]
    expected = math.exp(sum(losses) / len(losses))
    assert perplexity(model, windows, batch_size=2, progress=False) == pytest.approx(expected, rel=1e-5)


def test_bad_inputs_raise_one_line_errors():
    model = tiny_model("llama")
    with pytest.raises(SparsenetsError, match="windows must be"):
        perplexity(model, torch.zeros(4, dtype=torch.long), progress=False)
    model.config.model_type = "gpt2"  # a wrong family name: its override path is absent, discovery finds the blocks
    assert get_adapter(model).blocks_path == "model.layers"
    with pytest.raises(SparsenetsError, match="no list of decoder blocks with Linear layers found"):
        get_adapter(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    with pytest.raises(SparsenetsError, match=r"bad layer pattern '\(q'"):
        get_adapter(model, targets="(q")
    with pytest.raises(SparsenetsError, match="leave no layer to prune"):
        get_adapter(model, targets=r"no_such_layer")


def assert_exact_pattern(weight, structure: str, name: str = "") -> None:
    """Every row has exactly half its weights zero (unstructured 50%) or exactly N of M kept."""
    if structure == "unstructured":
        assert ((weight == 0).sum(1) == weight.shape[1] // 2).all(), name
    else:
        n, m = (int(x) for x in structure.split(":"))
        assert ((weight != 0).reshape(weight.shape[0], -1, m).sum(-1) == n).all(), name


def test_shared_inputs_give_the_same_statistics_as_separate_updates():
    """q/k/v (and gate/up) share one statistic computation; results equal per-layer updates."""
    model = tiny_model("llama")
    adapter = get_adapter(model)
    ids = tokens(3, 8)
    expected: dict[str, GramStats] = {}
    block = adapter.blocks(model)[0]
    hooks = []
    for name, layer in adapter.linears(block).items():
        expected[name] = GramStats(layer.in_features)
        hooks.append(layer.register_forward_pre_hook(lambda _m, args, acc=expected[name]: acc.update(args[0])))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    got = {}

    def on_block(index, _block, stats):
        if index == 0:
            got.update({name: s.finalize() for name, s in stats.items()})

    sequential_calibration(model, ids, stats_factory=lambda layer: GramStats(layer.in_features), on_block=on_block,
                           batch_size=3, progress=False)
    assert set(got) == set(expected)
    for name, stats in expected.items():
        torch.testing.assert_close(got[name], stats.finalize(), rtol=1e-5, atol=1e-5)
    assert not torch.equal(got["self_attn.q_proj"], got["self_attn.o_proj"])


@pytest.mark.parametrize("family", ("llama", "opt"))
def test_statistics_pass_stops_after_the_last_linear_input(family):
    """The last Linear of a block runs once per batch (output pass), not twice; results unchanged."""
    model = tiny_model(family)
    adapter = get_adapter(model)
    last = list(adapter.linears(adapter.blocks(model)[0]).values())[-1]
    calls = []
    handle = last.register_forward_hook(lambda *_: calls.append(1))
    norms = {}
    sequential_calibration(model, tokens(4, 8), stats_factory=lambda layer: InputNormStats(layer.in_features),
                           on_block=lambda i, _b, stats: norms.update({i: stats}), batch_size=2, progress=False)
    handle.remove()
    # two mini-batches in the output pass; none in the statistics pass, none while the blocks'
    # arguments are captured (every block passes its input through)
    assert len(calls) == 2
    assert all(s.n_tokens == 32 for s in norms[0].values())


def mixed_qwen2(seed: int = 0) -> torch.nn.Module:
    """A 4-block Qwen2 whose layers mix full and sliding-window attention (window 3): the
    sliding blocks are called with their own attention mask."""
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, use_sliding_window=True, sliding_window=3,
        layer_types=["full_attention", "full_attention", "sliding_attention", "sliding_attention"],
    )
    return _widened(transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32))


def test_mixed_layer_types_replay_each_block_with_its_own_kwargs():
    model = mixed_qwen2()
    adapter = get_adapter(model)
    ids = tokens(2, 10)
    reference = _block_outputs(model, adapter, ids)
    inputs = adapter.capture_inputs(model, ids)
    assert inputs.kwargs[0].get("attention_mask") is None and inputs.kwargs[2]["attention_mask"] is not None
    with torch.no_grad():
        for block, ref in zip(adapter.blocks(model), reference, strict=True):
            inputs = adapter.run_block(block, inputs)
            torch.testing.assert_close(inputs.hidden, ref, atol=1e-5, rtol=1e-5)
    # another batch of the same shape reuses the per-block kwargs and still replays exactly
    other = tokens(2, 10, seed=5)
    reference = _block_outputs(model, adapter, other)
    inputs = adapter.capture_inputs(model, other, like=adapter.capture_inputs(model, ids))
    with torch.no_grad():
        for block, ref in zip(adapter.blocks(model), reference, strict=True):
            inputs = adapter.run_block(block, inputs)
            torch.testing.assert_close(inputs.hidden, ref, atol=1e-5, rtol=1e-5)


def test_wanda_on_mixed_layer_types_equals_a_sequential_full_forward_reference():
    """Reference: for block i, the input norms of its Linears come from full forwards of the model
    whose blocks before i are already pruned (hooks on the real model, its own masks)."""
    from sparsenets.llm import prune
    from sparsenets.scores import wanda
    from sparsenets.select import select

    calibration = tokens(6, 12, seed=3)
    model = mixed_qwen2()
    reference = mixed_qwen2()
    adapter = get_adapter(reference)
    for block in adapter.blocks(reference):
        linears = adapter.linears(block)
        sums = {name: torch.zeros(layer.in_features, dtype=torch.float64) for name, layer in linears.items()}

        def record(_module, args, name, sums=sums):
            sums[name].add_(args[0].detach().double().reshape(-1, args[0].shape[-1]).pow(2).sum(0))  # returns None

        hooks = [layer.register_forward_pre_hook(lambda m, args, name=name, record=record: record(m, args, name))
                 for name, layer in linears.items()]
        with torch.no_grad():
            for chunk in calibration.split(4):  # the same mini-batches as prune(batch_size=4)
                reference(input_ids=chunk, use_cache=False)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for name, layer in linears.items():
                keep = select(wanda(layer.weight, sums[name].sqrt()), layer.in_features // 2, group="row")
                layer.weight.mul_(keep)
    prune(model, calibration, method="wanda", sparsity=0.5, batch_size=4, progress=False)
    for (name, ours), (_, theirs) in zip(adapter.prunable_linears(model).items(),
                                         adapter.prunable_linears(reference).items(), strict=True):
        disagree = float(((ours.weight == 0) != (theirs.weight == 0)).float().mean())
        assert disagree == 0.0, f"{name}: masks differ on {disagree:.1%} of the weights"


def test_evaluation_batch_shrinks_for_large_vocabularies(monkeypatch):
    import importlib

    ppl_module = importlib.import_module("sparsenets.llm.perplexity")  # the module (the package exports the function)

    model = tiny_model("llama")
    assert ppl_module.logits_batch(model, 512, 4) == 4  # 96 tokens: no need
    model.config.vocab_size = 262_144
    assert ppl_module.logits_batch(model, 512, 4) == 1  # 4 x 512 x 262k x 4 B would be 2 GiB
    model.config.vocab_size = VOCAB
    windows = tokens(5, 12, seed=2)
    monkeypatch.setattr(ppl_module, "LOGITS_BUDGET_BYTES", 12 * VOCAB * 4 * 2)  # two windows a forward
    assert ppl_module.logits_batch(model, 12, 4) == 2
    assert perplexity(model, windows, 4, progress=False) == pytest.approx(perplexity(model, windows, 1, progress=False))
