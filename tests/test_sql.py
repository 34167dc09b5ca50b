"""Reading SQL text: constant arguments, named arguments and finding calls. Pure Python, no Spark."""

from __future__ import annotations

import pytest

from batch.errors import ConfigError
from batch._sql import ARGUMENTS
from batch._sqltext import bind_arguments, calls as _calls, literal, split_args as _split_args


@pytest.mark.parametrize("text,value", [
    ("'abc'", "abc"), ('"it\'s"', "it's"), (r"'a\nb\\c\'d'", "a\nb\\c'd"), ("'it''s'", "it's"),
    ("42", 42), ("-1.5", -1.5), ("2e3", 2000.0), ("10L", 10), ("0.5D", 0.5), ("TRUE", True), ("false", False),
    ("NULL", None), ("array('a', 'b')", ["a", "b"]), ("array()", []),
    ("named_struct('max_tokens', 5, 'stop', array('x', 'y'))", {"max_tokens": 5, "stop": ["x", "y"]}),
    ("map('k', named_struct('n', 1))", {"k": {"n": 1}}), ("struct(1, 'a')", {"col1": 1, "col2": "a"}),
    ("NAMED_STRUCT ( 'a' , 1 )", {"a": 1}),
])
def test_literal(text, value):
    assert literal(text, "x") == value


@pytest.mark.parametrize("text,needle", [
    ("p", "must be a constant"), ("named_struct('t', p)", "must be a constant"), ("upper('a')", "must be a constant"),
    ("named_struct('a')", "key, value pairs"), ("  ", "is empty"), ("'a' || 'b'", "must be a constant"),
])
def test_literal_refuses(text, needle):
    with pytest.raises(ConfigError, match=needle):
        literal(text, "modelParameters")


def test_bind_arguments():
    assert bind_arguments("ai_query", ["'e'", "p", "failOnError => false"], ARGUMENTS) == {
        "endpoint": "'e'", "request": "p", "failOnError": "false"}
    assert bind_arguments("ai_query", ["endpoint => 'e'", "REQUEST=>p"], ARGUMENTS) == {
        "endpoint": "'e'", "request": "p"}


@pytest.mark.parametrize("args,needle", [
    (["endpoint => 'e'", "p"], "positional argument cannot follow a named one"),
    (["'e'", "p", "endpoint => 'f'"], "given twice"),
    (["'e'", "p", "'T'", "true", "null", "null", "extra"], "too many arguments"),
    (["'e'", "p", "temperature => 1"], "unknown argument 'temperature'"),
])
def test_bind_arguments_refuses(args, needle):
    with pytest.raises(ConfigError, match=needle):
        bind_arguments("ai_query", args, ARGUMENTS)


def test_split_args_respects_nesting_and_quotes():
    assert _split_args("'a,b', f(x, y), array(1, 2)[0], 'it''s, ok', `c,d`") == [
        "'a,b'", "f(x, y)", "array(1, 2)[0]", "'it''s, ok'", "`c,d`"]
    assert _split_args("") == [] and _split_args(" x ") == ["x"]


def test_calls_found_outside_strings_and_comments():
    text = ("SELECT ai_query('e', p) AS a, 'ai_query(x)' AS s, -- ai_query(c)\n"
            "/* ai_query(d) */ t.ai_query(q), AI_QUERY ('e', concat(p, ')')) FROM t")
    found = [(name, inner) for _, _, name, inner in _calls(text, {"ai_query"})]
    assert found == [("ai_query", "'e', p"), ("ai_query", "'e', concat(p, ')')")]


def test_calls_report_bad_text():
    with pytest.raises(ConfigError, match="unbalanced parenthesis"):
        list(_calls("SELECT ai_query('e', p FROM t", {"ai_query"}))
    with pytest.raises(ConfigError, match="unterminated"):
        list(_calls("SELECT ai_query('e, p) FROM t", {"ai_query"}))


def test_constants_from_pandas_columns():
    """Raw spark.sql hands constant arguments over as pandas columns of numpy values."""
    import numpy as np
    import pandas as pd

    from batch._rawsql import first, freeze
    assert first(pd.Series([np.int32(3)] * 2)) == 3 and type(first(pd.Series([np.int32(3)]))) is int
    assert first(pd.Series([np.array(["a", "b"])])) == ["a", "b"]
    assert first(pd.Series([True])) is True and first(None) is None and first(pd.Series([], dtype=object)) is None
    assert freeze({"b": np.array([1, 2]), "a": {"c": np.float64(0.5)}}) == (("a", (("c", 0.5),)), ("b", (1, 2)))
    assert hash(freeze({"x": [np.int64(1)]}))


ESCAPED_LITERALS = [r"'caf\u00e9'", r"'a\rb\tc\nd'", r"'x\\y'", r"'q\'s'", r"'a\%b\_c'", r"'\101\102'",
                    r"'\Z\b'", r"'plain \q'", "'it''s'", r'"double \" quote"', r"'\200\377'", r"'\U0001F600'",
                    r"'\uD83D\uDE00'", r"'\u12'", r"'\18\400'"]


@pytest.mark.spark
def test_string_literals_read_as_spark_reads_them(spark):
    """batch.sql reads constant arguments itself: each escape must give what Spark's parser gives."""
    row = spark.sql("SELECT " + ", ".join(f"{text} AS c{i}" for i, text in enumerate(ESCAPED_LITERALS))).first()
    assert [literal(text, "a label") for text in ESCAPED_LITERALS] == list(row)
