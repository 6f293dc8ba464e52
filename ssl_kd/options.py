"""The base of every typed option block (`data:`, `optimizer:`, a stage's keys, a component's options).

It lives at the bottom layer so that each component (data, optim, components, stages) can own its schema and the
config layer only assembles them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
