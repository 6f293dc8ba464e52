"""Training streams: a stage's length in steps, each stream's per-process batch, and its seeded, resumable loader.

Data order and augmentation are a pure function of (seed, position in the stream), so a loader started at any
step (resume) yields exactly what the uninterrupted run would have, with any number of workers or processes.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from ssl_kd.data import MPerClassSampler, StreamSampler, mix_seed, stream_labels
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
    _check_sampler_streams(stage)
    for i, (sname, stream) in enumerate(stage.streams.items()):
        micro, stream_seed = micro_batch(stage, sname, world_size), seed * 1000 + 17 * stage_index + i
        start = start_step * stage.cfg.grad_accum
        if stage.cfg.sampler.kind == "m_per_class" and sname in stage.cfg.sampler.streams:
            sampler = _class_sampler(stage, sname, micro, stream_seed, rank, world_size, start)
        else:
            sampler = StreamSampler(
                len(stream.dataset), micro, seed=stream_seed, rank=rank, world_size=world_size, drop_last=True,
                start_batch=start,
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


def _check_sampler_streams(stage: Stage) -> None:
    sc = stage.cfg.sampler
    missing = sorted(set(sc.streams) - set(stage.streams)) if sc.kind != "random" else []
    if missing:
        raise UserError(
            f"stages.{stage.name}.sampler.streams: {missing} are not streams of this '{stage.type_name}' stage "
            f"(it has {sorted(stage.streams)})."
        )


def _class_sampler(
    stage: Stage, sname: str, micro: int, seed: int, rank: int, world_size: int, start: int
) -> MPerClassSampler:  # fmt: skip
    """`sampler: {kind: m_per_class}`: each process's micro-batch must hold whole classes of m images."""
    m, where = stage.cfg.sampler.m, f"stages.{stage.name}"
    if micro % m:
        raise UserError(
            f"{where}.batch_size: stream '{sname}' gives each process a batch of {micro} ({world_size} process(es) "
            f"x {stage.cfg.grad_accum} accumulation step(s)), which is not a multiple of {where}.sampler.m = {m}; "
            f"pick a batch size divisible by m x processes x accumulation steps."
        )
    try:
        return MPerClassSampler(
            stream_labels(stage.streams[sname].dataset), m, micro, seed, rank=rank, world_size=world_size,
            start_batch=start,
        )  # fmt: skip
    except ValueError as e:
        raise UserError(f"{where}.sampler: {e}; lower {where}.batch_size or {where}.sampler.m.") from None


def _batched(dataset, sampler: StreamSampler | MPerClassSampler) -> Iterator[dict]:
    for t in itertools.count(sampler.start_batch):
        yield dataset.batch(*sampler.batch_arrays(t))


def one_pass(
    dataset, batch_size: int, *, seed: int, rank: int, world_size: int, num_workers: int, pin_memory: bool
) -> Iterator[dict[str, torch.Tensor]]:  # fmt: skip
    """One pass over a stream dataset in position order, this rank's share (positions rank, rank + W, ...), each
    sample's views seeded by (seed, position). Every rank yields the same number of equal-sized batches: shards
    one short are padded by repeating a position, and `valid` marks the real samples (collectives that gather the
    batch need equal shapes; the padded rows must not count)."""
    n = len(dataset)
    per = -(-n // world_size)
    mine = np.arange(rank, n, world_size, dtype=np.int64)
    valid = np.arange(per) < len(mine)
    mine = np.concatenate([mine, np.full(per - len(mine), mine[-1] if len(mine) else 0, dtype=np.int64)])
    seeds = np.array([mix_seed(seed, int(p)) for p in mine], dtype=np.uint64)
    cuts = range(0, per, batch_size)
    if getattr(dataset, "batched", False):  # makes whole batches itself (e.g. on the device)
        batches = (dataset.batch(mine[s : s + batch_size], seeds[s : s + batch_size]) for s in cuts)
    else:
        sampler = [list(zip(mine[s : s + batch_size].tolist(), seeds[s : s + batch_size].tolist())) for s in cuts]
        batches = iter(
            torch.utils.data.DataLoader(
                dataset,
                batch_sampler=sampler,
                num_workers=num_workers,
                pin_memory=pin_memory,
                generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
        )
    for s, batch in zip(cuts, batches):
        batch["valid"] = torch.as_tensor(valid[s : s + batch_size])
        yield batch
