"""Scheduled scalars: a loss weight, a temperature strength or a pruning rate that follows the stage's progress.

One mechanism for every ramp the methods need (DKD's warm-up, CTKD's lambda, FullMatch's EML/ANL start, and later
CSKD's beta_t, GHFP's lambda_e, ASRFP's d_e). A schedule is a pure function of the stage's progress (step, or epoch
= step // steps_per_epoch), so it needs no state of its own and resumes exactly.

With t the progress in `unit`s (+1 when `one_based`, as mdistiller and CTKD count epochs) and
f = clamp((t - delay) / length, 0, 1) (a zero length is a switch: f = 1 once t >= delay):

    constant     end
    linear       start + (end - start) f
    cosine       start + (end - start) (1 - cos(pi f)) / 2
    cubic        end + (start - end) (1 - f)^3            (Zhu & Gupta's gradual ramp; GHFP's lambda_e)
    exponential  start (end / start)^f                    (geometric; ASRFP's d_e = d0 exp(-a e))
    step         start while f < 1, then end
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

from pydantic import Field, model_validator

from ssl_kd.options import Strict

Shape = Literal["constant", "linear", "cosine", "cubic", "exponential", "step"]


class ScheduleConfig(Strict):
    shape: Shape = "constant"
    start: float = 0.0
    end: float = 1.0
    length: float | None = Field(None, ge=0)  # in `unit`s; None = the whole stage
    delay: float = Field(0.0, ge=0)  # units at `start` before the ramp begins
    unit: Literal["step", "epoch"] = "step"
    one_based: bool = False  # count the first step/epoch as 1 (mdistiller's and CTKD's epoch counter)

    @model_validator(mode="after")
    def _geometric(self) -> ScheduleConfig:
        if self.shape == "exponential" and (self.start == 0 or self.start * self.end <= 0):
            raise ValueError("an exponential schedule needs start and end of the same sign, both non-zero")
        return self


class Schedule:
    """`schedule.at(step, steps_per_epoch, total_steps)` -> the value at that point of the stage."""

    def __init__(self, cfg: ScheduleConfig) -> None:
        self.cfg = cfg

    def at(self, step: int, steps_per_epoch: int = 1, total_steps: int = 1) -> float:
        c = self.cfg
        if c.unit == "epoch":
            t, stage_length = step // max(1, steps_per_epoch), math.ceil(total_steps / max(1, steps_per_epoch))
        else:
            t, stage_length = step, total_steps
        t += 1 if c.one_based else 0
        if c.shape == "constant":
            return c.end
        length = stage_length if c.length is None else c.length
        # progress f = num / length with num clamped to [0, length]; the division happens once, last
        if length == 0:
            num, length = (1.0 if t >= c.delay else 0.0), 1
        else:
            num = min(max(t - c.delay, 0), length)
        if c.shape == "linear":
            return c.start + (c.end - c.start) * (num / length)
        if c.shape == "cosine":
            return c.start + (c.end - c.start) * (1.0 - math.cos(math.pi * num / length)) / 2.0
        if c.shape == "cubic":
            return c.end + (c.start - c.end) * (1.0 - num / length) ** 3
        if c.shape == "exponential":
            return c.start * (c.end / c.start) ** (num / length)
        return c.start if num < length else c.end  # step

    def __repr__(self) -> str:
        return f"Schedule({self.cfg.model_dump()})"


class Progress(Protocol):
    step: int
    steps_per_epoch: int
    total_steps: int


class Scheduled:
    """A schedule bound to a stage's progress: `.value` is the value at the current step."""

    def __init__(self, schedule: Schedule, progress: Progress) -> None:
        self.schedule, self.progress = schedule, progress

    @property
    def value(self) -> float:
        p = self.progress
        return self.schedule.at(p.step, p.steps_per_epoch, p.total_steps)


def ramp(
    shape: Shape, start: float, end: float, length: float, *, unit: Literal["step", "epoch"] = "epoch",
    one_based: bool = False, delay: float = 0.0,
) -> Schedule:  # fmt: skip
    """Shorthand for the schedules stages build from their own keys (e.g. `dkd.warmup_epochs`)."""
    return Schedule(
        ScheduleConfig(shape=shape, start=start, end=end, length=length, unit=unit, one_based=one_based, delay=delay)
    )
