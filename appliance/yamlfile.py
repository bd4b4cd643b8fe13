"""Read YAML with line numbers kept, so errors can point at the line to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from appliance.errors import ConfigError

KeyPath = tuple[str | int, ...]


def _line_map(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = path + (key_node.value,)
            _line_map(value_node, child, lines)
            # The key's own line reads better than where its value starts.
            lines[child] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, path + (index,), lines)


def load_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Return the parsed document and a map from key path to line number."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; create it or pass the right path")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix the syntax on that line") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}".replace("\n", " ")) from None
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _line_map(node, (), lines)
    return data, lines


def line_of(lines: dict[KeyPath, int], loc: KeyPath) -> int | None:
    """The line of the deepest part of loc that the file has (a missing key points at its parent)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
