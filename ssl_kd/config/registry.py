"""Stage types by name: the YAML's `type:` key resolves here, and the stage's `Config` class validates its block.

Stage types are plugins. A module registers its classes with `@register_stage("name")` when it is imported; the
modules to import are found through the `ssl_kd.stages` entry-point group, in which ssl_kd's own stages are the
first plugin (pyproject.toml), so a separate package can add stage types usable from any YAML in the same way.
Nothing here imports a stage module by name: the config layer stays below the stages it validates.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from ssl_kd.errors import UserError

ENTRY_POINT_GROUP = "ssl_kd.stages"

_STAGES: dict[str, Any] = {}  # name -> Stage subclass (typed loosely: stages live in a higher layer)
_loaded = False
T = TypeVar("T")


def register_stage(name: str) -> Callable[[type[T]], type[T]]:
    def deco(cls: type[T]) -> type[T]:
        if name in _STAGES and _STAGES[name] is not cls:
            raise ValueError(f"stage type '{name}' registered twice")
        cls.type_name = name
        _STAGES[name] = cls
        return cls

    return deco


def load_stage_plugins() -> None:
    """Import every module of the `ssl_kd.stages` entry-point group once (each registers its stage types)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # a broken third-party plugin must not hide behind a KeyError later
            raise UserError(f"stage plugin '{ep.name}' ({ep.value}) failed to import: {type(e).__name__}: {e}") from e


def stage_types() -> dict[str, Any]:
    """Every registered stage type, after loading the plugins."""
    load_stage_plugins()
    if not _STAGES:
        raise UserError(
            "no stage types are registered: ssl_kd's entry points are missing. Install the project "
            '(pip install -e ".[dev]") or import ssl_kd.stages before validating a config.'
        )
    return dict(_STAGES)
