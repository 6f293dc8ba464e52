"""The device feed draws each micro-batch once, in order, one ahead of the step, and never past the stage's end."""

from __future__ import annotations

import itertools

import pytest
import torch

from ssl_kd.engine.feed import DeviceFeed


class Counting:
    """An endless stream that records how many batches were drawn from it."""

    def __init__(self, scale: int) -> None:
        self.drawn = 0
        self.scale = scale

    def __iter__(self):
        for t in itertools.count():
            self.drawn += 1
            yield {"x": torch.full((2,), float(self.scale * t)), "idx": torch.tensor([t, t])}


class Finishing:
    """A dataset whose batches are finished after the move (as the large-image path normalises uint8 crops)."""

    def finish(self, batch):
        return {**batch, "x": batch["x"] + 0.5}


def test_batches_come_in_order_one_ahead_and_never_past_the_stage():
    a, b = Counting(1), Counting(10)
    feed = DeviceFeed({"a": iter(a), "b": iter(b)}, {"a": None, "b": Finishing()}, torch.device("cpu"), limit=3)
    first = feed.take()
    assert (a.drawn, b.drawn) == (1, 1)
    feed.prefetch()
    assert (a.drawn, b.drawn) == (2, 2)  # drawn while "step 0" runs
    feed.prefetch()  # idempotent until taken
    assert a.drawn == 2
    second = feed.take()
    third = feed.take()  # not prefetched: drawn on demand
    feed.prefetch()  # the stage has no fourth micro-batch: nothing is drawn
    assert (a.drawn, b.drawn) == (3, 3)
    for t, batch in enumerate((first, second, third)):
        assert batch["a"]["x"].tolist() == [t, t] and batch["a"]["idx"].tolist() == [t, t]
        assert batch["b"]["x"].tolist() == [10 * t + 0.5] * 2  # finished after the move
    with pytest.raises(RuntimeError, match="more batches"):
        feed.take()


def test_a_resumed_stage_feeds_only_its_remaining_steps():
    a = Counting(1)
    feed = DeviceFeed({"a": iter(a)}, {"a": None}, torch.device("cpu"), limit=0)
    feed.prefetch()
    assert a.drawn == 0
