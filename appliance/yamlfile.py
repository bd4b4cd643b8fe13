"""Read YAML with line numbers kept, so errors can point at the line to change.

The files are small and hand-written, so anything unusual is refused with the line to fix
rather than handled: files over MAX_BYTES, anchors and aliases (a few hundred bytes of nested
aliases expand to gigabytes), duplicate keys (YAML would silently keep the last one), text that
is not UTF-8. The text is parsed once: the node tree gives the line map and the data.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.resolver import Resolver

from appliance.errors import ConfigError

KeyPath = tuple[str | int, ...]

MAX_BYTES = 1 << 20  # 1 MiB; the messages say so

try:  # libyaml's parser when present (several times faster); the composer stays ours
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML without libyaml
    from yaml.reader import Reader
    from yaml.scanner import Scanner
    from yaml.parser import Parser

    class _Parser(Reader, Scanner, Parser):  # type: ignore[no-redef]
        def __init__(self, stream: str) -> None:
            Reader.__init__(self, stream)
            Scanner.__init__(self)
            Parser.__init__(self)


class _NoAliases(Exception):
    def __init__(self, line: int, what: str) -> None:
        super().__init__(line, what)
        self.line = line
        self.what = what


class _Loader(Composer, _Parser, SafeConstructor, Resolver):  # type: ignore[misc, valid-type]
    def __init__(self, text: str) -> None:
        _Parser.__init__(self, text)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            raise _NoAliases(event.start_mark.line + 1, f"alias *{event.anchor}")
        if event.anchor is not None:
            raise _NoAliases(event.start_mark.line + 1, f"anchor &{event.anchor}")
        return super().compose_node(parent, index)


def _key_text(node: yaml.Node) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _line_map(root: yaml.Node, source: Path) -> dict[KeyPath, int]:
    """Map each key path to its line; refuse duplicate and non-scalar keys. Iterative, so deep
    nesting costs no recursion, and each node is visited once (there are no aliases)."""
    lines: dict[KeyPath, int] = {}
    stack: list[tuple[yaml.Node, KeyPath, int]] = [(root, (), root.start_mark.line + 1)]
    while stack:
        node, path, line = stack.pop()
        lines[path] = line
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key_line = key_node.start_mark.line + 1
                key = _key_text(key_node)
                if key is None:
                    raise ConfigError(f"{source}:{key_line}: a key must be a plain word, not a list or mapping; rewrite that key")
                if key == "<<":
                    raise ConfigError(f"{source}:{key_line}: merge keys (<<) are not supported; write the keys out")
                if key in seen:
                    raise ConfigError(
                        f"{source}:{key_line}: duplicate key {key!r} (first on line {seen[key]}); keep only one of them"
                    )
                seen[key] = key_line
                # The key's own line reads better than where its value starts.
                stack.append((value_node, path + (key,), key_line))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, path + (index,), item.start_mark.line + 1))
    return lines


def _read_text(path: Path) -> str:
    try:
        # stat before open: opening a named pipe for reading would wait for a writer forever
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{path}: is a folder, not a YAML file; pass the file's path")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: is not a regular file; pass the path of a YAML file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; create it or pass the right path") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}; check the path and its permissions") from None
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than the 1 MiB a workshop file may have; check the path, or shorten the file")
    if b"\0" in data:
        line = data[: data.index(b"\0")].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: binary data (a NUL byte), not YAML text; check the path")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def load_yaml(path: Path) -> tuple[Any, dict[KeyPath, int]]:
    """Return the parsed document and a map from key path to line number."""
    text = _read_text(path)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines = _line_map(node, path) if node is not None else {}
        data = loader.construct_document(node) if node is not None else None
    except _NoAliases as exc:
        raise ConfigError(
            f"{path}:{exc.line}: YAML {exc.what}: anchors and aliases are not supported; write the value out in full"
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = ", ".join(part for part in (exc.context, exc.problem) if part) or "invalid YAML"
        problem = problem.replace("\n", " ")
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix the syntax on that line") from None
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: a character YAML does not allow ({exc.reason}); remove it") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {exc}".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a workshop file; check its brackets and indentation") from None
    finally:
        loader.dispose()
    return data, lines


def line_of(lines: dict[KeyPath, int], loc: KeyPath) -> int | None:
    """The line of the deepest part of loc that the file has (a missing key points at its parent)."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
