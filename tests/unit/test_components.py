"""Components a stage composes: scheduled scalars, the frozen Teacher, threshold and temperature policies."""

from __future__ import annotations

import math
from typing import Literal

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from ssl_kd.components import (
    TEMPERATURE,
    THRESHOLD,
    FixedThreshold,
    FlexThreshold,
    Schedule,
    ScheduleConfig,
    Scheduled,
    Teacher,
    ramp,
)
from ssl_kd.engine import Progress
from ssl_kd.losses import ctkd_lambda, flexmatch_class_thresholds
from ssl_kd.models import create_model


def sched(**kw) -> Schedule:
    return Schedule(ScheduleConfig(**kw))


@pytest.mark.parametrize(
    "shape,t,expected",
    [
        ("constant", 3, 7.0),
        ("linear", 0, 2.0), ("linear", 5, 4.5), ("linear", 10, 7.0), ("linear", 99, 7.0),
        ("cosine", 0, 2.0), ("cosine", 5, 4.5), ("cosine", 10, 7.0),
        ("cosine", 2, 2.0 + 5.0 * (1 - math.cos(math.pi / 5)) / 2),
        ("cubic", 0, 2.0), ("cubic", 5, 7.0 - 5.0 * 0.125), ("cubic", 10, 7.0),
        ("exponential", 5, 2.0 * (7.0 / 2.0) ** 0.5),
        ("step", 9, 2.0), ("step", 10, 7.0),
    ],
)  # fmt: skip
def test_schedule_shapes_by_hand(shape, t, expected):
    assert sched(shape=shape, start=2.0, end=7.0, length=10, unit="step").at(t) == pytest.approx(expected)


def test_schedule_delay_units_and_stage_length():
    s = sched(shape="linear", start=0.0, end=1.0, length=4, delay=2, unit="epoch")
    assert [s.at(step, steps_per_epoch=10) for step in (0, 19, 20, 30, 40, 60, 100)] == [0, 0, 0, 0.25, 0.5, 1, 1]
    whole = sched(shape="linear", start=1.0, end=0.0)  # length None = the whole stage
    assert whole.at(25, total_steps=100) == 0.75 and whole.at(100, total_steps=100) == 0.0
    ex = sched(shape="exponential", start=1.0, end=1e-3, length=3, unit="step")
    assert [ex.at(i) for i in range(4)] == pytest.approx([1.0, 0.1, 0.01, 0.001])
    with pytest.raises(ValidationError, match="same sign"):
        ScheduleConfig(shape="exponential", start=0.0, end=1.0)
    with pytest.raises(ValidationError):
        ScheduleConfig(shape="quadratic")


def test_schedules_reproduce_the_reference_ramps_exactly():
    """CTKD's lambda and DKD's warm-up, as the stages now build them, equal the reference formulas bit for bit."""
    lam = ramp("cosine", 0.0, 1.0, 10, unit="epoch", one_based=True)
    warm = ramp("linear", 0.0, 1.0, 20, unit="epoch", one_based=True)
    for epoch in range(30):
        assert lam.at(epoch * 7, steps_per_epoch=7) == ctkd_lambda(epoch + 1, 10, 1.0)
        assert warm.at(epoch * 7 + 3, steps_per_epoch=7) == min((epoch + 1) / 20, 1.0)
    gate = ramp("step", 0.0, 1.0, 5, unit="step")  # FullMatch's --loss_warm gate
    assert [gate.at(s) for s in range(7)] == [0, 0, 0, 0, 0, 1, 1]
    assert ramp("step", 0.0, 1.0, 0, unit="step").at(0) == 1.0  # no warm-up
    ghfp = ramp("cubic", 0.0, 1.0, 10, unit="epoch", one_based=True)  # GHFP's lambda_e = 1 - (1 - (e+1)/E)^3
    assert [ghfp.at(e) for e in range(10)] == pytest.approx([1 - (1 - (e + 1) / 10) ** 3 for e in range(10)])


def test_scheduled_reads_the_live_progress():
    p = Progress(step=0, total_steps=10, steps_per_epoch=2)
    v = Scheduled(ramp("linear", 0.0, 1.0, 5, unit="epoch"), p)
    seen = []
    for step in range(0, 12, 2):
        p.step = step
        seen.append(v.value)
    assert seen == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = create_model("mlp", 3, hidden=4, depth=1)
        self.calls = 0

    def forward(self, x, **kw):
        self.calls += 1
        assert not torch.is_grad_enabled() and not self.training
        return self.net(x, **kw)


def test_teacher_is_frozen_and_caches_by_index():
    m = Recorder().train()
    t = Teacher(lambda: m)
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    out = t(x)
    assert out.shape == (4, 3) and not out.requires_grad and not m.training
    cached = Teacher(lambda: m, cache_size=10)
    idx = torch.tensor([1, 5, 7, 9])
    first = cached(x, idx)
    calls = m.calls
    again = cached(x * 0, idx)  # same images (by index): the cache answers, the model is not called
    assert m.calls == calls and torch.equal(first, again)
    cached(x, torch.tensor([1, 5, 7, 2]))  # one new image: recomputed
    assert m.calls == calls + 1
    restored = Teacher(lambda: m, cache_size=10)
    restored.load_state_dict(cached.state_dict())
    assert torch.equal(restored(x, idx), first) and m.calls == calls + 1
    with pytest.raises(ValueError, match="indices"):
        cached(x)


def test_threshold_policies():
    fixed = THRESHOLD.build(THRESHOLD.validate({"type": "fixed", "tau": 0.95}))
    assert isinstance(fixed, FixedThreshold) and THRESHOLD.validate("flex").warmup  # the shorthand, defaults
    conf = torch.tensor([0.99, 0.5, 0.96])
    assert ((conf >= fixed.thresholds(torch.tensor([0, 1, 2]))).tolist()) == [True, False, True]
    opts = THRESHOLD.validate({"type": "flex", "tau": 0.9, "warmup": True})
    flex = THRESHOLD.build(opts, num_samples=6, num_classes=3, device=torch.device("cpu"))
    yhat = torch.tensor([0, 1, 2])
    assert flex.thresholds(yhat).tolist() == [0.0, 0.0, 0.0]  # empty history: every sample passes
    flex.update(torch.tensor([0, 1, 2]), torch.tensor([0.95, 0.95, 0.5]), torch.tensor([0, 0, 1]))
    history = flex.history.selected_label.clone()
    assert history.tolist() == [0, 0, -1, -1, -1, -1]  # only confident (>= tau) predictions recorded
    expected = flexmatch_class_thresholds(history, 3, 0.9, warmup=True)
    assert torch.allclose(flex.thresholds(torch.arange(3)), expected)
    assert set(flex.diagnostics()) == {"threshold"} and len(flex.eval_extras()["class_thresholds"]) == 3
    clone = FlexThreshold(opts, num_samples=6, num_classes=3, device=torch.device("cpu"))
    clone.load_state_dict(flex.state_dict())
    assert torch.equal(clone.history.selected_label, history)


def test_temperature_policies():
    p = Progress(step=0, total_steps=100, steps_per_epoch=10)
    s, t = torch.randn(5, 4), torch.randn(5, 4)

    def build(block):
        return TEMPERATURE.build(TEMPERATURE.validate(block), num_classes=4, progress=p)

    assert build(4.0)(s, t) == 4.0 and build(4.0).tau_squared  # a number is the fixed policy
    dtd_policy = build({"policy": "dtd", "tau": 4.0, "tau_squared": False})
    dtd = dtd_policy(s, t)
    assert dtd.shape == (5,) and dtd.mean().item() == pytest.approx(4.0) and not dtd_policy.tau_squared
    glob = build({"policy": "ctkd_global", "ramp_epochs": 4})
    assert [n for n, _ in glob.named_parameters()] == ["net.theta"]
    tau = glob(s, t)
    assert tau.item() == pytest.approx(1 + 20 * torch.sigmoid(torch.tensor(1.0)).item())
    for step, lam in [(0, ctkd_lambda(1, 4)), (35, ctkd_lambda(4, 4))]:  # the GRL strength follows the epoch
        p.step = step
        glob.zero_grad()
        glob(s, t).backward()
        sig = torch.sigmoid(torch.tensor(1.0))
        assert glob.net.theta.grad.item() == pytest.approx(-lam * 20 * (sig * (1 - sig)).item(), rel=1e-5)
    inst = build({"policy": "ctkd_instance", "hidden": 8})
    assert inst(s, t).shape == (5,)
    with pytest.raises(ValueError, match="unknown temperature policy 'dtdd'. Did you mean 'dtd'"):
        build({"policy": "dtdd"})
    with pytest.raises(ValidationError, match="hidden"):  # each policy validates its own options
        build({"policy": "dtd", "hidden": 8})


def test_a_new_policy_is_one_class_and_one_register_line(monkeypatch):
    """What the SSL-breadth work will do five times: register a threshold policy with its own options; a config
    names it, its options are validated (typos at their YAML path), dumped whole, and the stage builds it."""
    from ssl_kd.components.threshold import ThresholdOptions
    from ssl_kd.config import validate_config
    from ssl_kd.errors import UserError

    monkeypatch.setattr(THRESHOLD, "_table", dict(THRESHOLD._table))  # the registration ends with the test

    @THRESHOLD.register("ramp")
    class RampThreshold(FixedThreshold):
        class Options(ThresholdOptions):
            type: Literal["ramp"] = "ramp"
            start: float = 0.5

        def __init__(self, opts, **context):
            super().__init__(opts)
            self.start = opts.start

    stage = {"type": "fixmatch", "train": ["net"], "threshold": {"type": "ramp", "start": 0.3}}
    raw = {
        "models": {"net": {"arch": "mlp"}},
        "data": {"dataset": "digits", "ssl": {"num_labels": 20}},
        "stages": {"s": stage},
    }
    opts = validate_config(raw).stages["s"].threshold
    assert opts.model_dump() == {"type": "ramp", "tau": 0.95, "start": 0.3}
    assert THRESHOLD.build(opts).start == 0.3 and "ramp" in THRESHOLD.names()
    raw["stages"]["s"]["threshold"] = {"type": "ramp", "strat": 0.3}
    with pytest.raises(UserError, match=r"stages\.s\.threshold\.strat: unknown key\. Did you mean 'start'\?"):
        validate_config(raw)


def test_old_threshold_keys_become_the_block_with_a_note():
    from ssl_kd.config import validate_config

    stage = {"type": "fixmatch", "train": ["net"], "threshold": "flex", "tau": 0.9, "flex_warmup": False}
    raw = {
        "models": {"net": {"arch": "mlp"}},
        "data": {"dataset": "digits", "ssl": {"num_labels": 20}},
        "stages": {"s": stage},
    }
    cfg = validate_config(raw)
    assert cfg.stages["s"].threshold.model_dump() == {"type": "flex", "tau": 0.9, "warmup": False}
    assert cfg._deprecations["s"] == [
        "`tau, flex_warmup` is now part of the threshold block: `threshold: {tau: 0.9, warmup: False}`"
    ]
    preset = validate_config({**raw, "stages": {"s": {"type": "flexmatch", "train": ["net"], "tau": 0.8}}})
    assert preset.stages["s"].threshold.model_dump() == {"type": "flex", "tau": 0.8, "warmup": True}  # keeps its preset
