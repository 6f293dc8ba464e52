"""YAML loading with `_base_` inheritance and dotted overrides (CLI and W&B sweeps use the same path)."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path
from typing import Any

import yaml

from ssl_kd.errors import UserError


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 would give the string '1e-4')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, second: int) -> None:
        super().__init__(f"key {key!r} appears twice in one mapping (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    """YAML lets a repeated key silently replace the first; in a config that is almost always a mistake."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` merges are meant to be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            if key in seen:
                raise DuplicateKey(key, seen[key], line)
            seen[key] = line
        except TypeError:  # an unhashable key: the base constructor reports it
            break
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_Loader.construct_mapping = _construct_mapping  # type: ignore[method-assign]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: config file not found.")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except DuplicateKey as e:
        raise UserError(
            f"{path}: key '{e.key}' appears twice in one mapping (lines {e.first} and {e.second}); YAML would "
            f"silently keep the second. Keep one."
        ) from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}.")
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Merge `over` into a copy of `base`; mappings merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Load a config, resolving `_base_` (a file or list of files, relative to this file) depth-first."""
    path = Path(path).resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise UserError(f"{path}: `_base_` inheritance loops: {cycle}")
    data = _read_yaml(path)
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise UserError(f"{path}: `_base_` must be a file path or a list of file paths, got {bases!r}.")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():
            raise UserError(f"{path}: `_base_` file '{base}' not found (looked for {base_path}).")
        merged = deep_merge(merged, load_yaml(base_path, (*_chain, path)))
    return deep_merge(merged, data)


def parse_value(text: str) -> Any:
    """Parse an override value the way a sweep agent renders it: Python literals first, then YAML, then str.

    W&B renders values with str(): `1e-05`, `None`, `False`, `[1, 2]`, `{'a': 1}`; YAML covers `null`, `true`,
    `[a, b]`; anything else stays a string.
    """
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        pass
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506
    except yaml.YAMLError:
        return text


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """`a.b=v` and `--a.b=v` (both forms may be mixed) -> [(dotted_key, value)]."""
    out = []
    for item in items:
        raw = item[2:] if item.startswith("--") else item
        if "=" not in raw:
            raise UserError(
                f"override '{item}' is not of the form key=value (e.g. stages.train.optimizer.lr=0.01 "
                f"or --experiment.seed=3)."
            )
        key, value = raw.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"override '{item}': '{key}' is not a dotted key like experiment.seed.")
        out.append((key, parse_value(value)))
    return out


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating mappings on the way; refuses to descend into a non-mapping."""
    parts = key.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise UserError(f"override '{key}': '{where}' is a value ({child!r}), not a mapping with sub-keys.")
        node = child
    node[parts[-1]] = value


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """{'a.b': 1} -> {'a': {'b': 1}} (W&B keeps dotted sweep keys flat in wandb.config)."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        set_dotted(out, key, value)
    return out


def apply_overrides(cfg: dict[str, Any], overrides: list[tuple[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for key, value in overrides:
        set_dotted(out, key, value)
    return out


_REFERENCE = re.compile(r"^\$\{\s*([^{}\s]+)\s*\}$")


def resolve_references(cfg: dict[str, Any]) -> dict[str, Any]:
    """Replace every value written `${a.b.c}` with the value at that dotted path of the same config (after `_base_`
    and the overrides), so one override changes every place that refers to it, e.g. one preset for two stages:
    `stages.contrast.preset: ${stages.instance.preset}`. References may chain; a loop or a missing path is an error
    naming the key that holds the reference."""

    def lookup(path: str, where: str, chain: tuple[str, ...]) -> Any:
        if path in chain:
            raise UserError(f"{where}: the reference `${{{path}}}` forms a loop: {' -> '.join((*chain, path))}.")
        node: Any = cfg
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise UserError(f"{where}: `${{{path}}}` refers to '{path}', which the config does not set.")
            node = node[part]
        return resolve(node, path, (*chain, path))

    def resolve(value: Any, where: str, chain: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, f"{where}.{k}" if where else str(k), chain) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, f"{where}[{i}]", chain) for i, v in enumerate(value)]
        match = _REFERENCE.match(value) if isinstance(value, str) else None
        return lookup(match.group(1), where, chain) if match else value

    return resolve(cfg, "", ())
