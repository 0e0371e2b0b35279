"""Data-parallel forward-only stages: the launched processes split a stage's batches and gather the results.

Under `accelerate launch --multi_gpu --num_processes N` (what config/launch.py gives evaluation and the AW table of
a multi-process recipe) every process runs the same stage command with the whole model. Each takes every
N-th batch of the list the single process would build (`Shard.take`) — the same rows in the same batches, so
each row's numbers are the single-process ones (padding and batch composition unchanged) — and the results
are gathered on every rank (`Shard.gather_dict`, `Shard.sum`) so that the rest of the stage (selection,
scoring) runs identically everywhere; only rank 0 writes artifacts. Gathering uses a gloo process group on
CPU tensors and Python objects, so it works the same on a GPU node (where each process uses
`cuda:LOCAL_RANK`) and on a CPU box; the amounts are small (per-row losses, generated strings).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

logger = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's part of a forward-only stage. rank, world: from the launcher (0, 1 when not launched)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def take(self, items: list[T]) -> list[T]:
        """Every world-th item, starting at rank (round-robin keeps the share of long batches even)."""
        return items[self.rank::self.world]

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes (CPU). With disjoint rows (zeros elsewhere) this is an exact gather."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        out = tensor.detach().to("cpu").clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def gather_dict(self, mine: dict[Any, T]) -> dict[Any, T]:
        """The union of every process's dict (keys are disjoint: each process's own items)."""
        if self.world == 1:
            return dict(mine)
        import torch.distributed as dist

        parts: list[dict | None] = [None] * self.world
        dist.all_gather_object(parts, mine)
        merged: dict[Any, T] = {}
        for part in parts:
            merged.update(part or {})
        return merged

    def device(self) -> str:
        """The device of this process's model: `cuda:LOCAL_RANK` on a GPU node, else cpu."""
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"


def stage_shard() -> Shard:
    """This process's shard; joins the launched processes into a gloo group on first use (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world == 1:
        return Shard()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")  # env:// — MASTER_ADDR/PORT, RANK, WORLD_SIZE from the launcher
    shard = Shard(dist.get_rank(), dist.get_world_size())
    logger.info("forward-only stage sharded over %d processes (each takes every %d-th batch)", shard.world,
                shard.world)
    return shard
