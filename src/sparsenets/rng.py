"""Explicit randomness: every random choice takes a generator derived from (seed, step, index).

A run therefore replays exactly, resumes exactly from a checkpoint (no generator state needs to
be saved), and distributed ranks agree without communication.

Each kind of random choice draws from its own named :class:`Stream`, so adding a new random
choice never shifts the numbers of an existing one. A stream's value is part of the seed
derivation: changing one would change every run that uses it.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum

import torch


class Stream(IntEnum):
    """Named random streams: ``generator(seed, step, layer_index, Stream.X)``."""

    #: tie-breaking when selecting weights to drop (and to grow) in a topology update
    DROP = 0
    #: random grow scores (SET, MEST, CTRE's random share) and tie-breaking among grow scores
    GROW = 1
    #: GraNet's extra drop by magnitude after the scheduled pruning
    REGROW_DROP = 2
    #: the initial random mask of each layer (drawn at step 0)
    INIT_MASK = 3
    #: initial values of regrown weights with ``regrow_init="random"``
    REGROW_VALUES = 4
    #: the order of training examples in an epoch (``generator(seed, epoch, Stream.DATA_ORDER)``)
    DATA_ORDER = 11
    #: tie-breaking when pruning at initialization: ``generator(seed, round, Stream.PRUNE_TIES)``
    #: for a global selection, ``generator(seed, round, layer_index, Stream.PRUNE_TIES)`` per
    #: layer, round −1 for LAMP's counts (the order of equal weights in its per-layer sorts)
    PRUNE_TIES = 12
    #: tie-breaking of the magnitude pruning after each lottery-ticket (IMP) round and of the
    #: re-pruning of Lottery Pools (``generator(seed, round, Stream.IMP_TIES)``)
    IMP_TIES = 13
    #: which training examples are held out as the validation split (``generator(seed, Stream.VALIDATION_SPLIT)``)
    VALIDATION_SPLIT = 21


def derive_seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (stable across processes and Python versions)."""
    digest = hashlib.blake2b(",".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``parts`` (e.g. ``generator(seed, step, layer)``).

    Random draws are made on the CPU and moved to the parameters' device, so CPU and CUDA runs
    make the same random choices.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(*parts))
    return gen
