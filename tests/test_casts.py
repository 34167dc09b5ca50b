"""Answers cast into ``returnType`` exactly as Spark's ``from_json`` reads them, checked against real Spark.

The rule: where ``from_json`` (FAILFAST mode, as ai_query's own parse errors are) gives a value, the cast gives
the same value; where it refuses a record, the row gets an AI_FUNCTION_HTTP_PARSE_CAST_ERROR. No answer, whatever
its shape, fails more than its own row: what Arrow cannot store becomes that row's error too.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json

import pytest

import batch
from batch._arguments import build_spec
from batch.config import registry
from batch._engine import RowOutcome
from batch.errors import EndpointError, ParseCastError
from batch.serve.simulate import simulated_json
from batch._types import caster, parse_ddl
from batch._udf import rows_to_frame
import support

FAST = {**support.FAST, "max_retries": 2}

# (field type, JSON value): each read by from_json on real Spark and by our cast.
CASES = [
    ("DECIMAL(10,2)", "12.345"), ("DECIMAL(10,2)", "12.355"), ("DECIMAL(10,2)", "-12.345"),
    ("DECIMAL(10,2)", "123456789012.5"), ("DECIMAL(10,2)", "99999999.995"), ("DECIMAL(10,2)", '"12.5"'),
    ("DECIMAL(10,2)", "1e3"), ("DECIMAL(10,2)", "1.5e-3"), ("DECIMAL(10,2)", "12"), ("DECIMAL(2,2)", "0.1"),
    ("DECIMAL(2,2)", "1.0"), ("DECIMAL(38,10)", "1234567890.12345678901234"), ("DECIMAL(10,2)", "true"),
    ("INT", "2147483648"), ("INT", "3.0"), ("INT", "3.5"), ("INT", '"3"'), ("INT", "1e2"), ("INT", "-7"),
    ("BIGINT", "9223372036854775808"), ("BIGINT", "9223372036854775807"),
    ("DOUBLE", "NaN"), ("DOUBLE", '"NaN"'), ("DOUBLE", '"Infinity"'), ("DOUBLE", '"-Infinity"'), ("DOUBLE", '"INF"'),
    ("DOUBLE", "1e400"), ("FLOAT", "1e39"), ("DOUBLE", '"1.5"'), ("DOUBLE", "true"), ("DOUBLE", "2"),
    ("DATE", '"2024-01-05"'), ("DATE", '"2024-1-5"'), ("DATE", '"2024-01-05T10:00:00Z"'), ("DATE", '"05/01/2024"'),
    ("DATE", '"2024-02-30"'), ("DATE", "19000"), ("DATE", '"2024"'), ("DATE", '"2024-01"'),
    ("TIMESTAMP", '"2024-01-05 10:00:00"'), ("TIMESTAMP", '"2024-01-05T10:00:00.123456789Z"'),
    ("TIMESTAMP", '"2024-01-05T10:00:00+05:30"'), ("TIMESTAMP", '"2024-01-05"'), ("TIMESTAMP", "1700000000"),
    ("TIMESTAMP", '"Jan 5 2024"'), ("TIMESTAMP", '"2024-01-05T10:00"'),
    ("TIMESTAMP_NTZ", '"2024-01-05T10:00:00Z"'), ("TIMESTAMP_NTZ", '"2024-01-05T10:00:00"'),
    ("ARRAY<INT>", '[1, "x"]'), ("ARRAY<ARRAY<INT>>", "[[1, 2], [3]]"), ("ARRAY<DOUBLE>", "[1, true]"),
    ("MAP<STRING, INT>", '{"k": 1}'), ("BOOLEAN", '"yes"'), ("BOOLEAN", "1"), ("BOOLEAN", '"true"'),
    ("STRING", '{"b": 1}'), ("STRING", "[1, 2]"), ("BINARY", '"aGVsbG8="'),
]


def _ours(ddl: str, value: str):
    """(True, value) or (False, None) when the row is a cast error."""
    data_type = parse_ddl(f"a {ddl}")
    try:
        row = caster(data_type, "ep")('{"a": ' + value + "}")
    except ParseCastError:
        return False, None
    got = row["a"]
    if isinstance(got, dt.datetime) and got.tzinfo is not None:
        got = got.astimezone(dt.UTC).replace(tzinfo=None)
    return True, got.tolist() if hasattr(got, "tolist") else got


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True
    return a == b


@pytest.mark.spark
def test_casts_match_from_json_on_real_spark(spark):
    assert spark.conf.get("spark.sql.session.timeZone") in ("UTC", "Etc/UTC", "GMT")  # naive times read alike
    mismatches = []
    for ddl in dict.fromkeys(d for d, _ in CASES):
        values = [v for d, v in CASES if d == ddl]
        texts = spark.createDataFrame([('{"a": ' + v + "}",) for v in values], "j string")
        rows = texts.selectExpr(f"from_json(j, 'a {ddl}, _corrupt_record STRING') AS r").collect()
        for value, row in zip(values, rows):
            refused = row.r is None or row.r["_corrupt_record"] is not None  # what FAILFAST refuses
            spark_value = None if refused else row.r["a"]
            ok, ours = _ours(ddl, value)
            if ok == refused or (ok and not _same(ours, spark_value)):
                mismatches.append((ddl, value, "refused" if refused else spark_value, ours if ok else "refused"))
    assert mismatches == []


@pytest.mark.parametrize("ddl,value,ours,spark_gives", [
    ("TINYINT", "128", "refused", -128),          # Spark wraps silently
    ("INT", "{}", "refused", None),               # an object for a number
])
def test_where_we_refuse_what_from_json_would_corrupt(ddl, value, ours, spark_gives):
    assert _ours(ddl, value) == (False, None)


def test_decimal_rounds_half_up_and_keeps_every_digit():
    cast = caster(parse_ddl("STRUCT<amount: DECIMAL(10,2), exact: DECIMAL(38,20)>"), "ep")
    row = cast('{"amount": 12.345, "exact": 0.12345678901234567890123}')
    assert row == {"amount": decimal.Decimal("12.35"), "exact": decimal.Decimal("0.12345678901234567890")}
    with pytest.raises(ParseCastError, match="does not fit in decimal"):
        cast('{"amount": 123456789012.5, "exact": 1}')


def test_a_row_arrow_cannot_store_fails_alone():
    spec = build_spec("chat-casts", failOnError=False, returnType="STRUCT<amount: DECIMAL(10,2)>")
    outcomes = [RowOutcome(value={"amount": decimal.Decimal("1.25")}, answered=True),
                RowOutcome(value={"amount": decimal.Decimal("12.345")}, answered=True), RowOutcome()]
    frame = rows_to_frame(outcomes, spec, with_metadata=False)
    assert frame["result"].tolist()[0] == {"amount": decimal.Decimal("1.25")}
    assert frame["result"].tolist()[1:] == [None, None] and frame["errorMessage"].tolist()[0::2] == [None, None]
    assert "cannot be stored as struct<amount:decimal(10,2)>" in frame["errorMessage"][1]
    strict = build_spec("chat-casts", returnType="STRUCT<amount: DECIMAL(10,2)>")
    bad = [RowOutcome(value={"amount": decimal.Decimal("12.345")}, answered=True)]
    with pytest.raises(EndpointError, match="AI_FUNCTION_HTTP_PARSE_CAST_ERROR.*cannot be stored"):
        rows_to_frame(bad, strict, with_metadata=False)


def test_text_with_a_lone_surrogate_is_repaired():
    spec = build_spec("chat-casts")
    frame = rows_to_frame([RowOutcome(value="cut \ud83d", answered=True), RowOutcome(value="fine", answered=True)],
                          spec, with_metadata=False)
    assert frame.tolist() == ["cut \ufffd", "fine"]


@pytest.fixture(autouse=True)
def casts_endpoint(request):
    if "srv" in request.fixturenames:
        srv = request.getfixturevalue("srv")
        registry.add("chat-casts", api="openai", base_url=srv.url + "/v1", task="chat", **FAST)
    else:
        registry.add("chat-casts", api="openai", base_url="http://127.0.0.1:9/v1", task="chat", **FAST)


AMOUNT = "STRUCT<amount: DECIMAL(10,2), note: STRING>"


@pytest.mark.spark
def test_decimal_answers_through_spark_are_rounded_not_a_crash(spark, srv):
    prompts = [f"invoice {i}" for i in range(12)]
    df = spark.createDataFrame([(p,) for p in prompts], "prompt string")
    out = df.select("prompt", batch.ai_query("chat-casts", "prompt", returnType=AMOUNT, responseFormat=AMOUNT,
                                             failOnError=False).alias("r")).collect()
    spec = build_spec("chat-casts", responseFormat=AMOUNT)
    for row in out:
        sent = json.loads(simulated_json(row.prompt, spec.response_format), parse_float=decimal.Decimal)
        want = sent["amount"].quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_UP)
        assert row.r.errorMessage is None and row.r.result.amount == want
    assert any(json.loads(simulated_json(p, spec.response_format))["amount"] * 100 % 1 for p in prompts)


BIG = json.dumps({"type": "json_schema", "json_schema": {"name": "r", "strict": True, "schema": {
    "type": "object", "required": ["amount"], "additionalProperties": False,
    "properties": {"amount": {"type": "number", "minimum": 1e12}}}}})


@pytest.mark.spark
def test_decimal_overflow_through_spark_is_a_row_error(spark, srv):
    df = spark.createDataFrame([(f"huge {i}",) for i in range(4)] + [(None,)], "prompt string")
    rows = df.select(batch.ai_query("chat-casts", "prompt", returnType="STRUCT<amount: DECIMAL(10,2)>",
                                    responseFormat=BIG, failOnError=False).alias("r")).collect()
    assert rows[4].r.result is None and rows[4].r.errorMessage is None  # a NULL request asks nothing
    for row in rows[:4]:
        assert row.r.result is None and "[AI_FUNCTION_HTTP_PARSE_CAST_ERROR]" in row.r.errorMessage
        assert "does not fit in decimal(10,2)" in row.r.errorMessage
    failing = df.select(batch.ai_query("chat-casts", "prompt", returnType="STRUCT<amount: DECIMAL(10,2)>",
                                       responseFormat=BIG).alias("r"))
    with pytest.raises(Exception, match="does not fit in decimal"):
        failing.collect()
