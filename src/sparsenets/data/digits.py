"""scikit-learn's 8x8 handwritten digits (1797 samples, bundled with scikit-learn)."""

from __future__ import annotations

import numpy as np
import torch

from sparsenets.data.base import Dataset


def load_digits_dataset() -> Dataset:
    """Load the sklearn digits as a stratified 80/20 split (``random_state=0``).

    Pixels (0..16) are divided by 16, then standardized with the scalar mean/std of the
    training split.

    Returns:
        A :class:`Dataset` with ``x_train`` float32 ``(1437, 1, 8, 8)``, ``x_test``
        ``(360, 1, 8, 8)``, int64 labels in ``[0, 10)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.data.astype(np.float32) / 16.0  # (1797, 64)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std
    return Dataset(
        name="digits",
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr, dtype=np.float32)).reshape(-1, 1, 8, 8),
        y_train=torch.from_numpy(np.ascontiguousarray(y_tr)),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te, dtype=np.float32)).reshape(-1, 1, 8, 8),
        y_test=torch.from_numpy(np.ascontiguousarray(y_te)),
        input_shape=(1, 8, 8),
        num_classes=10,
    )
