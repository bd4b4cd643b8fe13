"""Turn pydantic's errors into one line that names the key, its line, and what to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from appliance.errors import ConfigError
from appliance.yamlfile import KeyPath, line_of

Model = TypeVar("Model", bound=BaseModel)


def _dotted(loc: KeyPath) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(top level)"


def _advice(error: dict[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    given = error.get("input")
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    if kind == "missing":
        return "required key is missing; add it"
    if kind in {"greater_than_equal", "greater_than"}:
        return f"{given!r} is below the minimum {ctx.get('ge', ctx.get('gt'))}; raise it"
    if kind in {"less_than_equal", "less_than"}:
        return f"{given!r} is above the maximum {ctx.get('le', ctx.get('lt'))}; lower it"
    if kind == "literal_error":
        return f"{given!r} is not allowed; use one of {ctx.get('expected')}"
    if kind in {"string_type", "int_type", "int_parsing", "float_type", "bool_type", "list_type", "dict_type", "model_type"}:
        wanted = {
            "string_type": "a string (quote it)",
            "int_type": "a whole number",
            "int_parsing": "a whole number",
            "float_type": "a number (unquoted)",
            "bool_type": "true or false",
            "list_type": "a list",
            "dict_type": "a mapping of keys",
            "model_type": "a mapping of keys",
        }[kind]
        return f"{given!r} has the wrong type; write {wanted}"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def validate(model: type[Model], data: Any, source: Path, lines: dict[KeyPath, int]) -> Model:
    """Validate data against model; on failure raise ConfigError naming the first problem."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc: KeyPath = tuple(first["loc"])
        line = line_of(lines, loc)
        where = f"{source}:{line}" if line else str(source)
        raise ConfigError(f"{where}: {_dotted(loc)}: {_advice(first)}") from None


def fail_at(source: Path, lines: dict[KeyPath, int], loc: KeyPath, advice: str) -> ConfigError:
    """A ConfigError for a check made after validation (files that must exist, cross references)."""
    line = line_of(lines, loc)
    where = f"{source}:{line}" if line else str(source)
    return ConfigError(f"{where}: {_dotted(loc)}: {advice}")
