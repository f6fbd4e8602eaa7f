"""A commented run-config YAML for a job, without the Dagster UI's launchpad.

Dagster's own scaffolder (dagster._cli.config_scaffolder) stops at config types it cannot
name, which every Pythonic dg.Config has, and writes no descriptions; this walks the job's
config schema and writes each field's default with its description as a comment.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml

_PLACEHOLDER = {"String": "", "Int": 0, "Float": 0.0, "Bool": False}


def _inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("\n...")


def _is_shape(config_type) -> bool:
    return hasattr(config_type, "fields") and bool(getattr(config_type, "fields", None))


def _render(config_type, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    for name, field in config_type.fields.items():
        comment = [f"{pad}# {line}" for line in textwrap.wrap(field.description or "", 110 - indent)]
        if _is_shape(field.config_type):
            children: list[str] = []
            _render(field.config_type, indent + 2, children)
            if any(not line.lstrip().startswith("#") for line in children):  # no empty mappings
                lines.extend([*comment, f"{pad}{name}:", *children])
        elif field.default_provided:
            lines.extend([*comment, f"{pad}{name}: {_inline(field.default_value)}"])
        elif field.is_required:
            placeholder = _PLACEHOLDER.get(field.config_type.given_name or "", None)
            lines.extend([*comment, f"{pad}{name}: {_inline(placeholder)}  # required"])


def run_config_template(job_def, sections: tuple[str, ...] = ("ops",)) -> str:
    """YAML for `dagster job launch -c` / the launchpad: every op's config with defaults."""
    schema = job_def.run_config_schema.config_type
    lines = [f"# Run config for {job_def.name}: every field at its default; delete what you do not change."]
    for section in sections:
        field = schema.fields.get(section)
        if field is None or not _is_shape(field.config_type):
            continue
        lines.append(f"{section}:")
        _render(field.config_type, 2, lines)
    return "\n".join(lines) + "\n"
