"""LLM pruning on tiny random models of many Hugging Face decoder families (no downloads).

For every family: the decoder blocks and prunable layers are found from the model itself;
replaying the blocks with their captured arguments reproduces the model's forward; Wanda and
SparseGPT give the masks of a sequential reference built here from full-model forwards with
hooks (block i's statistics come from forwards of the model whose blocks before i are already
pruned); counts per row and per N:M group are exact; embeddings and a tied head are untouched;
the saved directory reloads in plain transformers with the same logits.
"""

from __future__ import annotations

import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from sparsenets.llm import get_adapter, load_pruned_masks, prune, save_pruned  # noqa: E402
from sparsenets.llm.adapters import in_features, is_transposed, weight_matrix  # noqa: E402
from sparsenets.llm.sparsegpt import sparsegpt_prune  # noqa: E402
from sparsenets.llm.stats import GramStats, InputNormStats  # noqa: E402
from sparsenets.scores import wanda  # noqa: E402
from sparsenets.select import Unstructured, select  # noqa: E402

VOCAB = 96
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
              max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2)
SLIDING = ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]
FAMILIES = {  # model_type: config arguments beyond COMMON
    "llama": dict(num_key_value_heads=2),
    "mistral": dict(num_key_value_heads=2, sliding_window=3),
    "qwen2": dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=3, layer_types=SLIDING),
    "qwen3": dict(num_key_value_heads=2, head_dim=8),
    "gemma": dict(num_key_value_heads=2, head_dim=8),
    "gemma2": dict(num_key_value_heads=2, head_dim=8, sliding_window=3),
    "gemma3_text": dict(num_key_value_heads=2, head_dim=8, sliding_window=3, sliding_window_pattern=2),
    "phi3": dict(num_key_value_heads=2),  # fused qkv_proj and gate_up_proj
    "gpt_neox": dict(),  # parallel attention and MLP
    "falcon": dict(),
    "gpt2": dict(),  # Conv1D layers, weight stored (in, out)
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
    "olmo2": dict(num_key_value_heads=2),
    "granite": dict(num_key_value_heads=2),
}


def tiny(model_type: str, *, tied: bool = False, seed: int = 0) -> torch.nn.Module:
    """A 4-block random causal LM of the family, matrices redrawn from N(0, 0.3²), eval mode."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = transformers.AutoConfig.for_model(model_type, **COMMON, **FAMILIES[model_type],
                                                   tie_word_embeddings=tied)
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.3)
    return model.eval()


def tokens(n: int, t: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model_type", FAMILIES)
def test_blocks_are_found_and_replay_the_forward(model_type):
    model = tiny(model_type)
    adapter = get_adapter(model)
    blocks = adapter.blocks(model)
    assert len(blocks) == 4 and type(blocks[0]).__name__ in model._no_split_modules
    linears = adapter.prunable_linears(model)
    assert linears and all(name.startswith(adapter.blocks_path + ".") for name in linears)
    assert not any(isinstance(m, torch.nn.Embedding) for m in linears.values())
    if model_type == "gpt2":
        assert all(is_transposed(m) for m in linears.values())
    outputs = []
    hooks = [b.register_forward_hook(lambda _m, _a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
             for b in blocks]
    ids = tokens(2, 10)
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
        for h in hooks:
            h.remove()
        inputs = adapter.capture_inputs(model, ids)
        for block, reference in zip(blocks, outputs, strict=True):
            inputs = adapter.run_block(block, inputs)
            scale = float(reference.abs().max())
            torch.testing.assert_close(inputs.hidden, reference, rtol=1e-5, atol=1e-5 * scale)


def sequential_reference(model, calibration, method: str, batch_size: int) -> None:
    """Prune ``model`` in place at 50% the slow, obvious way: for each block, hooks on its layers
    gather input statistics over full forwards of the model (earlier blocks already pruned)."""
    adapter = get_adapter(model)
    for block in adapter.blocks(model):
        layers = adapter.linears(block)
        stats = {name: (InputNormStats if method == "wanda" else GramStats)(in_features(layer))
                 for name, layer in layers.items()}
        hooks = [layer.register_forward_pre_hook(lambda _m, args, s=stats[name]: s.update(args[0]))
                 for name, layer in layers.items()]
        with torch.no_grad():
            for chunk in calibration.split(batch_size):
                model(input_ids=chunk, use_cache=False)
        for h in hooks:
            h.remove()
        with torch.no_grad():
            for name, layer in layers.items():
                weight = weight_matrix(layer)
                if method == "wanda":
                    keep = select(wanda(weight, stats[name].finalize()), weight.shape[1] // 2, group="row")
                    weight.mul_(keep)
                else:
                    sparsegpt_prune(weight, stats[name].finalize(), 0.5, Unstructured())


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("model_type", FAMILIES)
def test_masks_equal_a_sequential_full_forward_reference(model_type, method):
    calibration = tokens(4, 12, seed=3)
    model, reference = tiny(model_type), tiny(model_type)
    result = prune(model, calibration, method=method, sparsity=0.5, batch_size=2, progress=False)
    sequential_reference(reference, calibration, method, batch_size=2)
    adapter = get_adapter(model)
    ours, theirs = adapter.prunable_linears(model), adapter.prunable_linears(reference)
    for name, layer in ours.items():
        mine, ref = weight_matrix(layer), weight_matrix(theirs[name])
        disagree = float(((mine == 0) != (ref == 0)).float().mean())
        assert disagree == 0.0, f"{name}: masks differ on {disagree:.1%} of the weights"
        half = mine.shape[1] // 2
        assert ((mine != 0).sum(1) == mine.shape[1] - half).all(), name  # exact per-row count
        assert torch.equal(result.masks[f"{name}.weight"], layer.weight != 0), name  # parameter layout
        if method == "sparsegpt":
            torch.testing.assert_close(mine, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_nm_embeddings_tied_head_and_reload(model_type, tmp_path):
    model = tiny(model_type, tied=True)
    adapter = get_adapter(model)
    embeddings = {name: m.weight.detach().clone() for name, m in adapter.embeddings(model).items()}
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    head_before = head.detach().clone()
    result = prune(model, tokens(4, 12, seed=4), method="wanda", structure="2:4", batch_size=2, progress=False)
    for name, layer in adapter.prunable_linears(model).items():
        groups = (weight_matrix(layer) != 0).reshape(-1, 4).sum(1)
        assert (groups == 2).all(), f"{name}: not exactly 2 of every 4"
    for name, module in adapter.embeddings(model).items():
        assert torch.equal(module.weight, embeddings[name]), f"embedding {name} changed"
    assert head.data_ptr() == model.get_output_embeddings().weight.data_ptr()
    assert torch.equal(model.get_output_embeddings().weight, head_before), "the head changed"
    if tied:
        assert torch.equal(head, model.get_input_embeddings().weight)
    ids = tokens(2, 9, seed=6)
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    out = save_pruned(model, tmp_path / "pruned", {"method": "wanda"}, masks=result.masks, structure="2:4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, use_cache=False).logits, logits)
    masks = load_pruned_masks(out)  # the recorded 2:4 structure is checked layer by layer on reload
    assert set(masks) == set(result.masks)


def test_targets_and_ignore_narrow_the_pruned_layers(tmp_path):
    model = tiny("llama")
    result = prune(model, tokens(4, 12), method="wanda", targets=["mlp"], ignore=[r"layers\.0\."],
                   batch_size=2, progress=False)
    names = {n.removesuffix(".weight") for n in result.masks}
    assert names and all(".mlp." in n and ".layers.0." not in n for n in names)
    for name, layer in get_adapter(model).prunable_linears(model).items():
        assert ((layer.weight == 0).any()) == (name in names), name  # the rest stay dense
    out = save_pruned(model, tmp_path / "p", {"method": "wanda"}, masks=result.masks, structure=result.structure)
    assert set(load_pruned_masks(out)) == set(result.masks)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_bfloat16_in_bfloat16_out(model_type, tmp_path):
    """A bf16 checkpoint pruned with dtype auto stays bf16 (weights, statistics in float32+,
    exact counts) and is saved in bf16, about half the float32 file."""
    from sparsenets.llm.models import checkpoint_dtype, load_causal_lm

    model = tiny(model_type)
    model.save_pretrained(tmp_path / "f32")
    model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert checkpoint_dtype(tmp_path / "bf16") == torch.bfloat16
    loaded = load_causal_lm(tmp_path / "bf16", dtype="auto", progress=False)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    result = prune(loaded, tokens(4, 12, seed=7), method="sparsegpt", sparsity=0.5, batch_size=2, progress=False)
    for name, layer in get_adapter(loaded).prunable_linears(loaded).items():
        assert layer.weight.dtype == torch.bfloat16, name
        weight = weight_matrix(layer)
        assert ((weight != 0).sum(1) == weight.shape[1] - weight.shape[1] // 2).all(), name
    out = save_pruned(loaded, tmp_path / "pruned", {"method": "sparsegpt"}, masks=result.masks,
                      structure=result.structure)
    assert checkpoint_dtype(out) == torch.bfloat16
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.6 * (tmp_path / "f32" / "model.safetensors").stat().st_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert next(reloaded.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma3_text", "gpt2", "falcon", "phi3"])
def test_low_memory_mode_gives_the_same_masks_and_weights(model_type, tmp_path):
    """One block in memory at a time (skeleton + block streaming): the same masks and pruned
    weights as in memory, the output a sharded checkpoint that reloads with the same logits."""
    from sparsenets.llm import lowmem
    from sparsenets.llm.export import mask_tensors

    source = tmp_path / "source"
    tiny(model_type).save_pretrained(source)
    calibration = tokens(4, 12, seed=8)
    in_memory = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    expected = prune(in_memory, calibration, method="sparsegpt", sparsity=0.5, batch_size=2, progress=False)

    skeleton, checkpoint = lowmem.build_skeleton(source, torch.float32)
    assert all(p.is_meta for p in get_adapter(skeleton).blocks(skeleton).parameters())
    staging = lowmem.staging_dir(tmp_path / "out")
    streamer = lowmem.BlockStreamer(checkpoint, get_adapter(skeleton), torch.float32, "cpu", staging)
    result = prune(skeleton, calibration, method="sparsegpt", sparsity=0.5, batch_size=2, progress=False,
                   loader=streamer)
    assert set(result.masks) == set(expected.masks)
    for name in expected.masks:
        assert torch.equal(result.masks[name], expected.masks[name]), name
    assert all(p.is_meta for p in get_adapter(skeleton).blocks(skeleton).parameters())  # released again
    windows = tokens(3, 10, seed=9)
    from sparsenets.llm import perplexity
    assert lowmem.staged_perplexity(skeleton, streamer, windows) == pytest.approx(
        perplexity(in_memory, windows, progress=False), rel=1e-5)
    out = lowmem.finish(tmp_path / "out", source, streamer, {"method": "sparsegpt", "layers": dict(result.sparsity)},
                        mask_tensors(result.masks), "sparsity.json", "masks.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tokens(2, 9, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, in_memory(input_ids=ids).logits)
    assert len(list(out.glob("block-*.safetensors"))) == 4 and (out / "model.safetensors.index.json").is_file()


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt2", "gemma3_text"])
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_bfloat16_calibration_forwards_prune_the_float32_weights(model_type, method):
    """Calibration forwards in bf16 (a bf16 copy of each block, bf16 rotary tables and masks):
    the float32 weights are pruned with exact counts, and the masks stay close to float32's."""
    calibration = tokens(4, 12, seed=10)
    fp32, bf16 = tiny(model_type), tiny(model_type)
    prune(fp32, calibration, method=method, sparsity=0.5, batch_size=2, progress=False)
    prune(bf16, calibration, method=method, sparsity=0.5, batch_size=2, progress=False, calib_dtype=torch.bfloat16)
    adapter = get_adapter(bf16)
    reference = adapter.prunable_linears(fp32)
    disagree = []
    for name, layer in adapter.prunable_linears(bf16).items():
        weight = weight_matrix(layer)
        assert weight.dtype == torch.float32, name
        assert ((weight != 0).sum(1) == weight.shape[1] - weight.shape[1] // 2).all(), name
        disagree.append(float(((weight == 0) != (weight_matrix(reference[name]) == 0)).float().mean()))
    assert 0 < sum(disagree) / len(disagree) < 0.1  # bf16 statistics move some near-ties, no more
