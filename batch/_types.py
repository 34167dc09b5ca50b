"""Spark types for ``returnType`` and ``responseFormat``: DDL parsing, JSON Schema, and from_json-like casts.

The DDL parser is ours (not the JVM's) so that types are checked when a column is
built, on the driver, on executors and through Spark Connect alike, with messages
that say which part of the string is wrong.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
import re
from typing import Any
from collections.abc import Callable, Sequence

import numpy as np
from pyspark.sql import types as T

from .errors import ConfigError, ParseCastError

__all__ = ["parse_ddl", "to_json_schema", "caster", "field_caster", "simple_string"]

_PRIMITIVES: dict[str, T.DataType] = {
    "string": T.StringType(), "boolean": T.BooleanType(), "bool": T.BooleanType(),
    "tinyint": T.ByteType(), "byte": T.ByteType(), "smallint": T.ShortType(), "short": T.ShortType(),
    "int": T.IntegerType(), "integer": T.IntegerType(), "bigint": T.LongType(), "long": T.LongType(),
    "float": T.FloatType(), "real": T.FloatType(), "double": T.DoubleType(),
    "date": T.DateType(), "timestamp": T.TimestampType(), "timestamp_ntz": T.TimestampNTZType(),
    "timestamp_ltz": T.TimestampType(), "binary": T.BinaryType(),
}

_TOKEN = re.compile(r"\s*(?:(`(?:[^`]|``)*`)|([A-Za-z_][A-Za-z0-9_]*)|(\d+)|('(?:[^'\\]|\\.)*')|(\S))")


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while True:
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                break
            kind = ("name" if (m.group(1) or m.group(2)) else "num" if m.group(3)
                    else "str" if m.group(4) else "sym")
            value = m.group(1)[1:-1].replace("``", "`") if m.group(1) else m.group(0).strip()
            self.tokens.append((kind, value, m.start()))
            pos = m.end()
        self.i = 0

    def fail(self, what: str) -> ConfigError:
        at = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text)
        return ConfigError(f"cannot parse type '{self.text}': {what} at position {at}")

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self, what: str) -> str:
        """The next token, whatever it is; ``what`` names it for the error when the text ends."""
        if self.i >= len(self.tokens):
            raise self.fail(f"expected {what} but the text ended")
        self.i += 1
        return self.tokens[self.i - 1][1]

    def expect(self, literal: str) -> None:
        value = self.take(f"'{literal}'")
        if value.lower() != literal.lower():
            self.i -= 1
            raise self.fail(f"expected '{literal}', found '{value}'")

    def data_type(self) -> T.DataType:
        name = self.take("a type").lower()
        if name == "array":
            self.expect("<")
            element = self.data_type()
            self.expect(">")
            return T.ArrayType(element, True)
        if name == "map":
            self.expect("<")
            key = self.data_type()
            self.expect(",")
            value = self.data_type()
            self.expect(">")
            return T.MapType(key, value, True)
        if name == "struct":
            self.expect("<")
            fields = [] if self.peek() == ">" else self.fields(">")
            self.expect(">")
            return T.StructType(fields)
        if name in ("decimal", "dec", "numeric"):
            precision, scale = 10, 0
            if self.peek() == "(":
                self.expect("(")
                precision = int(self.take("precision"))
                if self.peek() == ",":
                    self.expect(",")
                    scale = int(self.take("scale"))
                self.expect(")")
            return T.DecimalType(precision, scale)
        if name in ("varchar", "char"):
            if self.peek() == "(":
                self.expect("(")
                self.take("length")
                self.expect(")")
            return T.StringType()
        if name in _PRIMITIVES:
            return _PRIMITIVES[name]
        self.i -= 1
        raise self.fail(f"unknown type '{name}'")

    def fields(self, closing: str | None) -> list[T.StructField]:
        fields = []
        while True:
            name = self.take("a field name")
            if self.peek() == ":":
                self.expect(":")
            data_type = self.data_type()
            nullable = True
            if (self.peek() or "").lower() == "not":
                self.expect("not")
                self.expect("null")
                nullable = False
            if (self.peek() or "").lower() == "comment":
                self.expect("comment")
                self.take("a comment")
            fields.append(T.StructField(name, data_type, nullable))
            if self.peek() != ",":
                break
            self.expect(",")
        names = [f.name for f in fields]
        if len(set(names)) != len(names):
            raise self.fail("duplicate field names")
        return fields


def parse_ddl(text: Any, what: str = "returnType") -> T.DataType:
    """A DDL type (``ARRAY<FLOAT>``, ``STRUCT<a: INT>``) or a field list (``a INT, b STRING``), like from_json."""
    if isinstance(text, T.DataType):
        return text
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"{what} must be a DDL type string such as 'STRUCT<label: STRING>', got {text!r}")
    parser = _Parser(text)
    result, error, reached = _whole(parser, parser.data_type)
    if error is not None:  # maybe a bare field list, as from_json accepts
        fields, second, further = _whole(parser, lambda: T.StructType(parser.fields(None)))
        if second is not None:  # the reading that got further (and not just to the end) says best what is wrong
            better = further > reached and "text ended" not in second.reason
            raise ConfigError(f"{what}: {(second if better else error).reason}")
        result = fields
    return result


def _whole(parser: _Parser, parse: Callable[[], T.DataType]) -> tuple[Any, ConfigError | None, int]:
    """Parse all of the text: (type, None, _) or (None, error, how far the parser got)."""
    parser.i = 0
    try:
        result = parse()
        if parser.peek() is not None:
            raise parser.fail(f"unexpected '{parser.peek()}'")
        return result, None, parser.i
    except ConfigError as exc:
        return None, exc, parser.i


def _contains(data_type: T.DataType, kind: type) -> bool:
    if isinstance(data_type, kind):
        return True
    if isinstance(data_type, T.ArrayType):
        return _contains(data_type.elementType, kind)
    if isinstance(data_type, T.MapType):
        return _contains(data_type.valueType, kind)
    if isinstance(data_type, T.StructType):
        return any(_contains(f.dataType, kind) for f in data_type.fields)
    return False


def simple_string(data_type: T.DataType) -> str:
    return data_type.simpleString()


def to_json_schema(data_type: T.DataType) -> dict[str, Any]:
    """The JSON Schema an endpoint is asked to follow (OpenAI strict mode: every field required, no extras)."""
    if isinstance(data_type, T.StructType):
        return {"type": "object",
                "properties": {f.name: to_json_schema(f.dataType) for f in data_type.fields},
                "required": [f.name for f in data_type.fields], "additionalProperties": False}
    if isinstance(data_type, T.ArrayType):
        return {"type": "array", "items": to_json_schema(data_type.elementType)}
    if isinstance(data_type, T.MapType):
        return {"type": "object", "additionalProperties": to_json_schema(data_type.valueType)}
    if isinstance(data_type, T.BooleanType):
        return {"type": "boolean"}
    if isinstance(data_type, T.IntegralType):
        return {"type": "integer"}
    if isinstance(data_type, (T.FractionalType,)):
        return {"type": "number"}
    if isinstance(data_type, T.DateType):
        return {"type": "string", "format": "date"}
    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType)):
        return {"type": "string", "format": "date-time"}
    if isinstance(data_type, T.BinaryType):
        return {"type": "string", "description": "base64"}
    return {"type": "string"}


_INT_RANGES: dict[type[T.DataType], int] = {T.ByteType: 8, T.ShortType: 16, T.IntegerType: 32, T.LongType: 64}


def caster(data_type: T.DataType, endpoint: str) -> Callable[[Any], Any]:
    """A function from an answer (JSON text or already-decoded JSON) to a Python value of ``data_type``.

    It follows from_json: strings accept any JSON value as text, a field that is absent is
    NULL, extra fields are ignored. What from_json would have to turn into a corrupt
    record (not JSON, a number that is text, an object with none of the fields) raises
    ``ParseCastError`` so that the row fails instead of silently turning NULL.
    """
    convert = _converter(data_type)
    type_name = data_type.simpleString()
    floats = _JsonNumber if _contains(data_type, T.DecimalType) else float

    def cast(answer: Any) -> Any:
        try:
            value = json.loads(answer, parse_float=floats) if isinstance(answer, str) else answer
            return convert(value)
        except (ValueError, TypeError, ArithmeticError) as exc:
            snippet = answer if isinstance(answer, str) else _snippet(answer)
            snippet = snippet if len(snippet) <= 300 else snippet[:300] + "..."
            raise ParseCastError(endpoint, f'Failed to parse model output when casting to the specified '
                                 f'returnType: "{type_name}" ({exc}), response JSON was: "{snippet}"') from None

    return cast


def _snippet(answer: Any) -> str:
    try:
        return json.dumps(answer, default=str)
    except (TypeError, ValueError):
        return repr(answer)


def field_caster(field: str, data_type: T.DataType, choices: Sequence[str], endpoint: str) -> Callable[[Any], Any]:
    """Like ``caster`` for ``STRUCT<field: data_type>``, giving the field; a value outside ``choices`` is NULL."""
    cast = caster(T.StructType([T.StructField(field, data_type, True)]), endpoint)
    allowed = frozenset(choices)

    def pick(answer: Any) -> Any:
        record = cast(answer)
        value = None if record is None else record[field]
        return value if not allowed or value in allowed else None

    return pick


def _converter(data_type: T.DataType) -> Callable[[Any], Any]:  # one branch per type
    if isinstance(data_type, T.StringType):
        return lambda v: v if v is None or isinstance(v, str) else _compact(v)
    if isinstance(data_type, T.BooleanType):
        def boolean(v: Any) -> Any:
            if v is None or isinstance(v, bool):
                return v
            raise TypeError(f"expected a boolean, got {_compact(v)}")
        return boolean
    if isinstance(data_type, T.IntegralType):
        return _integral(data_type)
    if isinstance(data_type, T.DecimalType):
        return _decimal(data_type)
    if isinstance(data_type, T.FractionalType):
        return _fractional(isinstance(data_type, T.FloatType))
    if isinstance(data_type, T.DateType):
        return lambda v: None if v is None else _date(v)
    if isinstance(data_type, (T.TimestampType, T.TimestampNTZType)):
        zoned = isinstance(data_type, T.TimestampType)
        return lambda v: None if v is None else _timestamp(v, zoned)
    if isinstance(data_type, T.BinaryType):
        return lambda v: None if v is None else _binary(v)
    if isinstance(data_type, T.ArrayType):
        return _array_converter(data_type)
    if isinstance(data_type, T.MapType):
        value_of = _converter(data_type.valueType)
        key_of = _converter(data_type.keyType)

        def mapping(v: Any) -> Any:
            if v is None:
                return None
            if not isinstance(v, dict):
                raise TypeError(f"expected a JSON object, got {type(v).__name__}")
            if isinstance(data_type.keyType, T.StringType):
                return {k: value_of(x) for k, x in v.items()}
            return {key_of(json.loads(k)): value_of(x) for k, x in v.items()}
        return mapping
    if isinstance(data_type, T.StructType):
        fields = [(f.name, _converter(f.dataType)) for f in data_type.fields]

        def struct(v: Any) -> Any:
            if v is None:
                return None
            if not isinstance(v, dict):
                raise TypeError(f"expected a JSON object, got {type(v).__name__}")
            if fields and not any(name in v for name, _ in fields):
                raise TypeError("none of the expected fields is present")
            return {name: convert(v.get(name)) for name, convert in fields}
        return struct
    raise ConfigError(f"unsupported type {data_type.simpleString()}")


class _JsonNumber(float):
    """A JSON number that keeps its text, so a DECIMAL gets every digit the model wrote, not a double's."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> _JsonNumber:
        number = super().__new__(cls, text)
        number.text = text
        return number


def _compact(v: Any) -> str:
    """JSON text as Spark writes it for a STRING field that held an object, an array or a number."""
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def _integral(data_type: T.DataType) -> Callable[[Any], Any]:
    """Whole JSON numbers only: from_json refuses 3.0, 1e2 and "3" for an integer field. Out of range is an
    error, where from_json gives NULL for INT and BIGINT and silently wraps TINYINT and SMALLINT."""
    bits = _INT_RANGES[type(data_type)]
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1)

    def integral(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"expected a whole number, got {_compact(v)}")
        if not low <= v < high:
            raise ValueError(f"{v} does not fit in {data_type.simpleString()}")
        return v
    return integral


_NON_NUMBERS = {"NaN": float("nan"), "Infinity": float("inf"), "+Infinity": float("inf"),
                "-Infinity": float("-inf")}
_FLOAT_MAX = float(np.finfo(np.float32).max)


def _fractional(single: bool) -> Callable[[Any], Any]:
    """As from_json: "NaN" and "Infinity" in quotes are numbers, other text is not; a FLOAT beyond its range
    is infinite (numpy would say so with a warning, Arrow by refusing the batch)."""
    def fractional(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, str) and v in _NON_NUMBERS:
            return _NON_NUMBERS[v]
        number = float(_number(v))
        if single and abs(number) > _FLOAT_MAX and number == number:
            return float("inf") if number > 0 else float("-inf")
        return number
    return fractional


def _decimal(data_type: T.DecimalType) -> Callable[[Any], Any]:
    """Rounded half up to the scale, as Spark does; a value with more digits than the precision allows is an
    error (from_json gives NULL, or fails in FAILFAST mode): Arrow would refuse the whole batch for it."""
    step = decimal.Decimal(1).scaleb(-data_type.scale)
    room = data_type.precision - data_type.scale  # digits left of the point
    context = decimal.Context(prec=data_type.precision + 2, rounding=decimal.ROUND_HALF_UP)

    def to_decimal(v: Any) -> Any:
        if v is None:
            return None
        if isinstance(v, str):
            try:
                d = decimal.Decimal(v.strip())
            except decimal.InvalidOperation:
                raise TypeError(f"expected a number, got {_compact(v)}") from None
        else:
            d = decimal.Decimal(v.text if isinstance(v, _JsonNumber) else str(_number(v)))
        if not d.is_finite():
            raise ValueError(f"{v} is not a finite number")
        if d and d.adjusted() >= room:
            raise ValueError(f"{v} does not fit in {data_type.simpleString()}")
        rounded = d.quantize(step, context=context)
        if rounded and rounded.adjusted() >= room:  # 99.995 rounds up to 100.00
            raise ValueError(f"{v} does not fit in {data_type.simpleString()}")
        return rounded
    return to_decimal


# Spark's own date and time text: a year of four digits, then optional parts; 'T' or a space before the time.
_DATE = re.compile(r"\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2}))?)?(?:[T ].*)?\s*$")
_TIMESTAMP = re.compile(r"\s*(\d{4})(?:-(\d{1,2})(?:-(\d{1,2})(?:[T ](\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d*))?)?"
                        r")?)?)?\s*(Z|UTC|GMT|[+-]\d{1,2}(?::?\d{2})?)?\s*$", re.IGNORECASE)


def _date(v: Any) -> dt.date:
    m = _DATE.match(_text(v))
    if not m:
        raise ValueError(f"{_compact(v)} is not a date (yyyy-mm-dd)")
    year, month, day = (int(part) if part else 1 for part in m.groups())
    return dt.date(year, month, day)


def _timestamp(v: Any, zoned: bool) -> dt.datetime:
    """Seconds since the epoch for a number (as from_json), else ISO 8601 text; text without a zone is in
    the session's time zone, which is how Spark reads a naive Python datetime too."""
    if zoned and isinstance(v, int) and not isinstance(v, bool):
        return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=v)
    m = _TIMESTAMP.match(_text(v))
    if not m:
        raise ValueError(f"{_compact(v)} is not a timestamp (yyyy-mm-ddThh:mm:ss[.ffffff][zone])")
    *parts, fraction, zone = m.groups()
    year, month, day, hour, minute, second = (int(p) if p else d for p, d in zip(parts, (0, 1, 1, 0, 0, 0)))
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    if zone is None:
        return dt.datetime(year, month, day, hour, minute, second, micros)
    if not zoned:
        raise ValueError(f"{_compact(v)} has a time zone, which TIMESTAMP_NTZ cannot hold")
    return dt.datetime(year, month, day, hour, minute, second, micros, tzinfo=_zone(zone))


def _zone(text: str) -> dt.timezone:
    if text.upper() in ("Z", "UTC", "GMT"):
        return dt.UTC
    sign = -1 if text[0] == "-" else 1
    digits = text[1:].replace(":", "")
    hours, minutes = (int(digits[:-2]), int(digits[-2:])) if len(digits) > 2 else (int(digits), 0)
    return dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))


def _binary(v: Any) -> bytes:
    """BINARY travels in JSON as base64 text, which from_json decodes."""
    try:
        return base64.b64decode(_text(v), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{_compact(v)} is not base64") from None


def _array_converter(data_type: T.ArrayType) -> Callable[[Any], Any]:
    """Numeric arrays (embeddings: thousands of numbers a row) convert in numpy, not element by element."""
    element = _converter(data_type.elementType)
    vector = _NUMPY_TYPES.get(type(data_type.elementType))

    def array(v: Any) -> Any:
        if v is None:
            return None
        if vector is not None and getattr(v, "ndim", 0) == 1 and v.dtype.kind in "iuf":  # decoded already
            return v.astype(vector, copy=False)
        if not isinstance(v, list):
            raise TypeError(f"expected a JSON array, got {type(v).__name__}")
        if vector is not None and set(map(type, v)) <= _PLAIN_NUMBERS:  # no true, no text, no null
            return np.asarray(v, dtype=vector)
        return [element(x) for x in v]
    return array


_PLAIN_NUMBERS = frozenset({int, float, _JsonNumber})
_NUMPY_TYPES: dict[type[T.DataType], type[np.floating[Any]]] = {T.FloatType: np.float32, T.DoubleType: np.float64}


def _number(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"expected a number, got {_compact(v)}")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a date/time string, got {_compact(v)}")
    return v
