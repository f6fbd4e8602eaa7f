"""Dagster Config classes generated from the core settings dataclasses, and the way back.

A stage's settings are defined once, as a dataclass in core (deepfeed/core/platform/settings.py):
type, default and description per field. `dagster_config` turns it into the dg.Config the asset
takes, so the Launchpad shows the same defaults and descriptions; `to_core` maps a run's
config back to the dataclass. Settings only the asset reads (where to find the feedback
store, how many processes to launch) are declared as extra fields next to the derivation.
"""

from __future__ import annotations

import dataclasses
import sys
import typing
import weakref
from collections.abc import Mapping
from typing import Any, TypeVar

import dagster as dg
from pydantic import Field, create_model

from deepfeed.core.platform.settings import CONSTRAINTS, SettingsError, build, field_types, settings_fields

S = TypeVar("S")


@dataclasses.dataclass(frozen=True)
class Derivation:
    core: type
    # config field name -> core field name (equal unless `renamed`)
    fields: dict[str, str]
    extra: tuple[str, ...]


_DERIVED: weakref.WeakKeyDictionary[type, Derivation] = weakref.WeakKeyDictionary()


def _config_type(annotation: Any) -> Any:
    """Dagster's config schema has lists, not tuples: tuple[X, ...] becomes list[X]."""
    if typing.get_origin(annotation) is tuple:
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return list[args[0]] if args else list
    return annotation


def _field(annotation: Any, default: Any, description: str, bounds: Mapping[str, Any]) -> tuple[Any, Any]:
    """The pydantic field of one setting; bounds (gt/ge/lt/le) show in the schema and are enforced by pydantic."""
    config_type = _config_type(annotation)
    if isinstance(default, (tuple, list)):
        items = list(default)
        return config_type, Field(default_factory=lambda: list(items), description=description, **bounds)
    return config_type, Field(default=default, description=description, **bounds)


def dagster_config(
    core: type,
    *,
    name: str,
    doc: str | None = None,
    defaults: Mapping[str, Any] | None = None,
    descriptions: Mapping[str, str] | None = None,
    exclude: tuple[str, ...] = (),
    renamed: Mapping[str, str] | None = None,
    module: str | None = None,
    **extra: tuple[Any, Any],
) -> type[dg.Config]:
    """A dg.Config subclass named `name` with one field per setting of the dataclass `core`.

    defaults / descriptions: per-asset values for some settings (e.g. the incremental stream's
    learning rate), keyed by the core name; exclude: settings the asset decides itself (passed
    to `to_core` as overrides); renamed: core name -> config name, for config names that run
    configs already use; extra: asset-only fields as ``name=(type, pydantic.Field(...))``.
    """
    known = settings_fields(core)
    defaults, descriptions, renamed = dict(defaults or {}), dict(descriptions or {}), dict(renamed or {})
    for label, names in (
        ("defaults", defaults),
        ("descriptions", descriptions),
        ("exclude", exclude),
        ("renamed", renamed),
    ):
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise SettingsError(f"dagster_config({core.__name__}, {label}=...): no setting(s) {', '.join(unknown)}")
    types = field_types(core)
    fields: dict[str, tuple[Any, Any]] = {}
    mapping: dict[str, str] = {}
    for core_name, field in known.items():
        if core_name in exclude:
            continue
        text = descriptions.get(core_name) or field.metadata.get("description", "")
        if not text:
            raise SettingsError(f"{core.__name__}.{core_name} has no description (declare it with setting())")
        default = defaults[core_name] if core_name in defaults else _core_default(field)
        config_name = renamed.get(core_name, core_name)
        fields[config_name] = _field(types[core_name], default, text, field.metadata.get(CONSTRAINTS, {}))
        mapping[config_name] = core_name
    clash = sorted(set(extra) & set(fields))
    if clash:
        raise SettingsError(f"{name}: extra field(s) {', '.join(clash)} already come from {core.__name__}")
    fields.update(extra)
    cls = create_model(
        name,
        __base__=dg.Config,
        __module__=module or sys._getframe(1).f_globals.get("__name__", __name__),
        __doc__=doc or f"Run config of the settings in {core.__module__}.{core.__name__}.",
        **fields,
    )
    _DERIVED[cls] = Derivation(core=core, fields=mapping, extra=tuple(extra))
    return cls


def _core_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise SettingsError(f"setting {field.name} has no default: a Dagster config field needs one")


def derivation(config_cls: type) -> Derivation:
    for cls in config_cls.__mro__:
        if cls in _DERIVED:
            return _DERIVED[cls]
    raise TypeError(f"{config_cls.__name__} was not generated by dagster_config")


def to_core(config: dg.Config, core: type[S], **overrides: Any) -> S:
    """The core settings of a run config: every derived field, plus `overrides` (core names).

    An override that is not a setting of `core` is an error (named), never dropped."""
    found = derivation(type(config))
    if not issubclass(found.core, core) and found.core is not core:
        raise TypeError(f"{type(config).__name__} holds {found.core.__name__} settings, not {core.__name__}")
    values = {core_name: getattr(config, config_name) for config_name, core_name in found.fields.items()}
    return build(core, {**values, **overrides})


def extra_fields(config_cls: type) -> tuple[str, ...]:
    """The asset-only fields of a derived config (not settings of its core dataclass)."""
    return derivation(config_cls).extra
