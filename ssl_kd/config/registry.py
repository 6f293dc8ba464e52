"""Stage types by name: the YAML's `type:` key resolves here, and the stage's `Config` class validates its block.

Stage types are plugins. A module registers its classes with `@register_stage("name")` when it is imported; the
modules to import are found through the `ssl_kd.stages` entry-point group, in which ssl_kd's own stages are the
first plugin (pyproject.toml), so a separate package can add stage types usable from any YAML in the same way.
Nothing here imports a stage module by name: the config layer stays below the stages it validates.

A user's own models and stages need no entry point: `experiment.imports` (or `--import`) names modules (dotted, from
the current directory / PYTHONPATH) or `.py` files (relative to the config) that are imported before the config is
validated, so their `@register_model` / `@register_stage` names are valid in `arch:` and `type:`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
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


def resolve_import(entry: str, base_dir: Path) -> str:
    """A `.py` entry as an absolute path (relative to the config's folder), a dotted module name unchanged."""
    if entry.endswith(".py"):
        path = Path(entry).expanduser()
        return str(path if path.is_absolute() else (base_dir / path).resolve())
    return entry


def _where_it_failed(exc: BaseException) -> str:
    """The innermost frame outside the import machinery: the user's file and line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def _module_name(entry: str) -> str:
    """The name `import_modules` gives an entry in sys.modules (a `.py` file: a name hashed from its path)."""
    if entry.endswith(".py"):
        path = Path(entry)
        return f"ssl_kd_user_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}_{path.stem}"
    return entry


def not_imported(entries: Sequence[str]) -> list[str]:
    """The entries (dotted modules or absolute `.py` paths) this process has not imported."""
    return [e for e in entries if isinstance(e, str) and _module_name(e) not in sys.modules]


def import_modules(entries: Sequence[str], where: str = "experiment.imports") -> None:
    """Import each module (dotted name or absolute `.py` path) once; its decorators register models / stages.

    Every failure is a UserError naming `where[i]` and the module, with the exception and the line that raised.
    """
    for i, entry in enumerate(entries):
        loc = f"{where}[{i}]"
        if not isinstance(entry, str) or not entry:
            raise UserError(f"{loc}: expected a module name (my_pkg.models) or a .py file, got {entry!r}.")
        try:
            if entry.endswith(".py"):
                path = Path(entry)
                if not path.is_file():
                    raise UserError(f"{loc}: no such file {path} (a .py path is relative to the config file).")
                name = _module_name(entry)
                if name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    raise UserError(f"{loc}: {path} cannot be imported as a Python module.")
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                importlib.import_module(entry)
        except UserError:
            raise
        except ModuleNotFoundError as e:
            raise UserError(
                f"{loc}: cannot import '{entry}' ({e}). Give a module importable from the current directory or "
                f"PYTHONPATH (my_pkg.models), or a .py file path relative to the config."
            ) from None
        except Exception as e:  # the user's module raised while importing (a bug there, a name registered twice)
            raise UserError(
                f"{loc}: importing '{entry}' failed: {type(e).__name__}: {e}{_where_it_failed(e)}"
            ) from None
