"""The toolkit against a server we did not write: llama.cpp's ``llama-server`` with SmolLM2-135M-Instruct.

Every other test talks to ``batch.serve``; these keep it honest. They run through Spark and
real HTTP: the DataFrame API, SQL, the task functions, structured output through the server's
grammar, embeddings and a whole job, and compare what we report with what the server itself
counted (its ``/metrics``). ``make test`` builds the server first (once per machine, see
``jobs/llama.py``); they are skipped only where it cannot be built.
"""

from __future__ import annotations

import json
import re

import httpx
import numpy as np
import pytest
from pyspark.sql import functions as F

import batch
from batch import ai_classify, ai_extract, ai_query, ai_similarity, ai_summarize
from batch.config import registry
from jobs import llama
from jobs.runner import run_job
from jobs.spec import parse_spec

pytestmark = [pytest.mark.spark, pytest.mark.llama]

PROMPTS = ["What is the capital of France?", "Name a colour of the sky.", "Say hello in one word.", None]
TICKETS = ["My invoice was charged twice this month, please refund me.",
           "The app crashes every time I open the settings page.",
           "My parcel has not arrived after three weeks."]
TRIAGE = {"type": "json_schema", "json_schema": {"name": "triage", "strict": True, "schema": {
    "type": "object", "additionalProperties": False, "required": ["category", "urgency"],
    "properties": {"category": {"type": "string", "enum": ["billing", "technical", "shipping"]},
                   "urgency": {"type": "string", "enum": ["low", "medium", "high"]}}}}}
GREEDY = {"max_tokens": 16, "temperature": 0.0}
PATIENT = dict(timeout=600.0, max_retries=2)


def _unavailable_reason() -> str | None:
    if llama.installed():
        return None
    try:
        llama.build()
    except llama.BuildUnavailable as exc:
        return f"{exc}; the real-server tests need it"
    return None


@pytest.fixture(scope="module")
def real(spark):
    """A chat server and an embeddings server, with endpoints on them.

    Two processes, as llama.cpp's own examples run them: one server can do both, but its prompt cache
    is shared by both kinds of task, and an embedding of a prompt partly in that cache is pooled over
    the new tokens only, so the same text would get another vector after some chat traffic.
    """
    reason = _unavailable_reason()
    if reason:
        pytest.skip(reason)
    with llama.LlamaServer(metrics=True, max_tokens=64) as chat, \
            llama.LlamaServer(embeddings=True, parallel=2) as embed:
        # no more in flight per worker than the server decodes at once: a request's timeout runs in its queue too
        base = dict(api="openai", model=llama.MODEL_NAME, **PATIENT)
        for name, task, server in (("real-chat", "chat", chat), ("real-completions", "completions", chat),
                                   ("real-embed", "embeddings", embed)):
            registry.add(name, task=task, base_url=server.url + "/v1", max_concurrency=server.parallel,
                         batch_size=4, **base)
        yield {"chat": chat, "embed": embed}


def metrics(server: llama.LlamaServer) -> dict[str, float]:
    """llama-server's own Prometheus counters (``--metrics``), by name without the ``llamacpp:`` prefix."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^llamacpp:(\w+) ([0-9.e+-]+)$", text, re.M)}


def direct_chat(server: llama.LlamaServer, prompt: str, **params) -> dict:
    body = {"model": llama.MODEL_NAME, "messages": [{"role": "user", "content": prompt}], **params}
    return httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120).json()


def test_dataframe_chat_answers_are_the_servers_own(spark, real):
    df = spark.createDataFrame([(p,) for p in PROMPTS], "prompt string").coalesce(1)
    rows = df.withColumn("answer", ai_query("real-chat", "prompt", modelParameters=GREEDY)).collect()
    for row in rows:
        if row["prompt"] is None:
            assert row["answer"] is None
            continue
        expected = direct_chat(real["chat"], row["prompt"], **GREEDY)["choices"][0]["message"]["content"]
        assert row["answer"] == expected and row["answer"].strip()


def test_completions_and_failures_per_row(spark, real):
    df = spark.createDataFrame([("The sky is",), ("",)], "prompt string").coalesce(1)
    out = df.select(ai_query("real-completions", "prompt", failOnError=False,
                             modelParameters={"max_tokens": 8, "temperature": 0.0}).alias("out")).collect()
    good, blank = out[0]["out"], out[1]["out"]
    assert good["errorMessage"] is None and good["result"].strip()
    assert blank["result"] is None and "empty" in blank["errorMessage"]


def test_sql_raw_and_typed(spark, real):
    spark.createDataFrame([(p,) for p in PROMPTS], "prompt string").createOrReplaceTempView("real_prompts")
    batch.register(spark)
    raw = spark.sql("SELECT prompt, ai_query('real-chat', prompt, "
                    "modelParameters => named_struct('max_tokens', 8, 'temperature', 0.0)) AS a "
                    "FROM real_prompts").collect()
    typed = batch.sql(spark, "SELECT prompt, ai_query('real-chat', prompt, failOnError => false, "
                             "modelParameters => named_struct('max_tokens', 8, 'temperature', 0.0)) AS a "
                             "FROM real_prompts").collect()
    by_prompt = {r["prompt"]: r["a"] for r in raw}
    for row in typed:
        if row["prompt"] is None:
            assert by_prompt[None] is None
            continue
        assert row["a"]["errorMessage"] is None and row["a"]["result"].strip()
        assert by_prompt[row["prompt"]] == row["a"]["result"]  # greedy decoding: one answer per prompt


def test_structured_output_through_the_grammar(spark, real):
    df = spark.createDataFrame([(t,) for t in TICKETS], "ticket string").coalesce(1)
    out = df.select(ai_query("real-chat", "ticket", failOnError=False, responseFormat=TRIAGE,
                             returnType="STRUCT<category: STRING, urgency: STRING>",
                             modelParameters={"max_tokens": 64, "temperature": 0.0}).alias("t")).collect()
    for row in out:
        assert row["t"]["errorMessage"] is None, row["t"]["errorMessage"]
        assert row["t"]["result"]["category"] in {"billing", "technical", "shipping"}
        assert row["t"]["result"]["urgency"] in {"low", "medium", "high"}
    text = df.select(ai_query("real-chat", "ticket", responseFormat=TRIAGE,
                              modelParameters={"max_tokens": 64, "temperature": 0.0}).alias("t")).collect()
    assert [json.loads(r["t"]) for r in text] == [r["t"]["result"].asDict() for r in out]


def test_structured_output_cut_at_the_token_limit_says_so(spark, real):
    """SmolLM2 stops mid-JSON at a small max_tokens (finish_reason "length"): the row says so, with the limit."""
    df = spark.createDataFrame([(t,) for t in TICKETS], "ticket string").coalesce(1)
    for return_type in ("STRUCT<category: STRING, urgency: STRING>", None):
        out = df.select(ai_query("real-chat", "ticket", failOnError=False, responseFormat=TRIAGE,
                                 returnType=return_type,
                                 modelParameters={"max_tokens": 4, "temperature": 0.0}).alias("t")).collect()
        for row in out:
            assert row["t"]["result"] is None
            assert "cut at the output-token limit (max_tokens=4 from modelParameters)" in row["t"]["errorMessage"]
            assert "Partial answer: '" in row["t"]["errorMessage"]


def test_task_functions(spark, real, monkeypatch):
    registry.names()
    monkeypatch.setitem(registry.defaults, "chat", "real-chat")
    monkeypatch.setitem(registry.defaults, "embeddings", "real-embed")
    df = spark.createDataFrame([(t,) for t in TICKETS], "content string").coalesce(1)
    rows = df.select(
        "content",
        ai_classify("content", ["billing", "technical", "shipping"]).alias("label"),
        ai_extract("content", ["product", "problem"]).alias("fields"),
        ai_summarize("content", 10).alias("summary"),
        ai_similarity("content", "content").alias("same"),
        ai_similarity("content", F.lit("The weather is sunny today.")).alias("other"),
    ).collect()
    for row in rows:
        assert row["label"] in {"billing", "technical", "shipping"}
        assert set(row["fields"].asDict()) == {"product", "problem"}
        assert row["summary"].strip()
        assert row["same"] == pytest.approx(1.0, abs=1e-4)
        assert -1.0 <= row["other"] < row["same"]


def test_embeddings_are_the_servers_vectors_in_row_order(spark, real):
    texts = [f"ticket number {i}: {TICKETS[i % 3]}" for i in range(10)] + [None]
    df = spark.createDataFrame([(t,) for t in texts], "text string").coalesce(1)
    rows = df.withColumn("vec", ai_query("real-embed", "text")).collect()
    direct = httpx.post(real["embed"].url + "/v1/embeddings", timeout=120,
                        json={"model": llama.MODEL_NAME, "input": texts[:-1]}).json()["data"]
    expected = {texts[item["index"]]: item["embedding"] for item in direct}
    for row in rows:
        if row["text"] is None:
            assert row["vec"] is None
            continue
        assert len(row["vec"]) == llama.EMBEDDING_DIM
        np.testing.assert_allclose(row["vec"], expected[row["text"]], atol=1e-4)


def test_a_job_through_the_real_server_counts_what_the_server_counted(spark, real):
    spark.sql("DROP DATABASE IF EXISTS real_job CASCADE")
    spark.sql("CREATE DATABASE real_job")
    spark.createDataFrame(list(enumerate(TICKETS)), "id int, body string") \
        .write.format("parquet").saveAsTable("real_job.tickets")
    before = metrics(real["chat"])
    spec = parse_spec({
        "job": "real-job",
        "input": {"table": "real_job.tickets", "key": "id"},
        "outputs": {
            "summary": {"endpoint": "real-chat", "prompt": "Summarize in one sentence: {body}",
                        "modelParameters": {"max_tokens": 24, "temperature": 0.0}},
            "triage": {"endpoint": "real-chat", "prompt": "Classify this support ticket: {body}",
                       "responseFormat": TRIAGE, "returnType": "STRUCT<category: STRING, urgency: STRING>",
                       "modelParameters": {"max_tokens": 64, "temperature": 0.0}},
            "vec": {"endpoint": "real-embed", "request": "body"},
        },
        "results": {"table": "real_job.answers"},
        "usage": {"table": "real_job.usage"},
    })
    result = run_job(spark, spec, prices={})
    assert result.ok and result.rows_failed == 0
    answers = spark.table("real_job.answers").orderBy("id").collect()
    assert [r["id"] for r in answers] == [0, 1, 2]
    for row in answers:
        assert row["summary"].strip() and len(row["vec"]) == llama.EMBEDDING_DIM
        assert row["triage"]["category"] in {"billing", "technical", "shipping"}
    after = metrics(real["chat"])
    counted = {name: after[name] - before[name]
               for name in ("prompt_tokens_total", "prompt_tokens_cached_total", "tokens_predicted_total")}
    usage = {r["endpoint"]: r for r in spark.table("real_job.usage").collect()}
    chat = usage["real-chat"]
    assert chat["rows_answered"] == 6 and chat["requests"] == 6 and usage["real-embed"]["rows_answered"] == 3
    # the server counts prompt tokens it evaluated and those it reused from its cache apart; usage reports both
    assert chat["prompt_tokens"] == counted["prompt_tokens_total"] + counted["prompt_tokens_cached_total"]
    assert chat["completion_tokens"] == counted["tokens_predicted_total"]
