"""Collectives over the process group accelerate created, for components that keep global state.

A component says what it needs ("the max over ranks", "every rank's rows") and gets the single-process answer
when there is only one process, so method code never branches on the world size. The functions are plain
`torch.distributed` calls on the default group: accelerate initialises it (NCCL on GPUs, gloo on CPU).
"""

from __future__ import annotations

import torch
import torch.distributed as td


def world_size() -> int:
    return td.get_world_size() if td.is_available() and td.is_initialized() else 1


def rank() -> int:
    return td.get_rank() if td.is_available() and td.is_initialized() else 0


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (a new tensor; the input is unchanged)."""
    if world_size() == 1:
        return t
    t = t.clone()
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return t


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Element-wise mean over ranks (a new tensor)."""
    n = world_size()
    if n == 1:
        return t
    t = t.clone()
    td.all_reduce(t, op=td.ReduceOp.SUM)
    return t / n


def gather(t: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor concatenated along dim 0 in rank order (all ranks must pass the same shape)."""
    n = world_size()
    if n == 1:
        return t
    t = t.contiguous()
    parts = [torch.empty_like(t) for _ in range(n)]
    td.all_gather(parts, t)
    return torch.cat(parts)
