"""The per-step callbacks work on one stacked vector of the step's terms (a few kernels per step, not several per
term): the sums and the first non-finite steps must be the per-term ones, also when a stage's terms change."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ssl_kd.callbacks import NanGuard, TrainMetrics
from ssl_kd.errors import TrainingStopped


def _runner(step: int = 1):
    progress = SimpleNamespace(step=step, total_steps=10**6)
    cfg = SimpleNamespace(experiment=SimpleNamespace(logger=SimpleNamespace(log_every=10**6)))
    return SimpleNamespace(cfg=cfg, stage=SimpleNamespace(progress=progress, name="s"))


def test_running_sums_are_the_per_term_float32_sums():
    m = TrainMetrics(_runner())
    g = torch.Generator().manual_seed(0)
    steps = [{"loss": torch.rand((), generator=g), "mask": torch.rand(7, generator=g),
              "n": torch.tensor(3, dtype=torch.int64)} for _ in range(5)]  # fmt: skip
    steps += [{"loss": torch.rand((), generator=g), "extra": torch.rand((), generator=g)}]  # the terms change
    for terms in steps:
        m.on_step_end(_runner(), terms)
    want: dict[str, torch.Tensor] = {}
    for terms in steps:  # an independent per-term loop, as the callback did before it stacked
        for k, v in terms.items():
            v = v.float().mean()
            want[k] = want[k] + v if k in want else v.clone()
    got = m.sums
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    restored = TrainMetrics(_runner())
    restored.load_state_dict(m.state_dict())
    assert restored.count == 6 and all(torch.equal(restored.sums[k], want[k]) for k in want)


def test_the_guard_names_the_first_non_finite_term_and_step():
    guard = NanGuard()
    runner = _runner()
    runner.run_dir = SimpleNamespace(last=SimpleNamespace(exists=lambda: False))
    runner.log = lambda record: None
    seq = [
        {"loss": torch.tensor(1.0), "kd": torch.tensor(0.5)},
        {"loss": torch.tensor(1.0), "kd": torch.tensor(float("inf")), "w": torch.ones(3)},  # terms change at step 2
        {"loss": torch.tensor(float("nan")), "kd": torch.tensor(float("nan")), "w": torch.tensor([1.0, float("nan")])},
    ]
    for step, terms in enumerate(seq, 1):
        runner.stage.progress.step = step
        guard.on_step_end(runner, terms)
    assert {k: int(v) for k, v in guard.first.items()} == {"loss": 3, "kd": 2, "w": 3}
    with pytest.raises(TrainingStopped, match=r"\['kd'\].*first at step 2"):
        guard.check(runner)
