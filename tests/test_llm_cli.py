"""``sparsenets prune-llm`` / ``eval-ppl`` end to end on a tiny local model with its own tokenizer.

The model directory is a tiny random Llama saved with ``save_pretrained`` beside a small BPE
tokenizer trained here on a generated text file, so the whole CLI path (text → tokens →
calibration → pruning → save → plain-transformers reload → perplexity) runs offline in seconds.
"""

from __future__ import annotations

import json
import random

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from test_llm_adapters import assert_exact_pattern  # noqa: E402

from sparsenets.cli import main  # noqa: E402
from sparsenets.llm import get_adapter  # noqa: E402

WORDS = ("the of and to a in that it was her she not be his as he had with for you which mr elizabeth "
         "darcy said very could would been all this my on so but at have no they were there is what").split()


def write_text(path, n_words=6000, seed=0):
    rng = random.Random(seed)
    sentences = []
    while sum(len(s) for s in sentences) < n_words:
        sentences.append([rng.choice(WORDS) for _ in range(rng.randint(4, 14))])
    path.write_text("\n".join(" ".join(s).capitalize() + "." for s in sentences))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Llama (2 blocks, hidden 32) and a ~120-token BPE tokenizer in one HF directory."""
    root = tmp_path_factory.mktemp("tiny-llm")
    text = write_text(root / "corpus.txt")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    bpe.train([str(text)], tokenizers.trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"]))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>",
                                               eos_token="</s>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    directory = root / "model"
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory, text


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def prune_args(model_dir, text, out, *extra):
    return ("prune-llm", "--model", model_dir, "--calib", text, "--calib-samples", 4, "--seq-len", 16,
            "--eval-text", text, "--eval-windows", 3, "--out", out, "--device", "cpu", "--quiet", *extra)


@pytest.mark.parametrize(("method", "extra", "structure"), [
    ("wanda", ("--sparsity", "0.5"), "unstructured"),
    ("sparsegpt", ("--nm", "2:4"), "2:4"),
    ("magnitude", ("--nm", "4:8"), "4:8"),
])
def test_prune_llm_saves_a_plain_transformers_model(capsys, tmp_path, model_dir, method, extra, structure):
    directory, text = model_dir
    out = tmp_path / "pruned"
    code, stdout, err = cli(capsys, *prune_args(directory, text, out, "--method", method, "--eval", *extra))
    assert code == 0, err
    assert "saved" in stdout and "perplexity" in stdout
    info = json.loads((out / "sparsity.json").read_text())
    assert info["method"] == method and info["structure"] == structure and info["sparsity"] == 0.5
    assert info["perplexity"]["protocol"]["n_windows"] == 3
    assert info["calibration"] is None if method == "magnitude" else info["calibration"]["n_samples"] == 4
    assert len(info["layers"]) == 14 and all(v == 0.5 for v in info["layers"].values())
    assert info["summary"]["prunable_sparsity"] == 0.5

    original = transformers.AutoModelForCausalLM.from_pretrained(directory)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no sparsenets
    linears = get_adapter(reloaded).prunable_linears(reloaded)
    for name, layer in linears.items():
        assert_exact_pattern(layer.weight, structure, name)
    assert torch.equal(reloaded.get_input_embeddings().weight, original.get_input_embeddings().weight)
    assert reloaded.get_output_embeddings().weight.data_ptr() == reloaded.get_input_embeddings().weight.data_ptr()
    assert transformers.AutoTokenizer.from_pretrained(out)("the darcy").input_ids

    code, stdout, _ = cli(capsys, "eval-ppl", "--model", out, "--text", text, "--seq-len", 16, "--windows", 3,
                          "--device", "cpu", "--json", "--quiet")
    assert code == 0
    result = json.loads(stdout)
    assert result["perplexity"] == pytest.approx(info["perplexity"]["value"], rel=1e-6)
    assert result["saved"] == info["perplexity"]["value"]


def test_owl_allocation_through_cli(capsys, tmp_path, model_dir):
    directory, text = model_dir
    out = tmp_path / "owl"
    code, _, err = cli(capsys, *prune_args(directory, text, out, "--method", "wanda", "--sparsity", "0.6",
                                           "--allocation", "owl", "--owl-lambda", "0.1"))
    assert code == 0, err
    info = json.loads((out / "sparsity.json").read_text())
    assert info["allocation"] == "owl" and info["owl"] == {"m": 5.0, "lambda": 0.1}
    blocks = {}
    for name, value in info["layers"].items():
        blocks.setdefault(name.split(".")[2], set()).add(round(value, 6))
    per_block = [next(iter(v)) for v in blocks.values()]
    assert all(len(v) <= 2 for v in blocks.values())  # one target per block (rounding per layer)
    assert all(0.5 - 1e-6 <= s <= 0.7 + 1e-6 for s in per_block)
    assert "perplexity" not in info


def test_eval_ppl_of_the_unpruned_model(capsys, model_dir):
    directory, text = model_dir
    code, stdout, _ = cli(capsys, "eval-ppl", "--model", directory, "--text", text, "--seq-len", 16,
                          "--windows", 2, "--device", "cpu", "--quiet")
    assert code == 0
    assert stdout.startswith("perplexity ") and "2 windows × 16 tokens" in stdout


@pytest.mark.parametrize(("extra", "fragments"), [
    (("--method", "foo"), ["'foo'", "wanda", "sparsegpt"]),
    (("--sparsity", "1.5"), ["1.5", "[0, 1)"]),
    (("--nm", "3:2"), ["3:2"]),
    (("--nm", "2:4", "--sparsity", "0.7"), ["0.7", "2:4"]),
    (("--allocation", "bogus"), ["'bogus'", "owl"]),
    (("--allocation", "owl", "--nm", "2:4"), ["owl", "2:4"]),
    (("--calib-samples", "0"), ["calib-samples", "0"]),
    (("--eval-windows", "-3"), ["-3"]),
])
def test_bad_prune_input_is_one_line_and_writes_nothing(capsys, tmp_path, model_dir, extra, fragments):
    directory, text = model_dir
    out = tmp_path / "never"
    with pytest.raises(SystemExit) if "--calib-samples" in extra or "--eval-windows" in extra else _nothing() as exit_info:
        code, _, err = cli(capsys, *prune_args(directory, text, out, *extra))
    if exit_info is not None:
        code, err = exit_info.value.code, capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert not out.exists()


class _nothing:
    """A context manager standing in for ``pytest.raises`` when no exit is expected."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_unknown_model_and_missing_text(capsys, tmp_path, model_dir):
    directory, text = model_dir
    code, _, err = cli(capsys, "prune-llm", "--model", "no-such-model", "--out", tmp_path / "x", "--quiet")
    assert code == 2 and "no-such-model" in err and "smollm2-135m" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(capsys, *prune_args(directory, tmp_path / "missing.txt", tmp_path / "y"))
    assert code == 2 and "missing.txt" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "y").exists()


def test_refuses_non_empty_output_unless_overwrite(capsys, tmp_path, model_dir):
    directory, text = model_dir
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = cli(capsys, *prune_args(directory, text, out, "--method", "magnitude"))
    assert code == 2 and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
    # --overwrite replaces a previous prune-llm output only: foreign files are never deleted
    code, _, err = cli(capsys, *prune_args(directory, text, out, "--method", "magnitude", "--overwrite"))
    assert code == 2 and "did not write (keep.txt)" in err and len(err.strip().splitlines()) == 1
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    assert cli(capsys, *prune_args(directory, text, out, "--method", "magnitude"))[0] == 0
    first = (out / "sparsity.json").read_text()
    code, _, err = cli(capsys, *prune_args(directory, text, out, "--method", "wanda", "--overwrite"))
    assert code == 0, err
    assert (out / "sparsity.json").read_text() != first and '"wanda"' in (out / "sparsity.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temporary folders left behind


def test_report_of_a_pruned_directory(model_dir, tmp_path, capsys):
    directory, text = model_dir
    out = tmp_path / "pruned"
    assert cli(capsys, *prune_args(directory, text, out, "--method", "sparsegpt", "--nm", "2:4", "--eval"))[0] == 0
    code, stdout, _ = cli(capsys, "report", out)
    assert code == 0
    info = json.loads((out / "sparsity.json").read_text())
    for layer in info["layers"]:  # every pruned Linear is a row of the table
        assert f"{layer}.weight" in stdout
    assert "structure 2:4" in stdout and "perplexity" in stdout and "bytes CSR" in stdout
    code, stdout, _ = cli(capsys, "report", out, "--json")
    data = json.loads(stdout)
    rows = {row["name"]: row for row in data["report"]["layers"]}
    assert set(rows) == {f"{layer}.weight" for layer in info["layers"]}
    for row in rows.values():  # 2:4 keeps half: float32 values + int32 column indices + row pointers
        assert row["density"] == 0.5 and row["bytes_dense"] == 4 * row["numel"]
        assert row["bytes_sparse"] == 8 * row["nnz"] + 4 * (row["shape"][0] + 1)
    assert data["pruned"]["structure"] == "2:4"


def test_report_of_a_directory_that_is_neither(tmp_path, capsys):
    code, _, err = cli(capsys, "report", tmp_path)
    assert code == 2 and "sparsity.json (pruned LLM)" in err and len(err.strip().splitlines()) == 1


def test_bf16_checkpoint_is_pruned_and_saved_in_bf16(capsys, tmp_path, model_dir):
    directory, text = model_dir
    bf16 = tmp_path / "bf16"
    transformers.AutoModelForCausalLM.from_pretrained(directory).to(torch.bfloat16).save_pretrained(bf16)
    transformers.AutoTokenizer.from_pretrained(directory).save_pretrained(bf16)
    out = tmp_path / "pruned"
    code, _, err = cli(capsys, *prune_args(bf16, text, out, "--method", "wanda", "--eval"))
    assert code == 0, err
    info = json.loads((out / "sparsity.json").read_text())
    assert info["dtype"] == "bfloat16" and all(v == 0.5 for v in info["layers"].values())
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert next(reloaded.parameters()).dtype == torch.bfloat16
    code, stdout, _ = cli(capsys, "eval-ppl", "--model", out, "--text", text, "--seq-len", 16, "--windows", 3,
                          "--device", "cpu", "--json", "--quiet")
    assert code == 0 and json.loads(stdout)["perplexity"] == pytest.approx(info["perplexity"]["value"], rel=1e-6)
    code, _, err = cli(capsys, *prune_args(bf16, text, tmp_path / "x", "--dtype", "float64"))
    assert code != 0 and "dtype must be one of auto, float32, bfloat16, float16, got 'float64'" in err
    assert "Traceback" not in err and not (tmp_path / "x").exists()


def test_low_memory_prune_equals_the_in_memory_one(capsys, tmp_path, model_dir):
    from sparsenets.llm import load_pruned_masks

    directory, text = model_dir
    runs = {}
    for mode, extra in (("full", ()), ("block", ("--low-memory",))):
        out = tmp_path / mode
        code, _, err = cli(capsys, *prune_args(directory, text, out, "--method", "sparsegpt", "--nm", "2:4",
                                               "--eval", *extra))
        assert code == 0, err
        runs[mode] = (out, json.loads((out / "sparsity.json").read_text()))
    (full, info_full), (block, info_block) = runs["full"], runs["block"]
    assert info_block["memory"] == "block" and info_full["memory"] == "full"
    assert info_block["peak_rss_mib"] > 0 and info_full["peak_rss_mib"] > 0
    assert info_block["layers"] == info_full["layers"] and info_block["structure"] == "2:4"
    assert info_block["perplexity"]["value"] == pytest.approx(info_full["perplexity"]["value"], rel=1e-5)
    for key in ("pruned_layers", "prunable_params", "prunable_zeros", "model_params"):
        assert info_block["summary"][key] == info_full["summary"][key], key
    masks_full, masks_block = load_pruned_masks(full), load_pruned_masks(block)  # 2:4 checked on reload
    assert all(torch.equal(masks_full[n], masks_block[n]) for n in masks_full)
    ids = torch.randint(0, 100, (2, 10))
    a = transformers.AutoModelForCausalLM.from_pretrained(full)
    b = transformers.AutoModelForCausalLM.from_pretrained(block)  # sharded, plain transformers
    with torch.no_grad():
        torch.testing.assert_close(b(input_ids=ids).logits, a(input_ids=ids).logits)
    assert transformers.AutoTokenizer.from_pretrained(block)("the darcy").input_ids
    assert not list(tmp_path.glob(".block.blocks-*"))  # the staging shards are cleaned up


def _bos_tokenizer(model_dir):
    """The fixture's tokenizer with a post-processor that prepends <s>, as Llama's does."""
    directory, _ = model_dir
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    tok._tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))])
    return tok


def test_windows_follow_the_tokenizers_bos_convention(model_dir):
    from sparsenets.llm.data import bos_token, calibration_batches, eval_windows

    directory, text = model_dir
    plain = transformers.AutoTokenizer.from_pretrained(directory)
    with_bos = _bos_tokenizer(model_dir)
    s = with_bos.convert_tokens_to_ids("<s>")
    assert bos_token(plain) is None and bos_token(with_bos) == s
    assert bos_token(plain, True) == s and bos_token(with_bos, False) is None
    calib = calibration_batches(with_bos, 4, 16, source=text)
    assert calib.shape == (4, 16) and (calib[:, 0] == s).all() and not (calib[:, 1:] == s).any()
    windows = eval_windows(with_bos, 16, 3, source=text)
    assert (windows[:, 0] == s).all()
    body = eval_windows(with_bos, 16, 3, source=text, bos=False)
    assert not (body[:, 0] == s).all()
    assert torch.equal(windows[0, 1:], body.reshape(-1)[:15])  # BOS + the next 15 text tokens
    assert torch.equal(calibration_batches(plain, 4, 16, source=text), calibration_batches(with_bos, 4, 16, source=text,
                                                                                         bos=False))


def test_bos_is_recorded_and_can_be_turned_on(capsys, tmp_path, model_dir):
    directory, text = model_dir
    out = tmp_path / "bos"
    code, _, err = cli(capsys, *prune_args(directory, text, out, "--method", "wanda", "--eval", "--bos", "on"))
    assert code == 0, err
    info = json.loads((out / "sparsity.json").read_text())
    s = transformers.AutoTokenizer.from_pretrained(directory).convert_tokens_to_ids("<s>")
    assert info["calibration"]["bos"] is True and info["calibration"]["bos_token_id"] == s
    assert info["perplexity"]["protocol"]["bos"] is True and info["perplexity"]["bos_token_id"] == s
    with pytest.raises(SystemExit) as exit_info:
        cli(capsys, *prune_args(directory, text, tmp_path / "x", "--bos", "maybe"))
    assert exit_info.value.code == 2 and "invalid choice: 'maybe'" in capsys.readouterr().err


def test_calibration_text_from_jsonl_and_a_saved_dataset(tmp_path, model_dir):
    from sparsenets.llm.data import calibration_tokens
    from sparsenets.llm.pipeline import make_calibration

    directory, text = model_dir
    tok = transformers.AutoTokenizer.from_pretrained(directory)
    documents = text.read_text().split("\n")[:200]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("\n".join(json.dumps({"text": d}) for d in documents))
    plain = tmp_path / "docs.txt"
    plain.write_text("\n\n".join(documents))
    assert torch.equal(calibration_tokens(tok, jsonl), calibration_tokens(tok, plain))
    datasets = pytest.importorskip("datasets")
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": documents}).save_to_disk(str(saved))
    assert torch.equal(calibration_tokens(tok, saved), calibration_tokens(tok, plain))
    assert make_calibration(saved, 2, 8).batches(tok).shape == (2, 8)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": 3}\n')
    from sparsenets.errors import SparsenetsError
    with pytest.raises(SparsenetsError, match="bad.jsonl' line 2: expected a JSON string or an object with a 'text'"):
        calibration_tokens(tok, bad)
    with pytest.raises(SparsenetsError, match="not a dataset saved with save_to_disk"):
        calibration_tokens(tok, tmp_path)


def test_a_tokenizer_without_merges_is_refused(capsys, tmp_path, model_dir):
    """One token per character (a conversion that lost its merges) stops with one line."""
    directory, text = model_dir
    broken = tmp_path / "broken"
    transformers.AutoModelForCausalLM.from_pretrained(directory).save_pretrained(broken)
    chars = sorted(set(text.read_text())) + ["<unk>", "<s>", "</s>"]
    char_level = tokenizers.Tokenizer(tokenizers.models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    char_level.pre_tokenizer = tokenizers.pre_tokenizers.Split("", behavior="isolated")
    transformers.PreTrainedTokenizerFast(tokenizer_object=char_level, unk_token="<unk>").save_pretrained(broken)
    code, _, err = cli(capsys, *prune_args(broken, text, tmp_path / "out"))
    assert code != 0 and "tokens per character" in err and "merges look lost" in err and "Traceback" not in err


def test_gguf_paths_are_checked_and_keyed_by_content(tmp_path):
    from sparsenets.errors import SparsenetsError
    from sparsenets.llm.models import file_digest, resolve_model_dir

    with pytest.raises(SparsenetsError, match="GGUF file .*missing.gguf' does not exist"):
        resolve_model_dir(tmp_path / "missing.gguf")
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF" + bytes(100))
    b.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    assert file_digest(a) != file_digest(b) and file_digest(a) == file_digest(a)


def test_calib_dtype_is_resolved_and_recorded(capsys, tmp_path, model_dir, monkeypatch):
    from sparsenets.llm import models

    assert models.resolve_calib_dtype("bfloat16", torch.float32) == torch.bfloat16
    assert models.resolve_calib_dtype("float32", torch.float32) is None  # the weights' own
    monkeypatch.setattr(models, "cpu_flags", lambda: {"avx2"})
    assert models.resolve_calib_dtype("auto", torch.float32) is None
    for flags in ({"avx2", "amx_bf16"}, {"avx2", "avx512f", "avx512_bf16"}):
        monkeypatch.setattr(models, "cpu_flags", lambda flags=flags: flags)
        assert models.resolve_calib_dtype("auto", torch.float32) == torch.bfloat16
    assert models.resolve_calib_dtype("auto", torch.bfloat16) is None
    assert models.resolve_calib_dtype("auto", torch.float32, "cuda") is None
    directory, text = model_dir
    out = tmp_path / "bf16calib"
    code, _, err = cli(capsys, *prune_args(directory, text, out, "--method", "sparsegpt", "--calib-dtype", "bfloat16"))
    assert code == 0, err
    info = json.loads((out / "sparsity.json").read_text())
    assert info["dtype"] == "float32" and info["calib_dtype"] == "bfloat16"
    assert all(v == 0.5 for v in info["layers"].values())
    code, _, err = cli(capsys, *prune_args(directory, text, tmp_path / "x", "--calib-dtype", "int8"))
    assert code != 0 and "dtype must be one of auto, float32, bfloat16, float16, got 'int8'" in err
