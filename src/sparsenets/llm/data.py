"""Offline text for calibration and perplexity, with a fixed protocol.

Default corpus: Jane Austen's novels from the Debian package ``r-cran-janeaustenr`` (extracted,
never installed, by ``make setup``; read from its R lazy-load database with ``rdata``).

Protocol (fixed, so results are comparable across runs and methods):

* Text: each novel's lines; lines of a paragraph are joined with spaces, paragraphs with a blank
  line. Tokenized without special tokens.
* Calibration: *Pride and Prejudice* and *Sense and Sensibility* (concatenated). ``n_samples``
  windows of ``seq_len`` tokens start at positions drawn uniformly with ``torch.Generator``
  seeded by ``seed`` (the Wanda/SparseGPT recipe: random windows of the calibration text).
* Evaluation: *Emma* (a different novel: disjoint from calibration). Non-overlapping consecutive
  windows of ``seq_len`` tokens from the start of the text; ``n_windows`` (default: all
  complete windows). Defaults: ``seq_len`` 512 (CPU), 128 calibration samples, seed 0.
* Fine-tuning (recovery of a pruned model): *Mansfield Park*, a third novel, used neither for
  calibration nor for evaluation.
* A plain text file given as ``source`` replaces the corpus: calibration windows (and fine-tuning
  text) come from its first 80 % of tokens, evaluation windows from the last 20 % (disjoint).
"""

from __future__ import annotations

import gzip
import json
import os
import warnings
import zlib
from pathlib import Path

import torch

from ..errors import SparsenetsError, choice_error

CALIBRATION_NOVELS = ("prideprejudice", "sensesensibility")
EVAL_NOVEL = "emma"
TRAIN_NOVEL = "mansfieldpark"  # fine-tuning text: neither calibration nor evaluation
NOVELS = ("emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility")
SPLIT = 0.8  # plain-text sources: calibration from the first 80 % of tokens, evaluation from the rest
_RDATA = Path("usr/lib/R/site-library/janeaustenr/data")


def corpus_dirs() -> list[Path]:
    """Where the extracted ``r-cran-janeaustenr`` package is looked for, in order."""
    dirs = []
    if os.environ.get("SPARSENETS_CACHE"):
        dirs.append(Path(os.environ["SPARSENETS_CACHE"]) / "janeausten")
    dirs.append(Path.cwd() / ".cache" / "sparsenets" / "janeausten")
    dirs.append(Path(__file__).resolve().parents[3] / ".cache" / "sparsenets" / "janeausten")
    dirs.append(Path.home() / ".cache" / "sparsenets" / "janeausten")
    return dirs


def find_corpus() -> Path:
    """The janeaustenr ``data`` directory (holding ``Rdata.rdx``/``Rdata.rdb``)."""
    for root in corpus_dirs():
        if (root / _RDATA / "Rdata.rdx").is_file():
            return root / _RDATA
    raise SparsenetsError(
        "Jane Austen corpus not found: run `make setup` (or set SPARSENETS_CACHE to the folder holding janeausten/)"
    )


def load_novel(name: str) -> str:
    """Full text of one Austen novel (see :data:`NOVELS`), paragraphs separated by blank lines."""
    if name not in NOVELS:
        raise choice_error("novel", name, NOVELS)
    try:
        import rdata
    except ImportError:
        raise SparsenetsError("reading the Jane Austen corpus needs rdata: pip install 'sparsenets[llm]'") from None
    data = find_corpus()
    # R lazy-load DB: the .rdx index (gzip, serialized list) gives (offset, length) per object in
    # the .rdb; each record is a 4-byte big-endian length followed by a zlib stream.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress((data / "Rdata.rdx").read_bytes())))
        offset, length = (int(v) for v in index["variables"][name])
        with open(data / "Rdata.rdb", "rb") as handle:
            handle.seek(offset)
            record = handle.read(length)
        lines = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(record[4:])))
    paragraphs, current = [], []
    for line in (str(x) for x in lines):
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def _tokens(tokenizer, text: str) -> torch.Tensor:
    """(n_tokens,) int64 ids of ``text``, no special tokens."""
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def read_source(source: str | Path) -> str:
    """The text of a local source: a plain text file, a ``.jsonl`` file (a ``"text"`` field per
    line, or a JSON string per line), or a ``datasets`` dataset saved with ``save_to_disk`` (its
    ``text`` column); documents are joined by blank lines."""
    path = Path(source)
    if path.is_dir():
        if not ((path / "dataset_info.json").is_file() or (path / "state.json").is_file()
                or (path / "dataset_dict.json").is_file()):
            raise SparsenetsError(f"{str(path)!r} is a directory but not a dataset saved with save_to_disk")
        try:
            import datasets
        except ImportError:
            raise SparsenetsError("reading a saved dataset needs the datasets package (pip install datasets)") from None
        data = datasets.load_from_disk(str(path))
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else data[next(iter(data))]
        if "text" not in data.column_names:
            raise SparsenetsError(f"dataset {str(path)!r} has no 'text' column (columns: {data.column_names})")
        return "\n\n".join(str(t) for t in data["text"])
    if not path.is_file():
        raise SparsenetsError(f"text file {str(path)!r} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() != ".jsonl":
        return text
    documents = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SparsenetsError(f"{str(path)!r} line {number} is not JSON: {exc.msg}") from None
        value = row.get("text") if isinstance(row, dict) else row
        if not isinstance(value, str):
            raise SparsenetsError(f"{str(path)!r} line {number}: expected a JSON string or an object with a "
                                  f"'text' string")
        documents.append(value)
    return "\n\n".join(documents)


def bos_token(tokenizer, bos: str | bool = "auto") -> int | None:
    """The BOS id to put at the start of every window, or ``None``.

    ``"auto"`` follows the tokenizer's own convention: a BOS token where encoding with special
    tokens (its default) prepends one, none where it does not (GPT-2, Qwen, SmolLM2 add none);
    ``True`` / ``False`` force it (``True`` needs a tokenizer with a BOS token).
    """
    if bos not in ("auto", True, False):
        raise SparsenetsError(f"bos must be auto, True or False, got {bos!r}")
    token = getattr(tokenizer, "bos_token_id", None)
    if bos is False:
        return None
    if bos is True:
        if token is None:
            raise SparsenetsError("bos=True, but the tokenizer has no BOS token")
        return int(token)
    if token is None:
        return None
    ids = tokenizer("a", verbose=False)["input_ids"]
    return int(token) if ids and ids[0] == token else None


def _check_positive(value: int, what: str) -> int:
    if not isinstance(value, int) or value <= 0:
        raise SparsenetsError(f"{what} must be a positive integer, got {value!r}")
    return value


def calibration_tokens(tokenizer, source: str | Path | None = None) -> torch.Tensor:
    """(n,) token ids of the calibration text (see the module protocol)."""
    if source is None:
        return torch.cat([_tokens(tokenizer, load_novel(n)) for n in CALIBRATION_NOVELS])
    ids = _tokens(tokenizer, read_source(source))
    return ids[: int(SPLIT * ids.numel())]


def training_tokens(tokenizer, source: str | Path | None = None) -> torch.Tensor:
    """(n,) token ids of the fine-tuning text: *Mansfield Park*, or the first 80 % of ``source``
    (the part evaluation never reads)."""
    if source is None:
        return _tokens(tokenizer, load_novel(TRAIN_NOVEL))
    return calibration_tokens(tokenizer, source)


def eval_tokens(tokenizer, source: str | Path | None = None) -> torch.Tensor:
    """(n,) token ids of the held-out evaluation text (see the module protocol)."""
    if source is None:
        return _tokens(tokenizer, load_novel(EVAL_NOVEL))
    ids = _tokens(tokenizer, read_source(source))
    return ids[int(SPLIT * ids.numel()) :]


def calibration_batches(
    tokenizer, n_samples: int = 128, seq_len: int = 512, seed: int = 0, *, source: str | Path | None = None,
    bos: str | bool = "auto",
) -> torch.Tensor:
    """Random calibration windows, (n_samples, seq_len) int64 token ids.

    Window starts are drawn uniformly from the calibration text with a generator seeded by
    ``seed``; the same arguments always give the same windows. With a BOS token
    (:func:`bos_token`), each window is BOS followed by ``seq_len - 1`` text tokens.
    """
    _check_positive(n_samples, "n_samples")
    _check_positive(seq_len, "seq_len")
    token = bos_token(tokenizer, bos)
    ids = calibration_tokens(tokenizer, source)
    if ids.numel() <= seq_len:
        raise SparsenetsError(f"calibration text has {ids.numel()} tokens, fewer than seq_len {seq_len} + 1")
    generator = torch.Generator().manual_seed(int(seed))
    starts = torch.randint(0, ids.numel() - seq_len, (n_samples,), generator=generator)
    if token is None:
        return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
    return torch.stack([torch.cat([torch.tensor([token]), ids[s : s + seq_len - 1]]) for s in starts.tolist()])


def eval_windows(
    tokenizer, seq_len: int = 512, n_windows: int | None = None, *, source: str | Path | None = None,
    bos: str | bool = "auto",
) -> torch.Tensor:
    """Non-overlapping evaluation windows from the held-out text, (n_windows, seq_len) int64.

    ``n_windows=None`` takes every complete window. With a BOS token (:func:`bos_token`) each
    window is BOS followed by the next ``seq_len - 1`` text tokens (the BOS is not predicted).
    """
    _check_positive(seq_len, "seq_len")
    token = bos_token(tokenizer, bos)
    ids = eval_tokens(tokenizer, source)
    if token is not None:
        _check_positive(seq_len - 1, "seq_len - 1 (one token is the BOS)")
        body = seq_len - 1
        available = ids.numel() // body
        if n_windows is not None:
            _check_positive(n_windows, "n_windows")
            if n_windows > available:
                raise SparsenetsError(
                    f"evaluation text has only {available} windows of {seq_len} tokens, asked for {n_windows}")
            available = n_windows
        if available == 0:
            raise SparsenetsError(f"evaluation text has {ids.numel()} tokens, fewer than seq_len {seq_len}")
        text = ids[: available * body].reshape(available, body)
        return torch.cat([torch.full((available, 1), token, dtype=torch.long), text], dim=1)
    available = ids.numel() // seq_len
    if n_windows is not None:
        _check_positive(n_windows, "n_windows")
        if n_windows > available:
            raise SparsenetsError(f"evaluation text has only {available} windows of {seq_len} tokens, asked for {n_windows}")
        available = n_windows
    if available == 0:
        raise SparsenetsError(f"evaluation text has {ids.numel()} tokens, fewer than seq_len {seq_len}")
    return ids[: available * seq_len].reshape(available, seq_len)
