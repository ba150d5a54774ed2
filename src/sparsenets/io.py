"""Atomic file writing and safe loading: nothing half-written is ever left behind."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .errors import SparsenetsError


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_output_dir(out: Path, overwrite: bool, what: str, *, not_empty_hint: str) -> None:
    """Refuse a path that cannot become the directory ``out`` (a file, under a file, in a
    directory where nothing can be created) and, unless ``overwrite``, a non-empty one.

    ``what`` names it in the errors (``"run directory"``); ``not_empty_hint`` says what to do
    instead of mixing into a non-empty one (``"use --overwrite or another --out"``).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SparsenetsError(f"--out {str(out)!r} is a file, not a directory")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise SparsenetsError(f"cannot create {what} {str(out)!r}: {str(parent)!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK) or not _can_create_in(parent):
        raise SparsenetsError(f"cannot create {what} {str(out)!r}: {str(parent)!r} is not writable")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SparsenetsError(f"{what} {str(out)!r} is not empty ({not_empty_hint})")


def _can_create_in(directory: Path) -> bool:
    """Whether an entry can really be made in ``directory`` (``os.access`` says yes to root on a
    read-only mount): a probe directory is created and removed at once."""
    try:
        probe = Path(tempfile.mkdtemp(prefix=".sparsenets-probe-", dir=directory))
    except OSError:
        return False
    probe.rmdir()
    return True


def read_json(path: str | Path, what: str = "file") -> dict[str, Any]:
    """A JSON object from ``path``; a missing, unreadable or malformed file gives one line
    naming it (``what`` says what the file is, e.g. ``"summary"``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparsenetsError(f"{what} {str(path)!r} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SparsenetsError(f"{what} {str(path)!r} is not valid JSON ({error})") from None
    except OSError as error:
        raise SparsenetsError(f"cannot read {what} {str(path)!r}: {error.strerror or error}") from None
    if not isinstance(data, dict):
        raise SparsenetsError(f"{what} {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    return data


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented, strict JSON atomically (NaN and ±inf become null)."""
    write_text(path, json_text(data, indent=2) + "\n")


def json_text(data: Any, indent: int | None = None) -> str:
    """Strict JSON: non-finite floats become ``null`` (``NaN`` is not JSON)."""
    from .finite import finite_or_none

    return json.dumps(finite_or_none(data), indent=indent, allow_nan=False)


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save a flat ``{name: tensor}`` as safetensors, atomically (tensors made contiguous)."""
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=metadata)


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing, truncated or corrupted one gives a one-line error
    naming it."""
    path = Path(path)
    if not path.is_file():
        raise SparsenetsError(f"{str(path)!r} not found")
    try:
        return load_file(str(path), device=str(device))
    except Exception as error:  # SafetensorError, OSError, …: the file is not usable
        reason = " ".join(str(error).split()) or type(error).__name__
        raise SparsenetsError(f"{str(path)!r} is not a valid safetensors file ({reason})") from None


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (one-line error naming a missing or damaged file)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SparsenetsError(f"{str(path)!r} not found")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except Exception as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise SparsenetsError(f"{str(path)!r} is not a valid safetensors file ({reason})") from None


def save_torch(path: str | Path, obj: Any) -> None:
    """``torch.save`` atomically (load it back with :func:`load_torch`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """``torch.load`` with ``weights_only=True``: plain containers and tensors only.

    A missing, truncated or corrupted file, or one holding other objects (a pickle that would
    run code is never loaded), gives a one-line error naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise SparsenetsError(f"{str(path)!r} not found")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()
        detail = next((line for line in first if "Unsupported" in line or "global" in line), "")
        raise SparsenetsError(
            f"{str(path)!r} holds objects that are not tensors or plain containers; it is not "
            f"loaded (only weights_only files are){f': {detail.strip()}' if detail else ''}"
        ) from None
    except Exception as error:  # truncated zip, bad magic number, …
        reason = " ".join(str(error).split()).split(". ")[0] or type(error).__name__
        raise SparsenetsError(f"{str(path)!r} is not a valid checkpoint file ({reason})") from None


def _swap_names(target: Path) -> tuple[str, Path]:
    """The prefix of ``target``'s temporary build directories and the path of its previous
    version during a swap (both hidden, beside ``target``)."""
    return f".{target.name}.tmp-", target.with_name(f".{target.name}.old")


def replace_dir(target: str | Path, fill: Callable[[Path], None]) -> None:
    """Build a directory with ``fill(tmp_dir)`` and swap it in place of ``target`` at the end.

    Crash-safe at every point, with :func:`recover_dir`: while ``fill`` runs, ``target`` is
    untouched; the swap moves ``target`` aside to ``.NAME.old``, renames the new directory in and
    only then deletes the old one. A crash between the two renames leaves ``.NAME.old``, which
    :func:`recover_dir` puts back.
    """
    target = Path(target)
    recover_dir(target)
    prefix, old = _swap_names(target)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def dir_version_exists(target: str | Path) -> bool:
    """Whether ``target`` exists, or a crash between :func:`replace_dir`'s renames left its
    previous version for :func:`recover_dir` to put back."""
    target = Path(target)
    return target.exists() or _swap_names(target)[1].is_dir()


def recover_dir(target: str | Path) -> bool:
    """Repair what a crash during :func:`replace_dir` left beside ``target``.

    Puts the previous version back when the crash came between the two renames (``target``
    missing, ``.NAME.old`` present), deletes a leftover ``.NAME.old`` otherwise, and removes
    stale temporary build directories. Returns whether the previous version was restored.
    """
    target = Path(target)
    prefix, old = _swap_names(target)
    restored = False
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)
            restored = True
    if target.parent.is_dir():
        for stale in target.parent.glob(f"{prefix}*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
    return restored
