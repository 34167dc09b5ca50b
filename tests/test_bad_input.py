"""Bad input through real Spark and real HTTP: each gets a clear error, and the rest of the batch is answered.

What each kind of bad input gets:

* NULL request: NULL answer, no call. Empty or whitespace-only: a row error (EMPTY_REQUEST), no call.
* A 1 MB prompt is sent: the endpoint decides (answered here, or refused as too long).
* Unusual text (emoji, NUL, right-to-left, combining marks) is answered exactly; lone surrogates, which only
  Python code can make, are sent as U+FFFD instead of breaking the request's JSON.
* Bytes that are not UTF-8 can only come from BINARY: a BINARY column is refused naming its type, and a
  BINARY cast to STRING is refused saying how to clean it (make_valid_utf8).
* A request column of the wrong type names the type it has and the type it needs; a job finds it before
  any call is made.
* A prompt the endpoint refuses as too long is a row error; the others in its batch, or in its packed
  embeddings request, are answered.
* A 200 answer of an unexpected shape is a row error (AI_FUNCTION_INVALID_HTTP_RESPONSE), not retried.
* A structured answer that does not fit its schema is a row error (AI_FUNCTION_HTTP_PARSE_CAST_ERROR).
* Unknown endpoints and bad modelParameters fail every way in before a call (see also test_ai_query.py);
  a malformed job file names its line (see test_config.py for the registry).
"""

from __future__ import annotations

import asyncio

import pytest
import yaml
from pyspark.sql import functions as F

import batch
from batch import ai_query
from batch._client import EndpointClient
from batch.config import registry
from batch._engine import answer_rows
from batch.errors import ConfigError
from batch.serve import simulated_embedding
from jobs.runner import run_job
from jobs.spec import load_spec, parse_spec
from support import JOB_YAML, answer, failure, table, texts, tickets


MEGABYTE = "m" * 1_000_000
ODD = "emoji 😀, NUL \x00, שלום, e\u0301, zero\u200bwidth, \ufeffbom"


# ---------------------------------------------------------------- prompts at the edges

@pytest.mark.spark
def test_null_empty_whitespace_huge_and_odd_prompts(spark, srv, endpoints):
    prompts = [None, "", "  \t\n ", MEGABYTE, ODD, "plain"]
    rows = [r.a for r in texts(spark, prompts).select(ai_query("chat", "p", failOnError=False).alias("a")).collect()]
    assert rows[0].result is None and rows[0].errorMessage is None
    for row, what in ((rows[1], "empty"), (rows[2], "only whitespace")):
        assert row.result is None
        assert row.errorMessage.startswith("[EMPTY_REQUEST] endpoint 'chat'") and what in row.errorMessage
    assert [r.result for r in rows[3:]] == [answer(p) for p in prompts[3:]]
    assert all(r.errorMessage is None for r in rows[3:])
    assert srv.stats()["requests"] == 3  # NULL and blank rows cost nothing
    message = failure(texts(spark, ["fine", " "]).select(ai_query("chat", "p")))
    assert "EMPTY_REQUEST" in message and "only whitespace" in message and "1 of 2 rows" in message


def test_lone_surrogates_do_not_break_the_request(srv, endpoints):
    client = EndpointClient(registry.get("chat"))
    prompts = ["lone \ud800 high", "split pair \ud83d\ude00", "fine"]

    async def go():
        try:
            return await answer_rows(client, prompts)
        finally:
            await client.aclose()
    outcomes = asyncio.run(go())
    assert [o.value for o in outcomes] == [answer("lone \ufffd high"), answer("split pair 😀"), answer("fine")]
    assert all(o.error is None for o in outcomes)


# ---------------------------------------------------------------- request columns of the wrong type

@pytest.mark.spark
@pytest.mark.parametrize("ddl,value,needle", [
    ("binary", bytearray(b"\xff\xfe not utf-8"), "request column is BINARY"),
    ("int", 7, "request column is INT"),
    ("array<string>", ["a", "b"], "an ARRAY"),
])
def test_wrong_request_type_names_the_column_type(spark, srv, endpoints, ddl, value, needle):
    df = spark.createDataFrame([(value,)], f"p {ddl}")
    message = failure(df.select(ai_query("chat", "p", failOnError=False)))
    assert "endpoint 'chat' (chat) takes a STRING request" in message and needle in message, message
    assert ("decode(col, 'UTF-8')" in message) == (ddl == "binary")
    assert srv.stats()["requests"] == 0


@pytest.mark.spark
def test_struct_and_string_requests_to_the_wrong_endpoint(spark, srv, endpoints):
    df = spark.createDataFrame([(1.0, "x")], "a double, b string")
    message = failure(df.select(ai_query("dbx-custom", "b")))
    assert "takes a STRUCT request" in message and "request column is STRING" in message
    message = failure(df.select(ai_query("chat", F.struct("a", "b"))))
    assert "takes a STRING request" in message and "request column is a STRUCT" in message
    assert srv.stats()["requests"] == 0


@pytest.mark.spark
def test_bytes_that_are_not_utf8(spark, srv, endpoints):
    df = spark.sql("SELECT CAST(X'41FF42' AS STRING) AS p")
    message = failure(df.select(ai_query("chat", "p", failOnError=False)))
    assert "not valid UTF-8" in message and "make_valid_utf8" in message, message[-2000:]
    assert srv.stats()["requests"] == 0
    rows = df.select(ai_query("chat", F.make_valid_utf8("p")).alias("a")).collect()
    assert rows[0].a == answer("A\ufffdB")


# ---------------------------------------------------------------- the endpoint says no

@pytest.mark.spark
def test_over_long_prompts_fail_alone(spark, srv, endpoints):
    srv.configure(max_prompt_chars=40)
    prompts = ["short one", "l" * 100, "short two", None, "short three"]
    df = texts(spark, prompts)
    chat = [r.a for r in df.select(ai_query("dbx-chat", "p", failOnError=False).alias("a")).collect()]
    assert [r.result for r in chat] == [answer("short one"), None, answer("short two"), None, answer("short three")]
    assert "HTTP 400" in chat[1].errorMessage and "exceeds the maximum context length" in chat[1].errorMessage
    srv.reset()
    vectors = [r.a for r in df.select(ai_query("dbx-embed", "p", failOnError=False).alias("a")).collect()]
    for prompt, row in zip(prompts, vectors):
        if prompt is None or len(prompt) > 40:
            assert row.result is None
        else:
            assert row.result == pytest.approx(simulated_embedding(prompt, 16), abs=1e-6) and row.errorMessage is None
    assert "HTTP 400" in vectors[1].errorMessage and "BAD_REQUEST" in vectors[1].errorMessage
    assert srv.stats()["requests"] == 1 + 4  # the packed request refused, then each row alone


@pytest.mark.spark
def test_unexpected_answer_shape_is_a_row_error_not_retried(spark, srv, endpoints):
    srv.configure(fault_rate=1.0, faults="unexpected")
    prompts = ["one", "two", "three"]
    rows = [r.a for r in texts(spark, prompts).select(ai_query("chat", "p", failOnError=False).alias("a")).collect()]
    for row in rows:
        assert row.result is None
        assert row.errorMessage.startswith("[AI_FUNCTION_INVALID_HTTP_RESPONSE] endpoint 'chat' HTTP 200")
        assert "no 'choices'" in row.errorMessage and "surprise" in row.errorMessage
    assert srv.stats()["requests"] == 3
    message = failure(texts(spark, ["vector"]).select(ai_query("dbx-embed", "p")))
    assert "AI_FUNCTION_INVALID_HTTP_RESPONSE" in message and "expected 1 embeddings" in message


# ---------------------------------------------------------------- a job with every kind of bad row

TRIAGE = "STRUCT<topic: STRING, urgent: BOOLEAN>"


def _spec(db: str, outputs: dict, **changes) -> dict:
    return {"job": "bad-input", "input": {"table": f"{db}.rows", "key": "id"}, "outputs": outputs,
            "results": {"table": f"{db}.answers"}, "usage": {"table": f"{db}.usage"},
            "limits": {"max_error_fraction": 1.0}, **changes}


@pytest.mark.spark
def test_a_job_keeps_every_row_and_says_what_was_wrong(spark, srv, endpoints):
    srv.configure(max_prompt_chars=2000)
    bodies = ["a good ticket", None, "", "   ", MEGABYTE, "odd [[nonconforming]]", ODD, "bad [[badjson]]"]
    tickets(spark, "bad_job", bodies, "rows")
    spec = parse_spec(_spec("bad_job", {
        "answer": {"endpoint": "chat", "request": "body"},
        "triage": {"endpoint": "dbx-chat", "request": "body", "responseFormat": TRIAGE, "returnType": TRIAGE},
        "vec": {"endpoint": "dbx-embed", "request": "body"},
    }))
    result = run_job(spark, spec, prices={})
    assert result.ok and result.rows_in == len(bodies)
    rows = {r["id"]: r for r in spark.table("bad_job.answers").collect()}
    assert sorted(rows) == list(range(len(bodies)))  # nothing lost, nothing twice

    def kinds(i):
        return tuple(rows[i][f"{o}__status"]["error_kind"] for o in ("answer", "triage", "vec"))
    assert kinds(0) == kinds(1) == kinds(6) == (None, None, None)
    assert rows[0]["answer"] == answer(bodies[0]) and rows[6]["answer"] == answer(ODD)
    assert rows[1]["answer"] is None and rows[1]["vec"] is None and rows[1]["ok"]
    assert kinds(2) == kinds(3) == ("EmptyRequestError",) * 3
    assert kinds(4) == ("HTTPRequestError",) * 3  # the endpoint refused the 1 MB prompt
    assert "exceeds the maximum context length" in rows[4]["vec__status"]["error"]
    assert kinds(5) == kinds(7) == (None, "ParseCastError", None)
    assert "AI_FUNCTION_HTTP_PARSE_CAST_ERROR" in rows[5]["triage__status"]["error"]
    assert [rows[i]["ok"] for i in range(len(bodies))] == [True, True, False, False, False, False, True, False]
    usage = {u["endpoint"]: u for u in spark.table("bad_job.usage").collect()}
    assert usage["chat"]["failed_by_kind"] == {"EmptyRequestError": 2, "HTTPRequestError": 1}
    assert usage["dbx-chat"]["failed_by_kind"] == {"EmptyRequestError": 2, "HTTPRequestError": 1,
                                                   "ParseCastError": 2}


@pytest.mark.spark
@pytest.mark.parametrize("output,needle", [
    ({"endpoint": "chat", "request": "n"}, "endpoint 'chat' takes STRING, but the request is INT"),
    ({"endpoint": "chat", "request": "raw"}, "the request is BINARY (decode it"),
    ({"endpoint": "dbx-custom", "request": "body"}, "takes a STRUCT of the model's inputs, but the request is STRING"),
])
def test_a_job_checks_request_types_before_any_call(spark, srv, endpoints, tmp_path, output, needle):
    if not spark.catalog.tableExists("bad_types.rows"):
        table(spark, "bad_types.rows", [(1, 5, bytearray(b"\xff"), "text")], "id int, n int, raw binary, body string")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(_spec("bad_types", {"out": output}), sort_keys=False))
    spec = load_spec(path)
    with pytest.raises(ConfigError) as caught:
        run_job(spark, spec, prices={})
    assert needle in str(caught.value) and f"{path}:" in str(caught.value)
    assert srv.stats()["requests"] == 0


# ---------------------------------------------------------------- mistakes in what the user wrote

def test_malformed_job_file_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(JOB_YAML.replace('prompt: "Hi {body}"', 'prompt: "Hi {body}'))  # the quote never ends
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith("malformed YAML") and f"{path}:" in message and "outputs.answer.prompt" in message
    assert "started at line 8" in message


@pytest.mark.spark
def test_unknown_endpoint_and_bad_parameters_in_raw_sql(spark, srv, endpoints):
    texts(spark, ["x"]).createOrReplaceTempView("bad_sql")
    batch.register(spark)
    message = failure(spark.sql("SELECT ai_query('no-such-endpoint', p) FROM bad_sql"))
    assert "unknown endpoint 'no-such-endpoint'" in message
    message = failure(spark.sql("SELECT ai_query('chat', p, modelParameters => named_struct('temperature', 9)) "
                                "FROM bad_sql"))
    assert "INVALID_NUMERIC_PARAMETER" in message
    message = failure(spark.sql("SELECT ai_query('chat', p, responseFormat => 'xml') FROM bad_sql"))
    assert "AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT" in message
    assert srv.stats()["requests"] == 0
