"""Data-parallel training on ``torch.distributed``: which rank this is, how a batch is split, and
the few collectives the sparsity needs so that every rank makes the same topology decisions.

Under DDP every rank holds the whole model; gradients are averaged in the backward pass, so the
weights and the (masked) gradients a topology update reads are the same on every rank, and so
are the seeded random choices. What a method measures on its own shard of the batch (CTRE's
activations) is gathered with :func:`gather_rows` first. :func:`check_masks_agree` compares a
checksum of the masks across ranks.

With no process group (the usual single-process run) every function here is the identity.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import SparsenetsError
from .launch import launched_by_torchrun

log = logging.getLogger(__name__)

#: Environment variables torchrun sets for each rank.
RANK_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run (``size == 1``: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether several processes train together."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Whether this rank writes files (rank 0)."""
        return self.rank == 0


def current_world() -> World:
    """The :class:`World` of the initialized default process group (single process without one)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def init_from_env(device: torch.device, timeout_s: float = 600.0) -> World:
    """Join the process group torchrun describes (``gloo`` on CPU, ``nccl`` on CUDA), once.

    Returns the (single-process) default world when ``WORLD_SIZE`` is unset or 1.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return current_world()
    if not dist.is_available():
        raise SparsenetsError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise SparsenetsError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} unset: launch with torchrun "
            f"(or sparsenets train --nproc N)"
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    timeout = timedelta(seconds=timeout_s)
    # torchrun's agent hosts the store (else rank 0 does). The keys of a restarted attempt get
    # their own prefix: a restart would otherwise read the dead attempt's addresses and fail to
    # connect (seen with gloo under --max-restarts).
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                          is_master=not agent_store and rank == 0, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    dist.init_process_group(backend, store=dist.PrefixStore(f"sparsenets/attempt_{attempt}", store),
                            rank=rank, world_size=size, timeout=timeout)
    world = current_world()
    log.info("rank %d of %d (%s)", world.rank, world.size, backend)
    return world


def shard(n: int, world: World) -> slice:
    """The contiguous part of a batch of ``n`` rows this rank takes (sizes differ by at most one)."""
    return slice(n * world.rank // world.size, n * (world.rank + 1) // world.size)


def gather_rows(tensor: torch.Tensor, world: World | None = None) -> torch.Tensor:
    """Every rank's ``tensor`` ``(rows_r, ...)`` concatenated along dim 0 in rank order (the
    whole batch when each rank holds its :func:`shard`); the identity in a single process."""
    world = world or current_world()
    if not world.active:
        return tensor
    device = _collective_device()
    sizes = torch.zeros(world.size, dtype=torch.int64, device=device)
    sizes[world.rank] = tensor.shape[0]
    dist.all_reduce(sizes)
    longest = int(sizes.max())
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world.size)]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[: int(size)] for part, size in zip(parts, sizes, strict=True)]).to(tensor.device)


def all_reduce_sum(values: torch.Tensor, world: World | None = None) -> torch.Tensor:
    """``values`` summed over the ranks (a new tensor; the same tensor's copy in one process)."""
    world = world or current_world()
    if not world.active:
        return values.clone()
    total = values.to(_collective_device(), copy=True)
    dist.all_reduce(total)
    return total.to(values.device)


def _collective_device() -> torch.device:
    """Where the default group's collectives take tensors: the current GPU for NCCL, else CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def broadcast_object(obj: Any, world: World | None = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (a picklable, trusted value made by this program)."""
    world = world or current_world()
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(world: World | None = None) -> None:
    """Wait for every rank (nothing in one process)."""
    world = world or current_world()
    if world.active:
        dist.barrier()


def mask_checksums(masks) -> torch.Tensor:
    """``(layers, 2)`` int64: per layer, the active count and a position hash (order-free sum of a
    mixing of each active flat index), as a cheap fingerprint of a :class:`~sparsenets.MaskStore`."""
    rows = []
    for name in masks:
        index = masks.index(name).to(torch.int64)
        mixed = (index * 2654435761 + 97) % 4294967291
        rows.append(torch.stack([torch.tensor(index.numel()), mixed.sum().cpu()]))
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.int64)


def check_masks_agree(masks, step: int, world: World | None = None) -> None:
    """Raise a one-line :class:`SparsenetsError` at the first layer whose mask differs between ranks."""
    world = world or current_world()
    if not world.active:
        return
    mine = mask_checksums(masks)
    backend_device = _collective_device()
    parts = [torch.empty_like(mine, device=backend_device) for _ in range(world.size)]
    dist.all_gather(parts, mine.to(backend_device))
    names = list(masks)
    for rank, theirs in enumerate(parts):
        differ = (theirs.cpu() != mine).any(dim=1).nonzero().squeeze(1)
        if differ.numel():
            name = names[int(differ[0])]
            raise SparsenetsError(
                f"masks differ between ranks after the topology update at step {step}: layer {name!r} "
                f"on rank {world.rank} vs rank {rank} (nnz {int(mine[differ[0], 0])} vs {int(theirs[differ[0], 0])})"
            )
