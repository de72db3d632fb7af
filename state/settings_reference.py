"""The configuration reference, made from the settings classes themselves: one table per section of
`state/settings.py`, in its order, so the documented names, types, defaults and bounds cannot drift from the code.

The docs site renders it at build time (docs/hooks.py).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from xling.state.settings import SECTIONS, Settings

ENV_PREFIX = "XLING_"

# Variables that only the command-line client reads (cli/client.py): not settings of a service process.
CLIENT_VARIABLES = (
    ("XLING_URL", "url", "http://127.0.0.1:8000", "the service that `xling index` and `xling search` talk to "
     "(`--url` overrides it)"),
    ("XLING_API_KEY", "secret", "unset", "the bearer key `xling index` and `xling search` send: the same variable "
     "as the service's write key, which every guarded route accepts"),
)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def type_text(annotation: Any) -> str:
    """A reader's name for a setting's type: `flat | hnsw | qdrant`, `integer`, `seconds`..."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " \\| ".join(f"`{value}`" for value in args)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(type_text(arg) for arg in args if arg is not type(None))
    names = {bool: "boolean", int: "integer", float: "number", str: "string", Path: "path", SecretStr: "secret"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def default_text(info: FieldInfo) -> str:
    default = info.default
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        default = int(default)
    if isinstance(default, Path) and not default.is_absolute():
        default = f"./{default}"
    return f"`{default}`"


def bounds_text(info: FieldInfo) -> str:
    """`≥ 1, ≤ 4096` from the field's constraints ('' when it has none)."""
    parts = []
    for constraint in info.metadata:
        for kind, symbol in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            value = getattr(constraint, kind, None)
            if isinstance(constraint, annotated_types.BaseMetadata) and value is not None:
                parts.append(f"{symbol} {value:,}" if isinstance(value, int) else f"{symbol} {value}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def section_table(section: type[BaseModel]) -> str:
    rows = ["| variable | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for name, info in section.model_fields.items():
        rows.append(
            f"| `{env_name(name)}` | {type_text(info.annotation)} | {default_text(info)} | {bounds_text(info)} | "
            f"{_cell(info.description or '')} |"
        )
    return "\n".join(rows)


def section_heading(section: type[BaseModel]) -> tuple[str, str]:
    """A section's title (its docstring's first line) and what it covers (the rest)."""
    title, _, intro = (section.__doc__ or section.__name__).strip().partition("\n")
    return title.strip(), " ".join(intro.split())


def reference_markdown() -> str:
    """Every setting of `Settings`, section by section (a `##` heading each), then the client's variables."""
    parts: list[str] = []
    for section in SECTIONS:
        title, intro = section_heading(section)
        parts += [f"## {title}", ""] + ([intro, ""] if intro else []) + [section_table(section), ""]
    parts += [
        "## The command-line client", "",
        "| variable | type | default | meaning |", "|---|---|---|---|",
        *(f"| `{name}` | {kind} | {default} | {_cell(meaning)} |" for name, kind, default, meaning in CLIENT_VARIABLES),
    ]
    return "\n".join(parts) + "\n"


def documented_variables() -> set[str]:
    """Every variable a service process reads (for the test that the page names them all)."""
    return {env_name(name) for name in Settings.model_fields}
