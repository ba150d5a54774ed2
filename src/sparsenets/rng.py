"""Explicit randomness: every random choice takes a generator derived from (seed, step, index).

A run therefore replays exactly, resumes exactly from a checkpoint (no generator state needs to
be saved), and distributed ranks agree without communication.
"""

from __future__ import annotations

import hashlib

import torch


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
