"""Dataset lookup by name and a mini-batch iterator."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import torch

from sparsenets.data.base import Dataset
from sparsenets.errors import SparsenetsError, choice_error

log = logging.getLogger(__name__)

DATASETS: tuple[str, ...] = ("fashion_mnist", "digits", "mnist1d")


def load_dataset(name: str, *, data_dir: str | None = None) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) into memory.

    Args:
        name: ``"fashion_mnist"``, ``"digits"`` or ``"mnist1d"``.
        data_dir: directory of the Fashion-MNIST files (ignored by the other datasets).

    Raises:
        SparsenetsError: unknown name, missing files or missing optional dependency.
    """
    if name == "fashion_mnist":
        from sparsenets.data.fashion_mnist import load_fashion_mnist

        ds = load_fashion_mnist(data_dir)
    elif name == "digits":
        from sparsenets.data.digits import load_digits_dataset

        ds = load_digits_dataset()
    elif name == "mnist1d":
        from sparsenets.data.mnist_1d import load_mnist1d

        ds = load_mnist1d()
    else:
        raise choice_error("dataset", name, DATASETS)
    log.info("loaded %r", ds)
    return ds


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield mini-batches ``(x[idx], y[idx])`` covering every sample exactly once.

    Args:
        x: inputs of shape ``(N, ...)``.
        y: targets of shape ``(N, ...)``.
        batch_size: samples per batch; the last batch may be smaller.
        shuffle: visit samples in ``torch.randperm(N, generator=generator)`` order.
        generator: RNG for the permutation (seed it for reproducible epochs).

    Yields:
        ``(xb, yb)`` with shapes ``(B, ...)``, ``B <= batch_size``.
    """
    if int(batch_size) < 1:
        raise SparsenetsError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = x.shape[0]
    if y.shape[0] != n:
        raise SparsenetsError(f"x and y differ in length: {n} vs {y.shape[0]}")
    batch_size = int(batch_size)
    if shuffle:
        rng_device = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=rng_device).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]
    else:
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
