"""Pydantic's validation errors as one ValueError whose message names each bad field's path."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from tandem_operator.spec.rules import FieldError

_PLAIN = {"extra_forbidden": "unknown field", "missing": "is required"}


def field_path(loc: tuple[str | int, ...], root: str = "spec") -> str:
    """A pydantic location as the spec path users write: spec.tiers[1].decode.minReplicas."""
    path = root
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def spec_error(error: ValidationError, root: str = "spec") -> ValueError:
    """One ValueError naming every field pydantic refused, in the spec's own names."""
    lines = []
    for item in error.errors(include_url=False):
        loc, message = _located(item)
        line = f"{field_path(loc, root)}: {message}"
        if line not in lines:
            lines.append(line)
    return ValueError("; ".join(lines))


def _located(item: dict[str, Any]) -> tuple[tuple[str | int, ...], str]:
    # Union members add their type's name to the location ("function-after[...]"): skip them.
    loc = tuple(part for part in item["loc"] if isinstance(part, int) or "[" not in part)
    cause = (item.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        return loc + cause.where, str(cause)
    message = _PLAIN.get(item["type"], item["msg"])
    if item["type"] == "value_error":
        message = str(cause) if cause is not None else message.removeprefix("Value error, ")
    elif item["type"] not in _PLAIN and not isinstance(item.get("input"), dict | list):
        message += f", got {item['input']!r}"  # a scalar: short enough to quote
    return loc, message
