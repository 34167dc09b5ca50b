"""YAML loading that remembers where each key was written, so config errors can name the line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

Lines = dict[tuple[str, ...], int]


def load_yaml(path: str | Path) -> tuple[Any, Lines]:
    """Parse a YAML file; return its data and a map from key path to 1-based line number."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read file: {exc}", source=str(path)) from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> tuple[Any, Lines]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        if context and context_mark is not None:
            problem += f" ({context} started at line {context_mark.line + 1})"
        # A syntax error has no parsed keys to point at, so name the key written where the
        # broken construct starts: "which key" matters as much as "which line".
        where = context_mark or mark
        path = key_path_at(text, where.line + 1) if where is not None else ()
        raise ConfigError(f"malformed YAML: {problem}", source=source, key=".".join(path) or None,
                          line=mark.line + 1 if mark else None) from None
    lines: Lines = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


_KEY_LINE = re.compile(r"""^([ \t-]*)(?:"([^"]*)"|'([^']*)'|([^\s#'"][^:#]*?))\s*:(?:\s|$)""")


def key_path_at(text: str, line: int) -> tuple[str, ...]:
    """The block-style keys enclosing ``line`` (1-based), read from indentation alone.

    Good enough to name the entry and key around a syntax error; flow-style
    mappings and multi-line scalars are not followed.
    """
    stack: list[tuple[int, str]] = []
    for raw in text.splitlines()[:max(0, line)]:
        match = _KEY_LINE.match(raw)
        if not match:
            continue
        indent = len(match.group(1))
        key = next(g for g in match.groups()[1:] if g is not None).strip()
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, key))
    return tuple(key for _, key in stack)


def _walk(node: yaml.Node, prefix: tuple[str, ...], lines: Lines) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = prefix + (str(key_node.value),)
            lines[path] = key_node.start_mark.line + 1
            _walk(value_node, path, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            path = prefix + (str(i),)
            lines[path] = item.start_mark.line + 1
            _walk(item, path, lines)


def line_of(lines: Lines, *path: str) -> int | None:
    """The line of the deepest written prefix of ``path``: a missing key is reported at its parent."""
    for end in range(len(path), 0, -1):
        if path[:end] in lines:
            return lines[path[:end]]
    return None
