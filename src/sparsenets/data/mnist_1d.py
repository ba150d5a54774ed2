"""MNIST-1D generated locally with the ``mnist1d`` package (never downloaded)."""

from __future__ import annotations

import random

import numpy as np
import torch

from sparsenets.data.base import Dataset
from sparsenets.errors import SparsenetsError

DEFAULT_SEED = 42


def load_mnist1d(seed: int = DEFAULT_SEED) -> Dataset:
    """Generate MNIST-1D (4000 train / 1000 test sequences of length 40, 10 classes).

    Uses ``mnist1d.data.make_dataset`` with the default arguments and ``seed``; Python's and
    NumPy's global RNG states (which ``make_dataset`` reseeds) are restored afterwards.
    Inputs are standardized with the scalar mean/std of the training split.

    Returns:
        A :class:`Dataset` with ``x_train`` float32 ``(4000, 1, 40)``, ``x_test``
        ``(1000, 1, 40)``, int64 labels in ``[0, 10)``.

    Raises:
        SparsenetsError: ``mnist1d`` is not installed.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise SparsenetsError(
            "dataset 'mnist1d' needs the mnist1d package: pip install mnist1d "
            "(or pip install 'sparsenets[mnist1d]')"
        ) from None

    args = get_dataset_args()
    if hasattr(args, "seed"):
        args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    x_tr = np.asarray(data["x"], dtype=np.float32)
    x_te = np.asarray(data["x_test"], dtype=np.float32)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std
    length = x_tr.shape[-1]
    return Dataset(
        name="mnist1d",
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr)).reshape(-1, 1, length),
        y_train=torch.from_numpy(np.asarray(data["y"], dtype=np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)).reshape(-1, 1, length),
        y_test=torch.from_numpy(np.asarray(data["y_test"], dtype=np.int64)),
        input_shape=(1, length),
        num_classes=10,
    )
