"""Name -> model factory registry (timm-style), with user-facing errors for unknown names and options."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ssl_kd.errors import UserError, choices, suggest

Factory = Callable[..., nn.Module]
F = TypeVar("F", bound=Factory)

_REGISTRY: dict[str, Factory] = {}
# Heads a model can carry on its pooled feature (`models.<name>.head: {type: ..., ...}`): factory(model, **options)
# attaches the head to the built model in place (ssl_kd.models.fusion).
_HEADS: dict[str, Callable[..., None]] = {}


def _registrar(table: dict[str, Any], what: str, name: str) -> Callable[[F], F]:
    def deco(factory: F) -> F:
        if name in table:  # a programming error (two modules claim one name), not a user mistake
            raise ValueError(f"{what} '{name}' is already registered by {table[name].__module__}")
        table[name] = factory
        return factory

    return deco


def register_head(name: str) -> Callable[[F], F]:
    """Register ``attach(model, **options)`` under ``name``: it fits a head onto a built model (e.g. metadata
    fusion between the pooled feature and ``fc``)."""
    return _registrar(_HEADS, "head", name)


def _attach_head(model: nn.Module, name: str, head: dict[str, Any]) -> None:
    if not isinstance(head, dict) or "type" not in head:
        raise UserError(
            f"Model '{name}': head must be a mapping with a `type` ({choices(_HEADS)}) and its options, got {head!r}."
        )
    kind, opts = head["type"], {k: v for k, v in head.items() if k != "type"}
    if kind not in _HEADS:
        raise UserError(f"Model '{name}': unknown head type '{kind}'.{suggest(kind, _HEADS)} Valid: {choices(_HEADS)}.")
    sig = inspect.signature(_HEADS[kind])
    valid = [q.name for q in list(sig.parameters.values())[1:] if q.kind in (q.KEYWORD_ONLY, q.POSITIONAL_OR_KEYWORD)]
    for key in opts:
        if key not in valid:
            raise UserError(
                f"Model '{name}': head '{kind}' has no option '{key}'.{suggest(key, valid)} Valid options: "
                f"{choices(valid) if valid else '(none)'}."
            )
    _HEADS[kind](model, **opts)


def register_model(name: str) -> Callable[[F], F]:
    """Register ``factory(num_classes, **options) -> nn.Module`` under ``name``."""
    return _registrar(_REGISTRY, "model", name)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _get_factory(name: str) -> Factory:
    if name not in _REGISTRY:
        raise UserError(f"Unknown model '{name}'.{suggest(name, _REGISTRY)} Valid models: {choices(_REGISTRY)}.")
    return _REGISTRY[name]


def model_options(name: str) -> dict[str, Any]:
    """Options a model accepts besides ``num_classes``, with their defaults (for --dry-run and docs)."""
    sig = inspect.signature(_get_factory(name))
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.name != "num_classes" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def create_model(name: str, num_classes: int, head: dict[str, Any] | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered model, optionally carrying a registered ``head`` (``{type: ..., **options}``); unknown
    names or options raise ``UserError`` before anything is built."""
    factory = _get_factory(name)
    valid = model_options(name)
    for key in kwargs:
        if key not in valid:
            opts = choices(valid) if valid else "(none)"
            raise UserError(
                f"Model '{name}' has no option '{key}'.{suggest(key, valid)} Valid options for '{name}': {opts}."
            )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserError(f"num_classes must be a positive integer, got {num_classes!r} (model '{name}').")
    model = factory(num_classes, **kwargs)
    if head is not None:
        _attach_head(model, name, head)
    model.spec = {"arch": name, "num_classes": num_classes, "kwargs": dict(kwargs)}
    if head is not None:
        model.spec["head"] = dict(head)
    return model


def model_spec(model: nn.Module) -> dict[str, Any] | None:
    """How to rebuild `model` (`create_model(**spec)` shape): recorded in checkpoints, so a model whose shape
    changed at a stage boundary (e.g. a pruned export) is rebuilt with its new shape on resume and stage init."""
    spec = getattr(model, "spec", None)
    if not spec:
        return None
    out = {"arch": spec["arch"], "num_classes": spec["num_classes"], "kwargs": dict(spec["kwargs"])}
    if spec.get("head") is not None:  # absent for head-less models, so older files' specs still compare equal
        out["head"] = dict(spec["head"])
    return out


def create_model_from_spec(spec: dict[str, Any]) -> nn.Module:
    return create_model(spec["arch"], spec["num_classes"], head=spec.get("head"), **spec.get("kwargs", {}))


def check_option(model: str, option: str, value: Any, ok: bool, expected: str) -> None:
    """Raise a UserError for an option value outside its valid range (factories call this)."""
    if not ok:
        raise UserError(f"Model '{model}': option {option}={value!r} is invalid; expected {expected}.")
