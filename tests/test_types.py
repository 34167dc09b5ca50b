"""DDL parsing, JSON Schema and from_json-like casts: pure Python, no Spark."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pytest
from pyspark.sql import types as T

from batch.errors import ConfigError, ParseCastError
from batch._types import caster, field_caster, parse_ddl, to_json_schema


@pytest.mark.parametrize("text,expected", [
    ("string", T.StringType()), ("BIGINT", T.LongType()), ("decimal(12, 3)", T.DecimalType(12, 3)),
    ("DECIMAL", T.DecimalType(10, 0)), ("varchar(20)", T.StringType()), ("timestamp_ntz", T.TimestampNTZType()),
    ("ARRAY<FLOAT>", T.ArrayType(T.FloatType(), True)),
    ("map<string, array<int>>", T.MapType(T.StringType(), T.ArrayType(T.IntegerType(), True), True)),
    ("STRUCT<a: INT, b STRING NOT NULL COMMENT 'the b'>",
     T.StructType([T.StructField("a", T.IntegerType(), True), T.StructField("b", T.StringType(), False)])),
    ("a INT, `odd name`` here` DOUBLE",
     T.StructType([T.StructField("a", T.IntegerType(), True), T.StructField("odd name` here", T.DoubleType(), True)])),
    ("STRUCT<>", T.StructType([])),
    ("struct<outer: struct<inner: array<struct<x: boolean>>>>", T.StructType([T.StructField("outer", T.StructType([
        T.StructField("inner", T.ArrayType(T.StructType([T.StructField("x", T.BooleanType(), True)]), True), True)]),
        True)])),
])
def test_parse_ddl(text, expected):
    assert parse_ddl(text) == expected


@pytest.mark.parametrize("text,needle", [
    ("STRUCT<a INT", "expected '>' but the text ended"), ("ARRAY<WIDGET>", "unknown type 'widget' at position 6"),
    ("a INT, a STRING", "duplicate field names"), ("", "must be a DDL type string"),
    (None, "must be a DDL type string"),
    ("INT extra", "unexpected 'extra'"), ("yaml", "unknown type 'yaml'"), ("a WIDGET", "unknown type 'widget'"),
])
def test_parse_ddl_errors(text, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_ddl(text)


def test_parse_ddl_passes_data_types_through():
    assert parse_ddl(T.LongType()) == T.LongType()


def test_json_schema_is_strict():
    schema = to_json_schema(parse_ddl("STRUCT<n: BIGINT, x: DOUBLE, ok: BOOLEAN, day: DATE, at: TIMESTAMP, "
                                      "tags: ARRAY<STRING>, counts: MAP<STRING, INT>>"))
    assert schema == {"type": "object", "additionalProperties": False,
                      "required": ["n", "x", "ok", "day", "at", "tags", "counts"], "properties": {
                          "n": {"type": "integer"}, "x": {"type": "number"}, "ok": {"type": "boolean"},
                          "day": {"type": "string", "format": "date"},
                          "at": {"type": "string", "format": "date-time"},
                          "tags": {"type": "array", "items": {"type": "string"}},
                          "counts": {"type": "object", "additionalProperties": {"type": "integer"}}}}


@pytest.mark.parametrize("ddl,answer,value", [
    ("STRING", '{"a": 1}', '{"a":1}'), ("STRING", '"text"', "text"), ("INT", "3", 3),
    ("BIGINT", "9007199254740993", 9007199254740993), ("DOUBLE", "1", 1.0),
    ("DECIMAL(5,2)", "1.25", decimal.Decimal("1.25")), ("BOOLEAN", "true", True), ("INT", "null", None),
    ("DATE", '"2024-02-03"', dt.date(2024, 2, 3)),
    ("TIMESTAMP", '"2024-01-02T03:04:05Z"', dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC)),
    ("ARRAY<INT>", "[1, null, 3]", [1, None, 3]), ("MAP<STRING, INT>", '{"a": 1}', {"a": 1}),
    ("MAP<INT, STRING>", '{"1": "x"}', {1: "x"}),
    ("a INT, b STRING", '{"a": 1, "extra": true}', {"a": 1, "b": None}),
    ("a STRING", '{"a": ["x"]}', {"a": '["x"]'}),
])
def test_caster_follows_from_json(ddl, answer, value):
    assert caster(parse_ddl(ddl), "ep")(answer) == value


@pytest.mark.parametrize("ddl,answer,needle", [
    ("INT", '"3"', "expected a whole number"), ("TINYINT", "300", "does not fit"), ("INT", "1.5", "whole number"),
    ("INT", "3.0", "whole number"),
    ("BOOLEAN", "1", "expected a boolean"), ("DOUBLE", '"x"', "expected a number"),
    ("a INT", '{"b": 1}', "none of the expected fields"), ("a INT", "[1]", "expected a JSON object"),
    ("ARRAY<INT>", '{"a": 1}', "expected a JSON array"), ("INT", "not json", "Expecting value"),
    ("DATE", "5", "expected a date/time string"),
])
def test_caster_refuses(ddl, answer, needle):
    with pytest.raises(ParseCastError) as caught:
        caster(parse_ddl(ddl), "my-ep")(answer)
    message = str(caught.value)
    assert message.startswith("[AI_FUNCTION_HTTP_PARSE_CAST_ERROR] endpoint 'my-ep'") and needle in message
    assert parse_ddl(ddl).simpleString() in message and answer[:5] in message


def test_numeric_arrays_convert_in_numpy():
    floats = caster(T.ArrayType(T.FloatType(), True), "ep")([0.5, 1, -2.25])
    assert isinstance(floats, np.ndarray) and floats.dtype == np.float32 and floats.tolist() == [0.5, 1.0, -2.25]
    doubles = caster(T.ArrayType(T.DoubleType(), True), "ep")("[0.1, 0.2]")
    assert doubles.dtype == np.float64 and doubles.tolist() == [0.1, 0.2]
    assert caster(T.ArrayType(T.DoubleType(), True), "ep")([1.0, None]) == [1.0, None]
    with pytest.raises(ParseCastError):
        caster(T.ArrayType(T.FloatType(), True), "ep")(["1.0"])


def test_long_answers_are_cut_in_messages():
    with pytest.raises(ParseCastError) as caught:
        caster(T.IntegerType(), "ep")("x" * 1000)
    assert "x" * 300 + "..." in str(caught.value) and "x" * 301 not in str(caught.value)


def test_field_caster():
    pick = field_caster("label", T.StringType(), ("a", "b"), "ep")
    assert pick('{"label": "a"}') == "a" and pick({"label": "c"}) is None
    assert field_caster("n", T.IntegerType(), (), "ep")('{"n": 4}') == 4
