"""The base of every typed option block (`data:`, `optimizer:`, a stage's keys, a component's options).

It lives at the bottom layer so that each component (data, optim, components, stages) can own its schema and the
config layer only assembles them.

Two rules hold for every field of every block, so no block has to remember them:
- a boolean is not a number: `epochs: true` (which pydantic would read as 1) is an error wherever the field takes
  an int or a float and not a bool;
- a float is finite: `lr: .inf`, `loss_weights.kd: .nan` are errors at their YAML path. A field where infinity
  means something opts in with `Field(..., allow_inf_nan=True)`.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _leaves(tp: Any) -> list[Any]:
    """The alternatives of a type: Optional / Union / Annotated unwrapped."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _leaves(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        return [leaf for a in get_args(tp) for leaf in _leaves(a)]
    return [tp]


def _takes_bool(leaves: list[Any]) -> bool:
    for t in leaves:
        if t in (bool, Any, object) or (get_origin(t) is Literal and any(isinstance(a, bool) for a in get_args(t))):
            return True
    return False


def _misplaced_bool(tp: Any, value: Any) -> bool:
    """Whether `value` holds a bool where type `tp` expects a number (an int or a float), at any depth of the
    lists, tuples and dicts `tp` describes (nested option blocks check their own fields)."""
    leaves = _leaves(tp)
    if isinstance(value, bool):
        return any(t in (int, float) for t in leaves) and not _takes_bool(leaves)
    if isinstance(value, Mapping):
        for t in leaves:
            origin = get_origin(t)
            if isinstance(origin, type) and issubclass(origin, Mapping) and len(get_args(t)) == 2:
                return any(_misplaced_bool(get_args(t)[1], v) for v in value.values())
        return False
    if isinstance(value, list | tuple):
        for t in leaves:
            origin, args = get_origin(t), get_args(t)
            if not (isinstance(origin, type) and issubclass(origin, Sequence | set | frozenset)) or not args:
                continue
            if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                return any(_misplaced_bool(a, v) for a, v in zip(args, value))
            return any(_misplaced_bool(args[0], v) for v in value)
    return False


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored. Booleans are not numbers and floats are
    finite (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_as_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and _misplaced_bool(field.annotation, value):
            raise ValueError("a boolean where a number is expected (give a number)")
        return value
