"""One definition per stage setting: a dataclass field with its type, default and description.

Each stage's settings are a frozen dataclass in core whose fields are declared with
:func:`setting`; the Dagster ``Config`` shown in the Launchpad is generated from it
(``deepfeed.pipelines.config.dagster_config``), so a default or a description is written
once. :func:`build` constructs such a dataclass from a mapping and names unknown keys
instead of dropping them: a misspelt setting is an error, never a silent default.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

DESCRIPTION = "description"
CONSTRAINTS = "constraints"
# Bounds understood by both build() and the generated pydantic Field.
BOUNDS = {
    "gt": (lambda value, bound: value > bound, ">"),
    "ge": (lambda value, bound: value >= bound, ">="),
    "lt": (lambda value, bound: value < bound, "<"),
    "le": (lambda value, bound: value <= bound, "<="),
}

S = TypeVar("S")


class SettingsError(ValueError):
    """A settings mapping names a field the dataclass does not have, or breaks a bound."""


def setting(default: Any, description: str, **constraints: Any) -> Any:
    """A dataclass field carrying its description (and optional gt/ge/lt/le bounds) in its metadata.

    A list default is stored as a tuple (settings dataclasses are frozen and shared)."""
    unknown = set(constraints) - set(BOUNDS)
    if unknown:
        raise TypeError(f"setting(): unknown constraint(s) {sorted(unknown)}; known: {sorted(BOUNDS)}")
    if not description.strip():
        raise TypeError("setting(): every setting needs a description")
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={DESCRIPTION: description, CONSTRAINTS: constraints})


def settings_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The init fields of a settings dataclass, by name, in declaration order."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a settings dataclass")
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations (modules with `from __future__ import annotations` store strings)."""
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name in settings_fields(cls)}


def description(cls: type, name: str) -> str:
    return settings_fields(cls)[name].metadata.get(DESCRIPTION, "")


def default(cls: type, name: str) -> Any:
    """The declared default of one setting (for code that needs it without an instance)."""
    field = settings_fields(cls)[name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise KeyError(f"{cls.__name__}.{name} has no default")


def constraints(cls: type, name: str) -> dict[str, Any]:
    return dict(settings_fields(cls)[name].metadata.get(CONSTRAINTS, {}))


def check_bounds(cls: type, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        for kind, bound in constraints(cls, name).items():
            holds, symbol = BOUNDS[kind]
            if value is not None and not holds(value, bound):
                raise SettingsError(f"{cls.__name__}.{name}={value!r}: must be {symbol} {bound}")


def build(cls: type[S], values: Mapping[str, Any] | None = None, /, **more: Any) -> S:
    """``cls(**values, **more)`` after checking every key is one of its fields and within its bounds.

    Tuple-typed fields accept lists (what YAML and Dagster config hold)."""
    merged = {**(values or {}), **more}
    known = settings_fields(cls)
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise SettingsError(f"{cls.__name__}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}")
    types = field_types(cls)
    for name, value in merged.items():
        if isinstance(value, list) and typing.get_origin(types[name]) is tuple:
            merged[name] = tuple(value)
    check_bounds(cls, merged)
    return cls(**merged)


def defaults(cls: type) -> dict[str, Any]:
    """Every setting's default, by name."""
    return {name: default(cls, name) for name in settings_fields(cls)}
