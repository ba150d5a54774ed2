"""Fashion-MNIST from the four gzip IDX files on local disk (no download, no cache)."""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch

from sparsenets.data.base import Dataset
from sparsenets.errors import SparsenetsError

log = logging.getLogger(__name__)

ENV_VAR = "SPARSENETS_FASHION_MNIST"
DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
MEAN = 0.2860
STD = 0.3530
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
_IMAGE_MAGIC = 2051
_LABEL_MAGIC = 2049


def _candidate_dirs(data_dir: str | os.PathLike[str] | None) -> list[Path]:
    """Directories to search, in order: ``data_dir``, else $SPARSENETS_FASHION_MNIST, else default."""
    if data_dir is not None:
        return [Path(data_dir)]
    env = os.environ.get(ENV_VAR)
    if env:
        return [Path(env)]
    return [Path(DEFAULT_DIR)]


def _find_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    candidates = _candidate_dirs(data_dir)
    for cand in candidates:
        if all((cand / f).is_file() for f in FILES.values()):
            return cand
    searched = ", ".join(str(c) for c in candidates)
    raise SparsenetsError(
        f"Fashion-MNIST files ({', '.join(FILES.values())}) not found in {searched}; "
        f"run `make setup` or `apt-get install dataset-fashion-mnist`, or set {ENV_VAR}=DIR"
    )


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read a gzip IDX file into a uint8 array of shape ``(N,)`` or ``(N, rows, cols)``."""
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as error:  # not gzip, or cut short
        raise SparsenetsError(f"corrupt Fashion-MNIST file {path}: {error} (expected a complete .gz IDX file)") from None
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise SparsenetsError(f"corrupt IDX file {path}: only {len(raw)} bytes")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != magic:
        raise SparsenetsError(f"corrupt IDX file {path}: magic {int(header[0])}, expected {magic}")
    dims = tuple(int(d) for d in header[1:])
    expected = header_len + int(np.prod(dims))
    if len(raw) != expected:
        raise SparsenetsError(
            f"corrupt IDX file {path}: {len(raw)} bytes, expected {expected} for shape {dims}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _images(arr: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> standardized float32 ``(N, 1, 28, 28)``."""
    x = torch.from_numpy(arr.astype(np.float32))
    x = x.div_(255.0).sub_(MEAN).div_(STD)
    return x.unsqueeze(1)


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Load Fashion-MNIST (60000 train / 10000 test images, 10 classes).

    Args:
        data_dir: directory holding the four gzip IDX files; defaults to
            ``$SPARSENETS_FASHION_MNIST`` or ``/usr/share/datasets/fashion-mnist``.

    Returns:
        A :class:`Dataset` with ``x_*`` float32 ``(N, 1, 28, 28)`` scaled to [0, 1] then
        standardized with mean 0.2860 / std 0.3530, and ``y_*`` int64 ``(N,)``.

    Raises:
        SparsenetsError: the files are missing or malformed.
    """
    root = _find_dir(data_dir)
    x_train = _read_idx(root / FILES["x_train"], _IMAGE_MAGIC, 3)
    y_train = _read_idx(root / FILES["y_train"], _LABEL_MAGIC, 1)
    x_test = _read_idx(root / FILES["x_test"], _IMAGE_MAGIC, 3)
    y_test = _read_idx(root / FILES["y_test"], _LABEL_MAGIC, 1)
    for xs, ys, split in ((x_train, y_train, "train"), (x_test, y_test, "test")):
        if xs.shape[0] != ys.shape[0] or xs.shape[1:] != (28, 28):
            raise SparsenetsError(
                f"Fashion-MNIST {split} files in {root} disagree: images {xs.shape}, "
                f"labels {ys.shape}"
            )
        if ys.size and int(ys.max()) > 9:
            raise SparsenetsError(f"Fashion-MNIST {split} labels in {root} exceed 9")
    log.debug("loaded Fashion-MNIST from %s", root)
    return Dataset(
        name="fashion_mnist",
        x_train=_images(x_train),
        y_train=torch.from_numpy(y_train.astype(np.int64)),
        x_test=_images(x_test),
        y_test=torch.from_numpy(y_test.astype(np.int64)),
        input_shape=(1, 28, 28),
        num_classes=10,
    )
