"""Training streams: a stage's length in steps, each stream's per-process batch, and its seeded, resumable loader.

Data order and augmentation are a pure function of (seed, position in the stream), so a loader started at any
step (resume) yields exactly what the uninterrupted run would have, with any number of workers or processes.

`last_batch: drop` (default) cuts each pass over the data to whole batches (len // batch_size steps per epoch);
`keep` ends each pass with a smaller step of the leftover samples (ceil(len / batch_size) steps: PyTorch's
`DataLoader(drop_last=False)`, which mdistiller and most KD references use), split evenly over the processes and
accumulation steps so every micro-batch of that step has the same size and the loss stays the step's mean.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import torch

from ssl_kd.data import MPerClassSampler, StreamSampler, mix_seed, stream_labels
from ssl_kd.data.hashing import mix_seeds
from ssl_kd.engine.interrupt import ignore_stop_signals
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
    if cfg.last_batch == "keep" and cfg.steps_per_epoch is not None:
        raise UserError(
            f"stages.{stage.name}.last_batch: keep makes an epoch one pass over the data (ceil(len / batch_size) "
            f"steps), but steps_per_epoch is set to {cfg.steps_per_epoch}; drop one of the two (steps_per_epoch: null)."
        )
    n, size = len(first.dataset), first.batch_size
    spe = cfg.steps_per_epoch or (-(-n // size) if cfg.last_batch == "keep" else n // size)
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
        sampler = _sampler(stage, sname, micro, stream_seed, rank, world_size, start_step * stage.cfg.grad_accum)
        if getattr(stream.dataset, "batched", False):  # makes whole batches itself (e.g. on the device)
            iters[sname] = _batched(stream.dataset, sampler)
            continue
        loader = torch.utils.data.DataLoader(
            stream.dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
            persistent_workers=False, generator=torch.Generator().manual_seed(0),
            prefetch_factor=4 if num_workers > 0 else None, worker_init_fn=ignore_stop_signals,
        )  # fmt: skip
        iters[sname] = iter(loader)
    return iters


def _sampler(
    stage: Stage, sname: str, micro: int, seed: int, rank: int, world_size: int, start: int
) -> StreamSampler | MPerClassSampler:  # fmt: skip
    if stage.cfg.last_batch == "keep":
        return _keep_last_sampler(stage, sname, micro, seed, rank, world_size, start)
    if stage.cfg.sampler.kind == "m_per_class" and sname in stage.cfg.sampler.streams:
        return _class_sampler(stage, sname, micro, seed, rank, world_size, start)
    return StreamSampler(
        len(stage.streams[sname].dataset), micro, seed=seed, rank=rank, world_size=world_size, drop_last=True,
        start_batch=start,
    )  # fmt: skip


def check_streams(stage: Stage, world_size: int) -> None:
    """Before any work (engine/plan.py: preflight): every training stream's batch divides over the processes and
    its sampler (`last_batch: keep`, `sampler:`) can be built, as `make_iterators` will build it when the stage
    starts."""
    if not stage.trains:
        return
    _check_sampler_streams(stage)
    for sname in stage.streams:
        _sampler(stage, sname, micro_batch(stage, sname, world_size), 0, 0, world_size, 0)


def finish_batch(dataset, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of `dataset` as the model takes it, after it was moved to the device: views the dataset deferred
    (uint8 crops of the large-image path) are normalised here, on the batch (`ViewDataset.finish`)."""
    finish = getattr(dataset, "finish", None)
    return finish(batch) if finish is not None else batch


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


class KeepLastSampler(StreamSampler):
    """`last_batch: keep`: the stream of seeded permutations (StreamSampler's, same seeds), each pass cut into
    S = ceil(n / B) steps of B = micro · processes · accumulation samples, the last one holding the r = n − (S − 1)·B
    left over. Micro-batch t is accumulation step a = t mod k of optimizer step t // k; within a step the samples
    are laid out as StreamSampler lays them out (accumulation step, then rank), r / (processes · k) each in the
    last step. O(1) in t, so a resume needs no replay; with n divisible by B it is StreamSampler's stream exactly."""

    def __init__(
        self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, grad_accum: int = 1,
        start_batch: int = 0,
    ):  # fmt: skip
        super().__init__(
            n, batch_size, seed, rank=rank, world_size=world_size, drop_last=False, start_batch=start_batch
        )
        self.grad_accum = int(grad_accum)
        self.step_batch = self.global_batch * self.grad_accum
        self.steps_per_pass = -(-self.n // self.step_batch)
        self.last_size = self.n - (self.steps_per_pass - 1) * self.step_batch  # global samples of a pass's last step
        if self.last_size % (self.world_size * self.grad_accum):
            raise ValueError(
                f"the last step's {self.last_size} samples do not split over {self.world_size} x {grad_accum}"
            )

    def batch_arrays(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        step, a = divmod(t, self.grad_accum)
        p, j = divmod(step, self.steps_per_pass)
        last = j == self.steps_per_pass - 1
        b = self.last_size // (self.world_size * self.grad_accum) if last else self.batch_size
        offset = j * self.step_batch + (a * self.world_size + self.rank) * b
        q = np.arange(offset, offset + b, dtype=np.int64)
        return self.permutation(p)[q], mix_seeds(self.seed, p * self.n + q)


def _keep_last_sampler(
    stage: Stage, sname: str, micro: int, seed: int, rank: int, world_size: int, start: int
) -> KeepLastSampler:  # fmt: skip
    """`last_batch: keep`, refused where a kept partial batch cannot be exact: several streams (each would end its
    pass at another step), class-aware batches, or a leftover that does not split evenly (unequal micro-batches
    would weight the step's samples unequally)."""
    cfg, where = stage.cfg, f"stages.{stage.name}.last_batch"
    if len(stage.streams) > 1:
        raise UserError(
            f"{where}: keep needs a stage with one training stream; this '{stage.type_name}' stage draws "
            f"{sorted(stage.streams)}. Use last_batch: drop."
        )
    if cfg.sampler.kind != "random":
        raise UserError(
            f"{where}: keep works with `sampler: {{kind: random}}` only (here {cfg.sampler.kind}); use drop."
        )
    n, size, per = len(stage.streams[sname].dataset), stage.streams[sname].batch_size, world_size * cfg.grad_accum
    rest = n - (-(-n // size) - 1) * size
    if rest % per:
        raise UserError(
            f"{where}: keep ends each pass over the {n} samples with a batch of {rest}, which does not divide "
            f"evenly over {world_size} process(es) x {cfg.grad_accum} accumulation step(s); use last_batch: drop, "
            f"or a batch size / process count whose leftover divides."
        )
    return KeepLastSampler(
        n, micro, seed, rank=rank, world_size=world_size, grad_accum=cfg.grad_accum, start_batch=start
    )


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
                worker_init_fn=ignore_stop_signals,
            )  # fmt: skip
        )
    for s, batch in zip(cuts, batches):
        batch["valid"] = torch.as_tensor(valid[s : s + batch_size])
        yield batch
