"""Reading Spark SQL text: finding function calls in a query, splitting their arguments, constant values.

Only as much of the language as ``batch.sql`` needs to find and rewrite AI function calls:
quoted strings, backquoted names and comments are skipped as Spark's lexer skips them, so a
call inside one is never touched, and everything else of the query stays byte for byte as
written. Regenerating the query through a SQL parser would risk changing it.
"""

from __future__ import annotations

import re
from typing import Any
from collections.abc import Iterator

from .errors import ConfigError

__all__ = ["calls", "split_args", "literal", "bind_arguments"]

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _skip(text: str, i: int) -> int:
    """Index after a quoted string, backquoted name or comment starting at ``i``; ``i`` if none starts there."""
    c = text[i]
    if c in "'\"`":
        j = i + 1
        while j < len(text):
            if text[j] == "\\" and c != "`":
                j += 2
                continue
            if text[j] == c:
                if j + 1 < len(text) and text[j + 1] == c:  # doubled quote
                    j += 2
                    continue
                return j + 1
            j += 1
        raise ConfigError(f"unterminated {c} in SQL text at position {i}")
    if text.startswith("--", i):
        end = text.find("\n", i)
        return len(text) if end < 0 else end + 1
    if text.startswith("/*", i):
        end = text.find("*/", i + 2)
        if end < 0:
            raise ConfigError(f"unterminated comment in SQL text at position {i}")
        return end + 2
    return i


def _closing(text: str, open_index: int) -> int:
    depth, i = 0, open_index
    while i < len(text):
        j = _skip(text, i)
        if j != i:
            i = j
            continue
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ConfigError(f"unbalanced parenthesis in SQL text at position {open_index}")


def split_args(text: str) -> list[str]:
    """The top-level comma-separated pieces of an argument list, stripped (commas in strings and brackets kept).

    ``""`` gives ``[]``; raises ConfigError for an unterminated string or comment.
    """
    args, depth, start, i = [], 0, 0, 0
    while i < len(text):
        j = _skip(text, i)
        if j != i:
            i = j
            continue
        if text[i] in "([":
            depth += 1
        elif text[i] in ")]":
            depth -= 1
        elif text[i] == "," and depth == 0:
            args.append(text[start:i])
            start = i + 1
        i += 1
    tail = text[start:]
    if tail.strip() or args:
        args.append(tail)
    return [a.strip() for a in args]


def calls(text: str, names: set[str]) -> Iterator[tuple[int, int, str, str]]:
    """Yield ``(start, end, name, inner)`` for each call of one of ``names`` (lower case) outside strings and comments.

    ``text[start:end]`` is the whole call, ``name`` its lower-cased function name and ``inner`` the
    text between its parentheses; calls nested inside a found call are not yielded (rewrite ``inner``
    for those), nor are qualified names (``x.ai_query(``). Raises ConfigError for an unbalanced
    parenthesis or an unterminated string or comment.
    """
    i = 0
    while i < len(text):
        j = _skip(text, i)
        if j != i:
            i = j
            continue
        m = _IDENT.match(text, i)
        if not m:
            i += 1
            continue
        word, after = m.group(0), m.end()
        k = after
        while k < len(text) and text[k].isspace():
            k += 1
        before = text[:i].rstrip()
        if word.lower() in names and k < len(text) and text[k] == "(" and not before.endswith("."):
            close = _closing(text, k)
            yield i, close + 1, word.lower(), text[k + 1:close]
            i = close + 1
        else:
            i = after


# ---------------------------------------------------------------- constant arguments

# Spark's string literal escapes (SparkParserUtils.unescapeSQLString): \uXXXX (a surrogate pair makes one
# character), \UXXXXXXXX, three octal digits starting 0 or 1, one character.
_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[01][0-7]{2}|.)", re.DOTALL)
_ESCAPED = {"0": "\0", "b": "\b", "n": "\n", "r": "\r", "t": "\t", "Z": "\x1a", "%": "\\%", "_": "\\_"}


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    if code[0] in "uU" and len(code) > 1:
        point = int(code[1:], 16)
        return chr(point) if point <= 0x10FFFF else code
    if len(code) == 3:
        return chr(int(code, 8))
    return _ESCAPED.get(code, code)


def _unescaped(body: str) -> str:
    text = _ESCAPE.sub(_unescape, body)
    # \uD83D\uDE00: two UTF-16 halves, one character, as Java strings hold it
    return text.encode("utf-16", "surrogatepass").decode("utf-16") if re.search("[\ud800-\udfff]", text) else text


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[dDfFlL]?$")


def literal(text: str, what: str) -> Any:
    """The Python value of a constant SQL expression, or ConfigError naming ``what`` if it is not one.

    Strings give ``str``, integers ``int``, other numbers ``float``, TRUE/FALSE ``bool``, NULL ``None``;
    ``array(...)`` a list, ``named_struct``/``map`` a dict and ``struct`` a dict keyed ``col1``, ``col2``...
    """
    t = text.strip()
    if not t:
        raise ConfigError(f"{what} is empty")
    if t[0] in "'\"" and _skip(t, 0) == len(t):
        return _unescaped(t[1:-1].replace(t[0] * 2, t[0]))
    lower = t.lower()
    if lower in ("true", "false"):
        return lower == "true"
    if lower == "null":
        return None
    if _NUMBER.match(t):
        core = t.rstrip("dDfFlL")
        return float(core) if any(c in core for c in ".eE") else int(core)
    m = re.match(r"^(named_struct|array|map|struct)\s*\(", t, re.IGNORECASE)
    if m and _closing(t, m.end() - 1) == len(t) - 1:
        items = [literal(a, what) for a in split_args(t[m.end():-1])]
        kind = m.group(1).lower()
        if kind == "array":
            return items
        if kind == "struct":
            return {f"col{i + 1}": v for i, v in enumerate(items)}
        if len(items) % 2:
            raise ConfigError(f"{what}: {kind} needs key, value pairs")
        return {str(items[i]): items[i + 1] for i in range(0, len(items), 2)}
    raise ConfigError(f"{what} must be a constant (a literal or named_struct of literals), got `{t}`")


def bind_arguments(function: str, args: list[str], names: tuple[str, ...]) -> dict[str, str]:
    """The argument texts of a call of ``function``, keyed by their names in ``names``.

    Positional arguments take ``names`` in order, ``name => value`` ones (any case) their name. Raises
    ConfigError, as Spark would refuse the call, for an unknown name, too many arguments, an
    argument given twice, or a positional argument after a named one.
    """
    bound: dict[str, str] = {}
    lower = {n.lower(): n for n in names}
    named = False
    for position, arg in enumerate(args):
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=>\s*(.*)$", arg, re.DOTALL)
        if m:
            key = lower.get(m.group(1).lower())
            if key is None:
                raise ConfigError(f"{function}: unknown argument '{m.group(1)}' (arguments: {', '.join(names)})")
            value, named = m.group(2), True
        else:
            if named:  # as Spark itself rules
                raise ConfigError(f"{function}: a positional argument cannot follow a named one")
            if position >= len(names):
                raise ConfigError(f"{function}: too many arguments (at most {len(names)})")
            key, value = names[position], arg
        if key in bound:
            raise ConfigError(f"{function}: argument '{key}' given twice")
        bound[key] = value
    return bound
