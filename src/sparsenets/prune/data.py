"""The pruning batch of data-driven pruning at initialization (SNIP, GraSP).

``data`` is what users have at hand: one ``(x, y)`` pair of tensors, or an iterable of such
batches (a ``DataLoader``, a list). Samples are taken in the order the iterable gives them, so
the batch is reproducible whenever the data order is; nothing here draws random numbers.

* :func:`first_samples`: the first ``n`` samples (SNIP: ``10 × num_classes``, as the
  Synaptic-Flow code takes ``prune_dataset_ratio × num_classes``);
* :func:`balanced_samples`: the first ``per_class`` samples of every class (GraSP's
  ``GraSP_fetch_data``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

from ..errors import SparsenetsError

Batch = tuple[torch.Tensor, torch.Tensor]


def iter_batches(data: object, method: str) -> Iterator[Batch]:
    """Yield validated ``(x (B, ...), y (B,) int64)`` batches from ``data`` (see module doc).

    Raises:
        SparsenetsError: ``data`` is None, not iterable, or holds something other than pairs
            of tensors with equal batch sizes and integer labels.
    """
    if data is None:
        raise SparsenetsError(f"{method} scores need data: pass data=(x, y) or an iterable of (x, y) batches")
    if _is_pair(data):
        yield _check_batch(data, method, 0)
        return
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise SparsenetsError(
            f"{method} data must be (x, y) tensors or an iterable of (x, y) batches, got {type(data).__name__}"
        )
    for index, batch in enumerate(data):
        yield _check_batch(batch, method, index)


def _is_pair(value: object) -> bool:
    return (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, torch.Tensor) for v in value)
    )


def _check_batch(batch: object, method: str, index: int) -> Batch:
    if not _is_pair(batch):
        got = f"{type(batch).__name__} of length {len(batch)}" if isinstance(batch, (tuple, list)) else type(batch).__name__
        raise SparsenetsError(f"{method} data batch {index} must be a pair (x, y) of tensors, got {got}")
    x, y = batch
    if x.dim() < 1 or y.dim() != 1 or x.shape[0] != y.shape[0]:
        raise SparsenetsError(
            f"{method} data batch {index}: x (B, ...) and y (B,) must share the batch size, "
            f"got x {tuple(x.shape)} and y {tuple(y.shape)}"
        )
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise SparsenetsError(f"{method} data batch {index}: labels y must be integer class indices, got {y.dtype}")
    return x, y.long()


def peek(data: object, method: str) -> tuple[Batch, Iterator[Batch]]:
    """The first batch of ``data`` and an iterator over *all* its batches (the first included),
    so a one-shot iterable is read once.

    Raises:
        SparsenetsError: as :func:`iter_batches`, or ``data`` holds no batch.
    """
    batches = iter_batches(data, method)
    first = next(batches, None)
    if first is None:
        raise SparsenetsError(f"{method} data holds no batch")
    return first, itertools.chain([first], batches)


def first_samples(batches: Iterable[Batch], n: int, method: str) -> Batch:
    """The first ``n`` samples of validated ``batches`` as one batch ``(x (n, ...), y (n,))``.

    Raises:
        SparsenetsError: ``data`` holds fewer than ``n`` samples.
    """
    xs, ys, have = [], [], 0
    for x, y in batches:
        take = min(n - have, x.shape[0])
        xs.append(x[:take])
        ys.append(y[:take])
        have += take
        if have >= n:
            return torch.cat(xs), torch.cat(ys)
    raise SparsenetsError(f"{method} needs {n} samples, data holds only {have}")


def balanced_samples(batches: Iterable[Batch], per_class: int, num_classes: int, method: str) -> Batch:
    """The first ``per_class`` samples of every class ``0 … num_classes − 1``, ordered by class.

    Returns:
        ``(x (per_class · num_classes, ...), y)`` with ``y`` sorted by class, as GraSP's reference.

    Raises:
        SparsenetsError: a label outside ``[0, num_classes)``, or the data ends before every class
            has ``per_class`` samples (the message names the classes short).
    """
    picked: list[list[Batch]] = [[] for _ in range(num_classes)]
    counts = [0] * num_classes
    for x, y in batches:
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise SparsenetsError(f"{method} labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")
        for label in range(num_classes):
            need = per_class - counts[label]
            if need > 0:
                rows = (y == label).nonzero().squeeze(1)[:need]
                picked[label].append((x[rows], y[rows]))
                counts[label] += rows.numel()
        if min(counts) >= per_class:
            xs = [part[0] for parts in picked for part in parts]
            ys = [part[1] for parts in picked for part in parts]
            return torch.cat(xs), torch.cat(ys)
    short = {label: c for label, c in enumerate(counts) if c < per_class}
    raise SparsenetsError(
        f"{method} needs {per_class} samples of each of {num_classes} classes; data ran out with "
        f"{{class: samples}} {short}"
    )


def chunks(x: torch.Tensor, y: torch.Tensor, size: int | None) -> Iterator[Batch]:
    """Consecutive slices of ``(x, y)`` of at most ``size`` samples (all at once for ``None``)."""
    step = x.shape[0] if size is None else size
    for start in range(0, x.shape[0], step):
        yield x[start : start + step], y[start : start + step]
