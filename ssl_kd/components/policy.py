"""Registered policies with typed option blocks: `temperature: {policy: dtd, beta: 1}`, `threshold: {type: flex}`.

A policy family (temperature, threshold, ...) is one `PolicyRegistry`. A policy is a class registered under a name,
carrying its options as a nested `Options` class (a `PolicyOptions` whose key field names the policy), and built as
`Policy(options, **context)`. A stage config declares a field of the family (`registry.field(default)`): the YAML
block is validated by the named policy's own options class, so an unknown key or a wrong type is reported at its
YAML path with that policy's valid keys, and `--dry-run` prints the block with every option. Adding a policy is one
class and one register line; a user's module (experiment.imports) can register its own the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, TypeVar

from pydantic import BaseModel, BeforeValidator, Field, SerializeAsAny

from ssl_kd.errors import choices, suggest
from ssl_kd.options import Strict

T = TypeVar("T")


class PolicyOptions(Strict):
    """The base of a policy's options. Each family names its key (`policy` or `type`) as a field of its base."""

    registry: ClassVar[PolicyRegistry]

    def policy_name(self) -> str:
        return getattr(self, self.registry.key)


class PolicyRegistry:
    """The policies of one family, by name. `shorthand`: a scalar allowed for the whole block (e.g. `threshold:
    flex` = `{type: flex}`, `temperature: 4` = `{policy: fixed, tau: 4}`), turned into a block."""

    def __init__(self, what: str, key: str, base: type[PolicyOptions], shorthand: Callable[[Any], dict] | None = None):
        self.what, self.key, self.base, self.shorthand = what, key, base, shorthand
        self._table: dict[str, type] = {}
        base.registry = self

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            opts = getattr(cls, "Options", None)
            if not (isinstance(opts, type) and issubclass(opts, self.base)):
                raise TypeError(f"{self.what} '{name}': {cls.__name__}.Options must subclass {self.base.__name__}")
            if name in self._table and self._table[name] is not cls:
                raise ValueError(f"{self.what} '{name}' registered twice")
            self._table[name] = cls
            return cls

        return deco

    def names(self) -> list[str]:
        return list(self._table)

    def options_class(self, name: str) -> type[PolicyOptions]:
        if name not in self._table:
            raise ValueError(
                f"unknown {self.what} '{name}'.{suggest(str(name), self._table)} Valid: {choices(self._table)}"
            )
        return self._table[name].Options

    def validate(self, value: Any) -> Any:
        """A YAML block (or its shorthand) as the named policy's typed options."""
        if isinstance(value, PolicyOptions):
            return value
        if self.shorthand is not None and not isinstance(value, dict):
            value = self.shorthand(value)
        if not isinstance(value, dict):
            return value  # pydantic reports the type error against the base
        name = value.get(self.key, self.base.model_fields[self.key].default)
        return self.options_class(name).model_validate({**value, self.key: name})

    def build(self, options: PolicyOptions, **context: Any) -> Any:
        """The policy object for `options`, given what the stage knows (class count, progress, device, ...)."""
        return self._table[options.policy_name()](options, **context)

    def field(self, default: dict[str, Any] | None = None) -> Any:
        """A config field of this family, defaulting to `default` (a block; the family's default policy if None)."""
        block = dict(default or {})
        return Field(default_factory=lambda: self.validate(block))

    def annotation(self) -> Any:
        """The type of such a field: validated by the named policy, dumped with all of that policy's options."""
        return Annotated[SerializeAsAny[self.base], BeforeValidator(self.validate)]

    def owner(self, block: Any) -> type[BaseModel] | None:
        """The options class a raw block is validated with (for error messages listing its valid keys)."""
        try:
            opts = self.validate(block)
        except Exception:  # the error being reported may be this very block's
            name = block.get(self.key) if isinstance(block, dict) else None
            return self._table[name].Options if name in self._table else None
        return type(opts) if isinstance(opts, PolicyOptions) else None
