"""Stage types register themselves by name; the engine never imports a method by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssl_kd.engine.stage import Stage

_STAGES: dict[str, type[Stage]] = {}


def register_stage(name: str) -> Callable[[type[Stage]], type[Stage]]:
    def deco(cls: type[Stage]) -> type[Stage]:
        if name in _STAGES and _STAGES[name] is not cls:
            raise ValueError(f"stage type '{name}' registered twice")
        cls.type_name = name
        _STAGES[name] = cls
        return cls

    return deco


def stage_types() -> dict[str, type[Stage]]:
    import ssl_kd.stages  # noqa: F401  (registers the built-in stage types)

    return dict(_STAGES)
