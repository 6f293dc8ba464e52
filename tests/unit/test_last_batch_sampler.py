"""`last_batch: keep | drop`: steps per epoch, the kept partial batch's size and layout over processes and
accumulation steps, against an independent transcription of PyTorch's `DataLoader(shuffle=True, drop_last=False)`
layout (the references' loaders: mdistiller, RepDistiller, CTKD, HSAKD), and the layouts that are refused."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ssl_kd.config.schema import StageConfig
from ssl_kd.data import StreamSampler, mix_seed
from ssl_kd.data.sampler import SamplerConfig
from ssl_kd.engine.stage import Stream
from ssl_kd.engine.streams import KeepLastSampler, make_iterators, stage_lengths
from ssl_kd.errors import UserError


def _stage(n: int, batch: int = 64, streams: int = 1, **cfg) -> SimpleNamespace:
    dataset = type("D", (), {"__len__": lambda self: n, "__getitem__": lambda self, i: i, "batched": False})()
    names = ["train", "unlabeled"][:streams]
    return SimpleNamespace(
        name="s", type_name="kd", trains=True, cfg=StageConfig(type="kd", batch_size=batch, **cfg),
        streams={k: Stream(dataset, batch) for k in names},
    )  # fmt: skip


@pytest.mark.parametrize(("last_batch", "spe"), [("drop", 781), ("keep", 782)])
def test_steps_per_epoch_on_cifar_at_batch_64(last_batch, spe):
    assert stage_lengths(_stage(50000, epochs=240, last_batch=last_batch)) == (240 * spe, spe)
    assert StageConfig(type="kd").last_batch == "drop"  # the engine's default is unchanged


def ref_loader_batches(n: int, batch: int, seed: int, p: int) -> list[tuple[list[int], list[int]]]:
    """DataLoader(drop_last=False) on pass p's permutation, written as a loop: consecutive slices of `batch`, the
    last one shorter; each sample's seed hashes (seed, its position in the endless stream p·n + i)."""
    perm = np.random.default_rng([seed, p]).permutation(n).tolist()
    out, i = [], 0
    while i < n:
        out.append((perm[i : i + batch], [mix_seed(seed, p * n + j) for j in range(i, min(i + batch, n))]))
        i += batch
    return out


def _step(samplers: list[list[KeepLastSampler]], s: int) -> tuple[list[int], list[int]]:
    """Global batch of optimizer step s: accumulation step a, then rank r (samplers[r] per rank)."""
    k = samplers[0].grad_accum
    pos, seeds = [], []
    for a in range(k):
        for sampler in samplers:
            p, q = sampler.batch_arrays(s * k + a)
            pos += p.tolist()
            seeds += [int(v) for v in q]
    return pos, seeds


@pytest.mark.parametrize(("world", "accum"), [(1, 1), (2, 1), (1, 2), (2, 2), (4, 4)])
def test_keep_equals_the_reference_loader_over_processes_and_accumulation(world, accum):
    n, batch, seed = 50000, 64, 7
    micro = batch // (world * accum)
    samplers = [KeepLastSampler(n, micro, seed, rank=r, world_size=world, grad_accum=accum) for r in range(world)]
    assert samplers[0].steps_per_pass == 782 and samplers[0].last_size == 16  # 50000 = 781 x 64 + 16
    for p in (0, 1):
        ref = ref_loader_batches(n, batch, seed, p)
        for j in (0, 1, 780, 781):
            assert _step(samplers, p * 782 + j) == ref[j]
    last = [samplers[r].batch_arrays(781 * accum + a)[0] for r in range(world) for a in range(accum)]
    assert {len(b) for b in last} == {16 // (world * accum)}  # every micro-batch of the partial step alike
    whole = np.concatenate([samplers[0].batch_arrays(t)[0] for t in range(782)]) if world == accum == 1 else None
    if whole is not None:  # one pass is every sample exactly once
        assert np.array_equal(np.sort(whole), np.arange(n))


def test_keep_is_the_drop_stream_when_the_batch_divides_the_data():
    keep, drop = KeepLastSampler(640, 32, 3, rank=1, world_size=2), StreamSampler(640, 32, 3, rank=1, world_size=2)
    for t in (0, 9, 10, 25):
        assert all(np.array_equal(x, y) for x, y in zip(keep.batch_arrays(t), drop.batch_arrays(t)))


def test_a_resumed_sampler_starts_at_its_micro_batch():
    full = KeepLastSampler(1000, 64, 1)
    resumed = iter(KeepLastSampler(1000, 64, 1, start_batch=15))  # step 15 is the partial one (1000 = 15 x 64 + 40)
    assert [len(next(resumed)) for _ in range(2)] == [40, 64]
    assert full.batch(15) == KeepLastSampler(1000, 64, 1, start_batch=15).batch(15)


def _iterators(stage, world: int = 1) -> None:
    make_iterators(stage, 0, seed=0, stage_index=0, rank=0, world_size=world, num_workers=0, pin_memory=False)


def test_refused_where_a_kept_partial_batch_cannot_be_exact():
    with pytest.raises(UserError, match=r"stages.s.last_batch: .*batch of 16.*32 process"):
        _iterators(_stage(50000, last_batch="keep"), world=32)
    _iterators(_stage(50000, last_batch="keep"), world=16)  # 16 / 16 = 1 sample each: fine
    with pytest.raises(UserError, match=r"stages.s.last_batch: keep needs a stage with one training stream"):
        _iterators(_stage(50000, streams=2, last_batch="keep"))
    with pytest.raises(UserError, match=r"stages.s.last_batch: keep works with `sampler: \{kind: random\}`"):
        _iterators(_stage(50000, last_batch="keep", sampler=SamplerConfig(kind="m_per_class")))
    with pytest.raises(UserError, match=r"stages.s.last_batch: keep .* steps_per_epoch"):
        stage_lengths(_stage(50000, epochs=1, last_batch="keep", steps_per_epoch=100))
