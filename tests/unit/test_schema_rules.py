"""The rules every option block inherits from `ssl_kd.options.Strict`: a boolean is not a number (`epochs: true` was
read as 1 and trained one epoch) and a float is finite (`lr: .inf` reached the NaN guard instead of being named).
Checked on every field of every block the package defines, stage types and policies included, so a new block
cannot opt out by forgetting."""

from __future__ import annotations

import math
from typing import Any, get_args

from pydantic import ValidationError

import ssl_kd.components  # noqa: F401  (the policy option blocks)
import ssl_kd.stages  # noqa: F401  (every stage type's Config)
from ssl_kd.options import Strict, _leaves


def _blocks() -> list[type[Strict]]:
    seen, todo = [], [Strict]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.append(sub)
                todo.append(sub)
    return [c for c in seen if c.__module__.startswith("ssl_kd.")]


def _numeric_fields(kind: type) -> list[tuple[type[Strict], str]]:
    out = []
    for cls in _blocks():
        for name, field in cls.model_fields.items():
            leaves = _leaves(field.annotation)
            if kind in leaves and bool not in leaves and Any not in leaves:
                out.append((cls, name))
    return out


def _errors_at(cls: type[Strict], name: str, value: Any) -> list[dict]:
    try:
        cls.model_validate({name: value})
    except ValidationError as e:
        return [err for err in e.errors() if err["loc"][:1] == (name,)]
    return []


INTS, FLOATS = _numeric_fields(int), _numeric_fields(float)


def test_the_walk_finds_the_blocks():
    names = {f"{c.__name__}.{n}" for c, n in INTS + FLOATS}
    assert {"StageConfig.epochs", "OptimizerConfig.lr", "SchedulerConfig.gamma", "ModelConfig.num_classes"} <= names
    assert len(INTS) > 20 and len(FLOATS) > 20


def test_a_boolean_is_not_a_number():
    accepted = [f"{c.__name__}.{n} = {v}" for c, n in INTS + FLOATS for v in (True, False) if not _errors_at(c, n, v)]
    assert not accepted


def _allows_inf(cls: type[Strict], name: str) -> bool:
    return any(getattr(m, "allow_inf_nan", None) for m in cls.model_fields[name].metadata)


def test_a_float_is_finite_unless_the_field_opts_in():
    accepted = [
        f"{c.__name__}.{n} = {v}"
        for c, n in FLOATS
        if not _allows_inf(c, n)
        for v in (math.inf, -math.inf, math.nan)
        if not _errors_at(c, n, v)
    ]
    assert not accepted


def test_containers_are_checked_element_by_element():
    from ssl_kd.config.schema import StageConfig
    from ssl_kd.optim.config import OptimizerConfig, SchedulerConfig

    assert _errors_at(SchedulerConfig, "milestones", [3, True])
    assert _errors_at(OptimizerConfig, "betas", [0.9, False])
    assert _errors_at(StageConfig, "loss_weights", {"ce": True})
    assert _errors_at(StageConfig, "loss_weights", {"ce": math.nan})
    assert not _errors_at(SchedulerConfig, "milestones", [3, 5])
    assert get_args(OptimizerConfig.model_fields["betas"].annotation) == (float, float)


def test_booleans_stay_booleans_and_numbers_stay_numbers():
    from ssl_kd.config.schema import StageConfig

    cfg = StageConfig.model_validate({"type": "x", "enabled": False, "epochs": 3, "nan_guard": True})
    assert cfg.enabled is False and cfg.epochs == 3 and cfg.nan_guard is True
