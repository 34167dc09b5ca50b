"""The task functions through real Spark and real HTTP: DataFrame API, ``batch.sql`` and raw ``spark.sql``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pyspark.sql import functions as F
from pyspark.sql import types as T

import batch
from batch import (ai_analyze_sentiment, ai_classify, ai_extract, ai_fix_grammar, ai_gen, ai_mask, ai_similarity,
                   ai_summarize, ai_translate)
from batch import _tasks as tasks
from batch.serve.simulate import simulated_answer, simulated_embedding, simulated_json

pytestmark = pytest.mark.spark

CONTENT = ["The cat sat on the mat in Paris.", None, "Bob emailed alice@example.com on Monday."]
LABELS = ["person", "place", "email"]


@pytest.fixture
def reviews(spark):
    return spark.createDataFrame([(c, "fr") for c in CONTENT], "content string, lang string").coalesce(1)


def said(task, **values):
    """What the simulated model answers for one row of a text task."""
    if any(v is None for v in values.values()):
        return None
    return simulated_answer(task.render(**values))[0]


def label_of(task, content):
    if content is None:
        return None
    return json.loads(simulated_json(task.render(content=content), task.spec.response_format))["label"]


def extracted(task, content):
    if content is None:
        return None
    return json.loads(simulated_json(task.render(content=content), task.spec.response_format))


def cosine(a, b):
    x, y = np.asarray(simulated_embedding(a, 16)), np.asarray(simulated_embedding(b, 16))
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def text_expectations():
    return {
        "gen": (tasks.gen_task("chat"), "prompt"),
        "grammar": (tasks.fix_grammar_task("chat"), "content"),
        "summary": (tasks.summarize_task(12, "chat"), "content"),
        "summary0": (tasks.summarize_task(0, "chat"), "content"),
        "french": (tasks.translate_task("fr", "chat"), "content"),
        "masked": (tasks.mask_task(LABELS, "chat"), "content"),
    }


# ---------------------------------------------------------------- DataFrame API

def check_text(rows, names):
    expectations = text_expectations()
    for name in names:
        task, argument = expectations[name]
        assert [row[name] for row in rows] == [said(task, **{argument: c}) for c in CONTENT], name


def test_text_tasks_exact(reviews, srv, task_defaults):
    out = reviews.select(ai_fix_grammar(F.col("content")).alias("grammar"),
                         ai_summarize("content", 12).alias("summary"),
                         ai_translate("content", "fr").alias("french"), ai_mask("content", LABELS).alias("masked"),
                         ai_translate("content", F.col("lang")).alias("by_column"))
    assert all(field.dataType == T.StringType() for field in out.schema.fields)
    rows = out.collect()
    check_text(rows, ["grammar", "summary", "french", "masked"])
    assert [row.by_column for row in rows] == [row.french for row in rows]
    prompts = srv.prompts()["calls"]
    assert all(count == 1 for text, count in prompts.items() if "language fr" not in text)
    assert any("at most 12 words" in p for p in prompts) and any("[MASKED]: person, place, email" in p
                                                                 for p in prompts)


def test_classify_and_sentiment(reviews, srv, task_defaults):
    out = reviews.select(ai_classify("content", ["urgent", "not urgent", "spam"]).alias("kind"),
                         ai_analyze_sentiment("content").alias("mood"))
    rows = out.collect()
    classify, sentiment = tasks.classify_task(["urgent", "not urgent", "spam"], "chat"), tasks.sentiment_task("chat")
    assert [r.kind for r in rows] == [label_of(classify, c) for c in CONTENT]
    assert [r.mood for r in rows] == [label_of(sentiment, c) for c in CONTENT]
    assert rows[1].kind is None and rows[0].kind in ("urgent", "not urgent", "spam")
    assert rows[0].mood in tasks.SENTIMENTS
    enums = [b["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] for b in srv.bodies()]
    assert sorted(map(tuple, enums)) == sorted([("urgent", "not urgent", "spam")] * 2 + [tasks.SENTIMENTS] * 2)


def test_extract_gives_a_struct(reviews, srv, task_defaults):
    labels = ["person", "city", "e-mail address"]
    out = reviews.select(ai_extract("content", labels).alias("found"))
    assert out.schema["found"].dataType == T.StructType([T.StructField(n, T.StringType(), True) for n in labels])
    task = tasks.extract_task(labels, "chat")
    assert [None if r.found is None else r.found.asDict() for r in out.collect()] == [
        extracted(task, c) for c in CONTENT]
    assert srv.bodies()[0]["response_format"]["json_schema"]["schema"]["required"] == labels


def test_similarity(spark, srv, task_defaults):
    pairs = [("a red apple", "a green apple"), ("same text", "same text"), (None, "x"), ("y", None),
             ("a red apple", "same text")]
    df = spark.createDataFrame(pairs, "a string, b string").coalesce(1)
    out = df.select(ai_similarity("a", "b").alias("s"), ai_similarity(F.col("a"), F.col("b"), endpoint="dbx-embed")
                    .alias("t"))
    assert out.schema["s"].dataType == T.FloatType()
    rows = out.collect()
    expected = [None if a is None or b is None else cosine(a, b) for a, b in pairs]
    for row, want in zip(rows, expected):
        assert (row.s is None and want is None) or row.s == pytest.approx(want, abs=1e-5)
        assert row.t == row.s
    assert rows[1].s == pytest.approx(1.0, abs=1e-6)
    assert set(srv.prompts()["calls"].values()) == {2}  # each text once per endpoint
    assert srv.stats()["requests"] == 2


# ---------------------------------------------------------------- SQL

def test_batch_sql_text_tasks(spark, srv, task_defaults, reviews):
    reviews.createOrReplaceTempView("reviews")
    rows = batch.sql(spark, """
        SELECT ai_gen(content) AS gen, ai_fix_grammar(content) AS grammar,
               ai_summarize(content, max_words => 12) AS summary, ai_summarize(content, 0) AS summary0,
               ai_translate(content, 'fr') AS french, ai_translate(content, lang) AS by_column
        FROM reviews""").collect()
    check_text(rows, ["gen", "grammar", "summary", "summary0", "french"])
    assert [r.by_column for r in rows] == [r.french for r in rows]


def test_batch_sql_typed_tasks(spark, srv, task_defaults, reviews):
    reviews.createOrReplaceTempView("reviews")
    out = batch.sql(spark, """
        SELECT ai_mask(content, array('person', 'place', 'email')) AS masked,
               ai_classify(content, array('urgent', 'not urgent', 'spam')) AS kind,
               ai_analyze_sentiment(content) AS mood,
               ai_extract(content, array('person', 'city')) AS found,
               ai_similarity(content, 'The cat sat on the mat.') AS near
        FROM reviews""")
    rows = out.collect()
    check_text(rows, ["masked"])
    classify = tasks.classify_task(["urgent", "not urgent", "spam"], "chat")
    assert [r.kind for r in rows] == [label_of(classify, c) for c in CONTENT]
    assert [r.mood for r in rows] == [label_of(tasks.sentiment_task("chat"), c) for c in CONTENT]
    extract = tasks.extract_task(["person", "city"], "chat")
    assert [None if r.found is None else r.found.asDict() for r in rows] == [extracted(extract, c) for c in CONTENT]
    assert rows[0].near == pytest.approx(cosine(CONTENT[0], "The cat sat on the mat."), abs=1e-5)
    assert rows[1].near is None and out.schema["near"].dataType == T.FloatType()


def test_raw_spark_sql(spark, srv, task_defaults, reviews):
    reviews.createOrReplaceTempView("reviews")
    batch.register(spark)
    rows = spark.sql("""
        SELECT ai_gen(content) AS gen, ai_summarize(content, 12) AS summary, ai_summarize(content) AS short,
               ai_translate(content => content, to_lang => lang) AS french,
               ai_mask(content, array('person', 'place', 'email')) AS masked,
               ai_classify(content, array('urgent', 'not urgent', 'spam')) AS kind,
               ai_analyze_sentiment(content) AS mood, ai_fix_grammar(content) AS grammar,
               ai_similarity(content, 'The cat sat on the mat.') AS near
        FROM reviews""").collect()
    check_text(rows, ["gen", "summary", "french", "masked", "grammar"])
    assert [r.short for r in rows] == [said(tasks.summarize_task(50, "chat"), content=c) for c in CONTENT]
    classify = tasks.classify_task(["urgent", "not urgent", "spam"], "chat")
    assert [r.kind for r in rows] == [label_of(classify, c) for c in CONTENT]
    assert [r.mood for r in rows] == [label_of(tasks.sentiment_task("chat"), c) for c in CONTENT]
    assert rows[0].near == pytest.approx(cosine(CONTENT[0], "The cat sat on the mat."), abs=1e-5)


# ---------------------------------------------------------------- endpoints and mistakes

def test_endpoint_from_configuration_or_keyword(spark, srv, endpoints, monkeypatch):
    monkeypatch.delitem(batch.registry.defaults, "chat", raising=False)
    with pytest.raises(batch.UnknownEndpointError, match="no default chat endpoint"):
        ai_gen("content")
    monkeypatch.setitem(batch.registry.defaults, "chat", "dbx-chat")
    df = spark.createDataFrame([("hi there",)], "content string")
    rows = df.select(ai_gen("content").alias("a"), ai_gen("content", endpoint="completions").alias("b")).collect()
    assert rows[0].a == rows[0].b == simulated_answer("hi there")[0]
    assert sorted("model" in body for body in srv.bodies()) == [False, True]  # databricks bodies carry no model


@pytest.mark.parametrize("build,needle", [
    (lambda spark: ai_classify("c", "urgent, spam"), "labels must be an array"),
    (lambda spark: ai_classify("c", ["only one"]), "needs 2 to 500 labels"),
    (lambda spark: ai_classify("c", ["a", "a"]), "labels must be distinct"),
    (lambda spark: ai_extract("c", ["name", ""]), "non-empty string"),
    (lambda spark: ai_mask("c", []), "needs 1 to 500 labels"),
    (lambda spark: ai_summarize("c", -1), "max_words must be a non-negative integer"),
    (lambda spark: ai_summarize("c", True), "max_words must be a non-negative integer"),
    (lambda spark: ai_translate("c", " "), "to_lang must be a language code"),
    (lambda spark: ai_gen("c", endpoint="embed"), "needs a chat or completions endpoint"),
    (lambda spark: ai_classify("c", ["a", "b"], endpoint="completions"), "needs a chat endpoint"),
    (lambda spark: ai_similarity("a", "b", endpoint="chat"), "needs a embeddings endpoint"),
    (lambda spark: ai_gen("c", endpoint="nope"), "unknown endpoint 'nope'"),
    (lambda spark: batch.sql(spark, "SELECT ai_classify(c, array('x')) FROM t"), "needs 2 to 500 labels"),
    (lambda spark: batch.sql(spark, "SELECT ai_summarize(c, max_words => n) FROM t"), "must be a constant"),
    (lambda spark: batch.sql(spark, "SELECT ai_extract(c) FROM t"), "missing argument 'labels'"),
    (lambda spark: batch.sql(spark, "SELECT ai_gen(c, colour => 'red') FROM t"), "unknown argument 'colour'"),
])
def test_mistakes_fail_before_any_call(spark, srv, task_defaults, build, needle):
    with pytest.raises(batch.ConfigError, match=needle):
        build(spark)
    assert srv.stats()["requests"] == 0


def test_a_failing_row_fails_the_task_query(reviews, srv, task_defaults, spark):
    bad = spark.createDataFrame([("fine",), ("broken [[fail:400]]",)], "content string").coalesce(1)
    with pytest.raises(Exception) as caught:
        bad.select(ai_summarize("content")).collect()
    message = str(caught.value)
    assert "endpoint 'chat'" in message and "HTTP 400" in message and "1 of 2 rows" in message


def test_sql_string_literals_round_trip(spark):
    text = "it's a \\ back\nslash 'quoted'"
    assert spark.sql(f"SELECT {tasks.sql_string(text)} AS t").first().t == text
