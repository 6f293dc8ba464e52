"""Training streams: a stage's length in steps, each stream's per-process batch, and its seeded, resumable loader.

Data order and augmentation are a pure function of (seed, position in the stream), so a loader started at any
step (resume) yields exactly what the uninterrupted run would have, with any number of workers or processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch

from ssl_kd.data import StreamSampler
from ssl_kd.engine.stage import Stage
from ssl_kd.errors import UserError


def micro_batch(stage: Stage, stream: str, world_size: int) -> int:
    """Per-process, per-accumulation-step batch of a stream: the global batch must divide evenly."""
    size, per = stage.streams[stream].batch_size, world_size * stage.cfg.grad_accum
    if size % per:
        raise UserError(
            f"stages.{stage.name}.batch_size: stream '{stream}' has global batch {size}, which must divide "
            f"evenly over {world_size} process(es) x {stage.cfg.grad_accum} accumulation step(s)."
        )
    return size // per


def stage_lengths(stage: Stage) -> tuple[int, int]:
    """(total steps, steps per epoch) of a stage."""
    cfg = stage.cfg
    if not stage.trains:
        return 0, 1
    if not stage.streams:
        raise RuntimeError(f"stage type '{stage.type_name}' declared no training stream in setup()")
    first = next(iter(stage.streams.values()))
    spe = cfg.steps_per_epoch or len(first.dataset) // first.batch_size
    if cfg.iters is not None:
        spe = max(1, spe)  # an epoch is only a reporting unit here (40 labels < one batch of 64 is fine)
    if spe < 1:
        raise UserError(
            f"stages.{stage.name}.batch_size: {first.batch_size} is larger than the training data "
            f"({len(first.dataset)} samples); lower it or set steps_per_epoch."
        )
    if cfg.epochs is None and cfg.iters is None:
        raise UserError(f"stages.{stage.name}: give the stage a length: `iters: N` or `epochs: N`.")
    total = cfg.epochs * spe if cfg.epochs is not None else cfg.iters
    return total, spe


def make_iterators(
    stage: Stage, start_step: int, *, seed: int, stage_index: int, rank: int, world_size: int, num_workers: int,
    pin_memory: bool,
) -> dict[str, Iterator]:  # fmt: skip
    iters = {}
    for i, (sname, stream) in enumerate(stage.streams.items()):
        sampler = StreamSampler(
            len(stream.dataset), micro_batch(stage, sname, world_size), seed=seed * 1000 + 17 * stage_index + i,
            rank=rank, world_size=world_size, drop_last=True, start_batch=start_step * stage.cfg.grad_accum,
        )  # fmt: skip
        if getattr(stream.dataset, "batched", False):  # makes whole batches itself (e.g. on the device)
            iters[sname] = _batched(stream.dataset, sampler)
            continue
        loader = torch.utils.data.DataLoader(
            stream.dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
            persistent_workers=False, generator=torch.Generator().manual_seed(0),
            prefetch_factor=4 if num_workers > 0 else None,
        )  # fmt: skip
        iters[sname] = iter(loader)
    return iters


def _batched(dataset, sampler: StreamSampler) -> Iterator[dict]:
    for t in itertools.count(sampler.start_batch):
        yield dataset.batch(*sampler.batch_arrays(t))
