"""``ai_query`` through real Spark (local[2]) and real HTTP to ``batch.serve``, for both wire formats."""

from __future__ import annotations

import datetime
import json
import math

import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

import batch
from batch import ai_query
from batch._arguments import build_spec
from batch._client import pace_key
from batch.config import registry
from batch._flow.pace import LearnedRate
from batch.serve.simulate import simulated_answer, simulated_embedding, simulated_json, simulated_prediction
from batch._types import to_json_schema, parse_ddl
from batch._udf import make_udf
from support import answer, failure, texts

pytestmark = pytest.mark.spark

TEXT = ["chat", "completions", "dbx-chat", "dbx-completions"]
EMBED = ["embed", "dbx-embed"]
STRING = T.StringType()
FLOATS = T.ArrayType(T.FloatType(), True)


def answers(df, column="a"):
    return [row[column] for row in df.collect()]


def close(vector, text, dim=16):
    return vector == pytest.approx(simulated_embedding(text, dim), abs=1e-6)


# ---------------------------------------------------------------- exact answers and types

@pytest.mark.parametrize("name", TEXT)
def test_text_answers_exact_null_and_sent_once(spark, srv, endpoints, name):
    prompts = ["hello world", "second prompt", None, "hello world", "third one here", "second prompt"]
    df = texts(spark, prompts).select(ai_query(name, "p").alias("a"))
    assert df.schema["a"].dataType == STRING
    assert answers(df) == [answer(p) for p in prompts]
    assert srv.prompts()["calls"] == {"hello world": 1, "second prompt": 1, "third one here": 1}
    assert srv.stats()["requests"] == 3


def test_repeats_in_later_batches_are_not_sent_again(spark, srv, endpoints):
    prompts = ["one", "two", "one", None, "three", "two", "one", "three", "four", "one"]
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "2")
    try:
        rows = answers(texts(spark, prompts).select(ai_query("dbx-chat", "p").alias("a")))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    assert rows == [answer(p) for p in prompts]
    assert srv.prompts()["calls"] == {"one": 1, "two": 1, "three": 1, "four": 1}


@pytest.mark.parametrize("name", EMBED)
def test_embeddings_exact_and_packed(spark, srv, endpoints, name):
    words = [f"text number {i}" for i in range(18)]
    values = words + [None, words[0], words[5]]
    df = texts(spark, values).select(ai_query(name, F.col("p")).alias("a"))
    assert df.schema["a"].dataType == FLOATS
    rows = answers(df)
    assert rows[18] is None
    assert all(close(vector, text) for vector, text in zip(rows, values) if text is not None)
    assert srv.stats()["requests"] == math.ceil(18 / 8)  # batch_size 8, duplicates not sent
    assert all(count == 1 for count in srv.prompts()["calls"].values())


def test_custom_model_records_and_return_type(spark, srv, endpoints):
    data = [(1.5, "ab", 2), (None, "xyz", 1), (None, None, None), (4.0, None, 3), (0.5, "q", 0), (2.0, "rr", 1)]
    df = spark.createDataFrame(data, "a double, b string, c int").coalesce(1)
    request = F.struct("a", "b", "c")
    out = df.select(ai_query("dbx-custom", request).alias("a"),
                    ai_query("dbx-custom", request, returnType="FLOAT").alias("f"))
    assert out.schema["a"].dataType == T.DoubleType() and out.schema["f"].dataType == T.FloatType()
    expected = [None if all(v is None for v in row) else
                simulated_prediction({k: v for k, v in zip("abc", row) if v is not None}) for row in data]
    rows = out.collect()
    assert [r.a for r in rows] == expected
    assert [r.f for r in rows] == pytest.approx(expected)
    bodies = srv.bodies()
    assert all(set(body) == {"dataframe_records"} for body in bodies)
    assert {json.dumps(r, sort_keys=True) for b in bodies for r in b["dataframe_records"]} == {
        json.dumps({"a": a, "b": b, "c": c}, sort_keys=True) for a, b, c in data if (a, b, c) != (None,) * 3}
    assert srv.stats()["requests"] == 2 * math.ceil(5 / 4)  # two columns, batch_size 4


def test_custom_model_row_errors(spark, srv, endpoints):
    df = spark.createDataFrame([(1.0, "ok"), (2.0, "x [[fail:400]]"), (None, None), (3.0, "fine")],
                               "a double, b string").coalesce(1)
    rows = answers(df.select(ai_query("dbx-custom", F.struct("a", "b"), failOnError=False).alias("a")))
    assert [r.result for r in rows] == [3.0, None, None, 7.0]
    assert [r.errorMessage is None for r in rows] == [True, False, True, True]
    assert "endpoint 'dbx-custom' HTTP 400" in rows[1].errorMessage
    assert srv.stats()["requests"] == 1 + 3  # the packed request refused, then each row alone


# ---------------------------------------------------------------- failOnError => false

EXPECTED = {"chat": answer, "completions": answer, "dbx-chat": answer, "dbx-completions": answer,
            "embed": lambda p: simulated_embedding(p, 16), "dbx-embed": lambda p: simulated_embedding(p, 16)}


@pytest.mark.parametrize("name", TEXT + EMBED)
def test_fail_on_error_false_struct(spark, srv, endpoints, name):
    prompts = ["fine one", "bad [[fail:400]]", None, "fine two"]
    df = texts(spark, prompts).select(ai_query(name, "p", failOnError=False).alias("a"))
    result_type = FLOATS if name in EMBED else STRING
    assert df.schema["a"].dataType == T.StructType([T.StructField("result", result_type, True),
                                                    T.StructField("errorMessage", STRING, True)])
    rows = answers(df)
    for prompt, row in zip(prompts, rows):
        if prompt is None:
            assert row.result is None and row.errorMessage is None
            continue
        assert (row.result is None) != (row.errorMessage is None)
    assert rows[0].result == pytest.approx(EXPECTED[name]("fine one"), abs=1e-6)
    assert rows[3].result == pytest.approx(EXPECTED[name]("fine two"), abs=1e-6)
    message = rows[1].errorMessage
    assert message.startswith("[AI_FUNCTION_HTTP_REQUEST_ERROR]")
    assert f"endpoint '{name}'" in message and "HTTP 400" in message and "simulated failure 400" in message


ROW_ERRORS = [  # directive, what the row's errorMessage must hold
    ("[[fail:400]]", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "HTTP 400", "simulated failure 400"]),
    ("[[fail:404]]", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "HTTP 404", "simulated failure 404"]),
    ("[[fail:500]]", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "HTTP 500", "simulated failure 500"]),
    ("[[flaky:99:429]]", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "HTTP 429", "simulated fault 429"]),
    ("[[flaky:99:dbx-unavailable]]", ["HTTP 503", "TEMPORARILY_UNAVAILABLE"]),
    ("[[flaky:99:drop]]", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "connection failed"]),
    ("[[flaky:99:unexpected]]", ["AI_FUNCTION_INVALID_HTTP_RESPONSE", "HTTP 200", "no 'choices'"]),
    ("[[flaky:99:malformed]]", ["AI_FUNCTION_INVALID_HTTP_RESPONSE", "HTTP 200", "not JSON"]),
]


@pytest.mark.parametrize("name", ["chat", "dbx-completions"])
def test_each_error_kind_is_a_row_error(spark, srv, endpoints, name):
    prompts = ["good one", *(f"row {directive}" for directive, _ in ROW_ERRORS), "good two"]
    rows = answers(texts(spark, prompts).select(ai_query(name, "p", failOnError=False).alias("a")))
    assert [rows[0].result, rows[-1].result] == [answer("good one"), answer("good two")]
    assert rows[0].errorMessage is None and rows[-1].errorMessage is None
    for (directive, needles), row in zip(ROW_ERRORS, rows[1:-1]):
        assert row.result is None and f"endpoint '{name}'" in row.errorMessage, directive
        assert all(needle in row.errorMessage for needle in needles), row.errorMessage


FAILURES = [  # directive, endpoint, what the query's error must hold
    ("[[fail:400]]", "chat", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "HTTP 400", "simulated failure 400"]),
    ("[[fail:503]]", "dbx-chat", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "HTTP 503", "simulated failure 503"]),
    ("[[flaky:99:stall]]", "hasty-chat", ["AI_FUNCTION_HTTP_REQUEST_ERROR", "timeout"]),
]


@pytest.mark.parametrize("directive,name,needles", FAILURES, ids=[f[0] for f in FAILURES])
def test_fail_on_error_fails_the_query(spark, srv, more_endpoints, directive, name, needles):
    srv.configure(stall_seconds=1)
    prompts = ["good one", f"row {directive}", "good two"]
    message = failure(texts(spark, prompts).select(ai_query(name, "p").alias("a")))
    assert f"endpoint '{name}'" in message and "1 of 3 rows" in message
    assert all(needle in message for needle in needles), message


# ---------------------------------------------------------------- structured output

DDL = "STRUCT<sentiment: STRING, score: DOUBLE, tags: ARRAY<STRING>, day: DATE>"
SCHEMA_DOC = {"type": "json_schema", "json_schema": {"name": "review", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["label", "stars"],
    "properties": {"label": {"type": "string", "enum": ["good", "bad"]},
                   "stars": {"type": "integer", "minimum": 1, "maximum": 5}}}}}


@pytest.mark.parametrize("name", ["chat", "dbx-chat"])
def test_response_format_ddl(spark, srv, endpoints, name):
    prompts = ["the food was great", None, "slow service"]
    out = texts(spark, prompts).select(ai_query(name, "p", responseFormat=DDL).alias("text"),
                                       ai_query(name, "p", responseFormat=DDL, returnType=DDL).alias("typed"))
    assert out.schema["text"].dataType == STRING and out.schema["typed"].dataType == parse_ddl(DDL)
    rows = out.collect()
    wanted = {"type": "json_schema", "json_schema": {"name": "response", "strict": True,
                                                     "schema": to_json_schema(parse_ddl(DDL))}}
    assert all(body["response_format"] == wanted for body in srv.bodies())
    for prompt, row in zip(prompts, rows):
        if prompt is None:
            assert row.text is None and row.typed is None  # a NULL struct, not a struct of NULLs
            continue
        document = json.loads(simulated_json(prompt, wanted))
        assert row.text == simulated_json(prompt, wanted)
        assert row.typed.asDict() == {**document, "day": datetime.date.fromisoformat(document["day"])}


def test_response_format_json_schema(spark, srv, endpoints):
    prompts = ["first review", "second review"]
    out = texts(spark, prompts).select(
        ai_query("chat", "p", responseFormat=SCHEMA_DOC, returnType="label STRING, stars INT").alias("a"),
        ai_query("dbx-chat", "p", responseFormat=json.dumps(SCHEMA_DOC), returnType="label STRING, stars INT")
        .alias("b"))
    for prompt, row in zip(prompts, out.collect()):
        assert row.a.asDict() == row.b.asDict() == json.loads(simulated_json(prompt, SCHEMA_DOC))
        assert row.a.label in ("good", "bad") and 1 <= row.a.stars <= 5
    assert all(body["response_format"] == SCHEMA_DOC for body in srv.bodies())


def test_json_object_format(spark, srv, endpoints):
    out = texts(spark, ["say hi"]).select(
        ai_query("dbx-chat", "p", responseFormat="json_object", returnType="answer STRING").alias("a"))
    assert answers(out)[0].answer == simulated_answer("say hi")[0]
    assert srv.bodies()[0]["response_format"] == {"type": "json_object"}


def test_unparseable_structured_answer(spark, srv, endpoints):
    df = texts(spark, ["a fine review", "broken [[nonconforming]]", "broken [[badjson]]"])
    rows = answers(df.select(ai_query("chat", "p", responseFormat=DDL, returnType=DDL, failOnError=False)
                             .alias("a")))
    assert rows[0].errorMessage is None and rows[0].result.sentiment
    for row in rows[1:]:
        assert row.result is None
        assert row.errorMessage.startswith("[AI_FUNCTION_HTTP_PARSE_CAST_ERROR] endpoint 'chat'")
    assert "none of the expected fields" in rows[1].errorMessage and "this is not JSON" in rows[2].errorMessage
    message = failure(df.select(ai_query("chat", "p", responseFormat=DDL, returnType=DDL)))
    assert "AI_FUNCTION_HTTP_PARSE_CAST_ERROR" in message and "2 of 3 rows" in message


# ---------------------------------------------------------------- checked when the column is built

BAD_CALLS = [
    (dict(endpoint="chat", modelParameters={"messages": []}), "FOUND_RESERVED_PARAMETER_NAME"),
    (dict(endpoint="chat", modelParameters={"prompt": "x"}), "FOUND_RESERVED_PARAMETER_NAME"),
    (dict(endpoint="chat", modelParameters={"max_tokens": "ten"}), "INVALID_PARAMETER_DATA_TYPE"),
    (dict(endpoint="chat", modelParameters={"temperature": True}), "INVALID_PARAMETER_DATA_TYPE"),
    (dict(endpoint="chat", modelParameters={"temperature": 2.5}), "INVALID_NUMERIC_PARAMETER"),
    (dict(endpoint="dbx-chat", modelParameters={"top_p": 0}), "INVALID_NUMERIC_PARAMETER"),
    (dict(endpoint="chat", modelParameters={"max_tokens": 0}), "INVALID_NUMERIC_PARAMETER"),
    (dict(endpoint="dbx-custom", modelParameters={"max_tokens": 5}), "UNSUPPORTED_ENDPOINT_TYPE"),
    (dict(endpoint="embed", modelParameters={"temperature": 0.1}), "UNSUPPORTED_MODEL_PARAMETER"),
    (dict(endpoint="chat", modelParameters="max_tokens=5"), "AI_FUNCTION_INVALID_MODEL_PARAMETERS"),
    (dict(endpoint="chat", responseFormat="xml"), "AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT"),
    (dict(endpoint="chat", responseFormat={"type": "yaml"}), "AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT"),
    (dict(endpoint="chat", responseFormat='{"type": "json_schema"'), "AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT"),
    (dict(endpoint="chat", responseFormat="ARRAY<INT>"), "must be a STRUCT"),
    (dict(endpoint="embed", responseFormat="json_object"), "needs a chat endpoint"),
    (dict(endpoint="chat", returnType="STRUCT<a INT"), "cannot parse type"),
    (dict(endpoint="chat", returnType="STRUCT<a: WIDGET>"), "unknown type 'widget'"),
    (dict(endpoint="embed", returnType="STRING"), "ARRAY<FLOAT>"),
    (dict(endpoint="no-such-endpoint"), "unknown endpoint 'no-such-endpoint'"),
    (dict(endpoint="chat", failOnError="false"), "failOnError must be a boolean"),
    (dict(endpoint="chat", failOnError=0), "failOnError must be a boolean"),
]


@pytest.mark.parametrize("call,needle", BAD_CALLS, ids=[n for _, n in BAD_CALLS])
def test_bad_arguments_fail_when_the_column_is_built(spark, srv, endpoints, call, needle):
    call = dict(call)
    with pytest.raises(batch.ConfigError) as caught:
        ai_query(call.pop("endpoint"), F.col("p"), **call)
    assert needle in str(caught.value)
    assert srv.stats()["requests"] == 0


def test_column_parameters_are_refused(spark, srv, endpoints):
    with pytest.raises(batch.InvalidModelParametersError, match="constants"):
        ai_query("chat", "p", modelParameters={"max_tokens": F.col("n")})
    assert srv.stats()["requests"] == 0


# ---------------------------------------------------------------- parameters and retries

@pytest.mark.parametrize("name", ["chat", "dbx-completions"])
def test_model_parameters_reach_the_body(spark, srv, endpoints, name):
    params = {"max_tokens": 3, "temperature": 0.0, "top_p": 0.9, "top_k": 5, "stop": ["END"], "seed": 7}
    prompts = ["one two three four five", "six"]
    rows = answers(texts(spark, prompts).select(ai_query(name, "p", modelParameters=params).alias("a")))
    assert rows == [answer(p, 3) for p in prompts] == ["[simulated] one two", "[simulated] six"]
    for body in srv.bodies():
        assert {k: body[k] for k in params} == params


def test_embedding_parameters(spark, srv, endpoints):
    rows = answers(texts(spark, ["short vector"]).select(
        ai_query("dbx-embed", "p", modelParameters={"dimensions": 8}).alias("a")))
    assert close(rows[0], "short vector", dim=8)
    assert srv.bodies()[0] == {"input": ["short vector"], "dimensions": 8}


def test_retries_do_not_fail_rows(spark, srv, endpoints):
    prompts = ["flaky [[flaky:2:503]]", "limited [[flaky:1:429]]", "cut [[flaky:1:truncated]]", "plain"]
    assert answers(texts(spark, prompts).select(ai_query("chat", "p").alias("a"))) == [answer(p) for p in prompts]
    stats = srv.stats()
    assert stats["by_status"]["503"] == 2 and stats["by_status"]["429"] == 1
    assert stats["requests"] == 4 + 2 + 1 + 1


def test_random_faults_lose_nothing(spark, srv, more_endpoints):
    srv.configure(fault_rate=0.2, seed=11)
    prompts = [f"question {i}" for i in range(250)]
    df = texts(spark, prompts, parts=2).select("p", ai_query("patient-chat", "p").alias("a"))
    rows = df.collect()
    assert len(rows) == 250 and all(row.a == answer(row.p) for row in rows)
    stats = srv.stats()
    assert sum(stats["faults"].values()) > 20 and stats["answered"] == 250


def test_random_faults_embeddings(spark, srv, more_endpoints):
    srv.configure(fault_rate=0.2, seed=5, faults="500,503,429,drop,truncated")
    words = [f"word {i}" for i in range(60)]
    rows = texts(spark, words).select("p", ai_query("dbx-embed", "p").alias("a")).collect()
    assert all(close(row.a, row.p) for row in rows)


def test_the_workers_of_a_host_learn_one_pace(spark, srv, endpoints):
    """Two tasks at once against a capped endpoint: the pace both workers book from is the whole cap,
    where a pace each worker learned alone would settle near half of it (and leave no shared record)."""
    srv.configure(rate_limit=200)
    config = registry.add("capped-chat", api="openai", base_url=srv.url + "/v1", task="chat", max_retries=30,
                          initial_backoff=0.01, max_backoff=0.05)
    prompts = [f"capped {i}" for i in range(1000)]
    rows = texts(spark, prompts, parts=2).select("p", ai_query("capped-chat", "p").alias("a")).collect()
    assert sorted(r.a for r in rows) == sorted(answer(p) for p in prompts)
    pace = LearnedRate(share=pace_key(config))
    assert srv.stats()["rate_limited"] > 0 and pace.rate is not None and pace.rate > 0.7 * 200, pace
    pace.close()


# ---------------------------------------------------------------- the same answers three ways

@pytest.mark.parametrize("name", ["chat", "dbx-completions"])
def test_dataframe_sql_and_raw_sql_agree(spark, srv, endpoints, name):
    prompts = ["alpha beta gamma delta", None, "[[fail:400]] no", "epsilon"]
    df = texts(spark, prompts)
    df.createOrReplaceTempView("prompts")
    batch.register(spark)
    query = (f"SELECT ai_query('{name}', p, modelParameters => named_struct('max_tokens', 3)) AS a "
             "FROM prompts WHERE p IS NULL OR p NOT LIKE '%fail%'")
    expected = [answer(p, 3) for p in prompts if p is None or "fail" not in p]
    kept = df.where(~F.col("p").contains("fail") | F.col("p").isNull())
    assert answers(kept.select(ai_query(name, "p", modelParameters={"max_tokens": 3}).alias("a"))) == expected
    assert answers(batch.sql(spark, query)) == expected
    assert answers(spark.sql(query)) == expected
    lenient = (f"SELECT ai_query(endpoint => '{name}', request => p, failOnError => false) AS a FROM prompts")
    rows = answers(batch.sql(spark, lenient))
    assert [r.result for r in rows] == [answer(prompts[0]), None, None, answer(prompts[3])]
    assert "HTTP 400" in rows[2].errorMessage
    api_rows = answers(df.select(ai_query(name, "p", failOnError=False).alias("a")))
    assert api_rows == rows


def test_raw_sql_positional_arguments(spark, srv, endpoints):
    texts(spark, ["one two three", "four"]).createOrReplaceTempView("prompts")
    batch.register(spark)
    rows = answers(spark.sql("SELECT ai_query('dbx-chat', p, 'STRING', true, named_struct('max_tokens', 2, "
                             "'temperature', 0.5)) AS a FROM prompts"))
    assert rows == [answer("one two three", 2), answer("four", 2)]
    assert srv.bodies()[0]["temperature"] == 0.5 and srv.bodies()[0]["max_tokens"] == 2


@pytest.mark.parametrize("call", ["ai_query('chat', p, failOnError => false)", "ai_query('embed', p)"])
def test_raw_sql_points_to_batch_sql(spark, srv, endpoints, call):
    texts(spark, ["x"]).createOrReplaceTempView("prompts")
    batch.register(spark)
    message = failure(spark.sql(f"SELECT {call} FROM prompts"))
    assert "batch.sql(spark, query)" in message


def test_batch_sql_types_every_call(spark, srv, endpoints):
    texts(spark, ["some text", None]).createOrReplaceTempView("prompts")
    out = batch.sql(spark, """
        SELECT ai_query('embed', p) AS v,                       -- ai_query('ignored', in a comment)
               ai_query('chat', p, responseFormat => 'STRUCT<sentiment: STRING>',
                        returnType => 'STRUCT<sentiment: STRING>') AS s,
               from_json(ai_query('chat', p, responseFormat => 'STRUCT<sentiment: STRING>'),
                         'sentiment STRING') AS j,
               'ai_query(not a call)' AS literal
        FROM prompts""")
    assert out.schema["v"].dataType == FLOATS
    assert out.schema["s"].dataType == parse_ddl("STRUCT<sentiment: STRING>")
    rows = out.collect()
    assert close(rows[0].v, "some text") and rows[1].v is None and rows[1].s is None
    assert rows[0].s == rows[0].j and rows[0].s.sentiment.startswith("sentiment: ")
    assert rows[0].literal == "ai_query(not a call)"


@pytest.mark.parametrize("query,needle", [
    ("SELECT ai_query('nope', p) FROM prompts", "unknown endpoint 'nope'"),
    ("SELECT ai_query('chat', p, modelParameters => named_struct('temperature', 9)) FROM prompts",
     "INVALID_NUMERIC_PARAMETER"),
    ("SELECT ai_query('chat', p, failOnError => 'no') FROM prompts", "failOnError must be a boolean"),
    ("SELECT ai_query('chat', p, modelParameters => named_struct('t', p)) FROM prompts", "must be a constant"),
    ("SELECT ai_query('chat', p, colour => 'red') FROM prompts", "unknown argument 'colour'"),
    ("SELECT ai_query('chat') FROM prompts", "missing argument 'request'"),
])
def test_batch_sql_checks_before_running(spark, srv, endpoints, query, needle):
    with pytest.raises(batch.ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        batch.sql(spark, query)
    assert srv.stats()["requests"] == 0


# ---------------------------------------------------------------- the token stays secret

def test_token_never_shown(spark, srv, more_endpoints, token, capsys):
    srv.configure(token=token)
    prompts = ["secret question", "bad [[fail:400]]"]
    df = texts(spark, prompts).select(ai_query("secure-chat", "p", failOnError=False).alias("a"))
    df.explain(True)
    batch.sql(spark, "SELECT ai_query('secure-chat', 'x') AS a").explain("extended")
    spec = build_spec("secure-chat")
    shown = [capsys.readouterr().out, repr(make_udf(spec)), repr(spec), repr(df), str(df.schema)]
    rows = answers(df)
    assert rows[0].result == answer("secret question")
    shown += [str(row) for row in rows]
    shown.append(failure(texts(spark, prompts).select(ai_query("secure-chat", "p"))))
    refused = answers(texts(spark, ["no token"]).select(ai_query("chat", "p", failOnError=False).alias("a")))
    assert "HTTP 401" in refused[0].errorMessage
    shown.append(refused[0].errorMessage)
    assert all(token not in text for text in shown)
    assert "AIQ_TEST_TOKEN" in repr(spec)  # the variable's name is fine to show
