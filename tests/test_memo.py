"""The host memo: nothing paid for twice when Spark evaluates a plan again (sorts, retries, a second action).

Through real Spark and real HTTP against ``batch.serve``: the server's per-prompt call counts (``record``) must
equal one call per distinct prompt. The memo's own bounds and its failing open are checked on the class, with an
injected clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pyspark.sql import functions as F

import batch
from batch._arguments import build_spec
from batch._client import CallResult, EndpointClient
from batch.config import EndpointConfig, registry
from batch._functions import query_column
from batch._memo import (FILE_NAME, SLICE, HostMemo, MemoSettings, RememberingClient, answer_remembered, fingerprint,
                        settings_from_env, value_digest)
from batch._wire import Usage
from batch.serve import simulated_answer
import support
from support import Clock

ROOT = Path(__file__).resolve().parents[1]
FAST = {**support.FAST, "max_retries": 2}


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "memo"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def memo_chat(srv):
    registry.add("memo-chat", api="openai", base_url=srv.url + "/v1", task="chat", **FAST)
    registry.add("memo-embed", api="openai", base_url=srv.url + "/v1", task="embeddings", batch_size=4, **FAST)
    return srv


def calls(srv) -> dict[str, int]:
    return srv.prompts()["calls"]


# ---------------------------------------------------------------- the store itself

def test_answers_round_trip_and_keys_are_hashes(folder):
    memo = HostMemo(MemoSettings(folder=str(folder)))
    text, vector, record = "an answer with é and 😀", [0.25, -1.5, 3.0], {"label": "x", "score": 1}
    memo.store([(b"k1" * 16, text), (b"k2" * 16, vector), (b"k3" * 16, record)])
    assert memo.lookup([b"k1" * 16, b"k2" * 16, b"k3" * 16, b"none" * 8]) == {
        b"k1" * 16: text, b"k2" * 16: vector, b"k3" * 16: record}
    assert (folder.stat().st_mode & 0o777) == 0o700 and ((folder / FILE_NAME).stat().st_mode & 0o777) == 0o600


def test_fingerprint_is_what_is_sent(memo_chat):
    config = registry.get("memo-chat")
    base = fingerprint("s", config, "hello", {"max_tokens": 5}, None)
    assert len(base) == 32 and base == fingerprint("s", config, "hello", {"max_tokens": 5}, None)
    others = [fingerprint("s", config, "hello!", {"max_tokens": 5}, None),
              fingerprint("s", config, "hello", {"max_tokens": 6}, None),
              fingerprint("s", config, "hello", {"max_tokens": 5}, {"type": "json_object"}),
              fingerprint("t", config, "hello", {"max_tokens": 5}, None),
              fingerprint("s", registry.get("memo-embed"), "hello", {"max_tokens": 5}, None)]
    assert len({base, *others}) == 6


@pytest.mark.parametrize("entry", [
    dict(api="openai", task="chat"), dict(api="openai", task="completions"), dict(api="openai", task="embeddings"),
    dict(api="responses", task="chat"), dict(api="databricks", task="chat", host="http://127.0.0.1:9"),
    dict(api="databricks", task="custom", host="http://127.0.0.1:9")])
@pytest.mark.parametrize("params, response_format", [
    (None, None), ({"max_tokens": 5, "temperature": 0.0}, None),
    ({"stop": ['"', "\\"]}, {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}})])
def test_a_batchs_digest_of_a_value_is_its_fingerprint(entry, params, response_format):
    """The digest made once for a batch puts a text where its body has it; any other value takes the whole way."""
    config = EndpointConfig(name="digest", model="m", **{"base_url": "http://127.0.0.1:9/v1", **entry})
    digest = value_digest(config, params, response_format, "s", config.name, config.url())
    values = ["", "hello", " padded\n", 'quote " and \\ backslash', "é 😀 \u2028 \x00 \ud800",
              "\x00\ufdd0value\ufdd0\x00", "x" * 5000, {"role": "user"}, ["a", "b"], 3, 2.5]
    for value in values:
        assert digest(value) == fingerprint("s", config, value, params, response_format), value
    assert len({digest(v) for v in values}) == len(values)


def test_age_bound_with_an_injected_clock(folder):
    clock = Clock(1000.0)
    memo = HostMemo(MemoSettings(folder=str(folder), max_age_s=60), clock=clock)
    memo.store([(b"a" * 32, "old")])
    clock.now += 59
    assert memo.lookup([b"a" * 32]) == {b"a" * 32: "old"}
    clock.now += 2
    assert memo.lookup([b"a" * 32]) == {}
    memo.prune()
    assert _rows(folder) == 0


def test_entry_and_byte_bounds_forget_the_oldest(folder):
    clock = Clock(1000.0)
    memo = HostMemo(MemoSettings(folder=str(folder), max_entries=10, max_bytes=10_000), clock=clock)
    for i in range(25):
        clock.now += 1
        memo.store([(bytes([i]) * 32, f"answer {i}")])
    memo.prune()
    kept = memo.lookup([bytes([i]) * 32 for i in range(25)])
    assert len(kept) == 9 and set(kept) == {bytes([i]) * 32 for i in range(16, 25)}  # the newest nine tenths
    big = HostMemo(MemoSettings(folder=str(folder), max_entries=1000, max_bytes=6400), clock=clock)
    big.store([(b"x" * 32, "y" * 200)])  # over max_bytes / 64: never kept
    assert big.lookup([b"x" * 32]) == {}
    for i in range(60):
        clock.now += 1
        big.store([(b"b" + bytes([i]) * 31, "z" * 90)])
    big.prune()
    assert _bytes(folder) <= 6400 * 0.9


def _rows(folder: Path) -> int:
    import sqlite3
    with sqlite3.connect(folder / FILE_NAME) as connection:
        return connection.execute("SELECT COUNT(*) FROM memo").fetchone()[0]


def _bytes(folder: Path) -> int:
    import sqlite3
    with sqlite3.connect(folder / FILE_NAME) as connection:
        return connection.execute("SELECT TOTAL(size) FROM memo").fetchone()[0]


def test_answers_arriving_while_another_worker_holds_the_memo_are_kept(folder):
    """Another worker's prune holds SQLite's write lock: the event loop goes on, and the answers that arrived
    meanwhile are kept once the lock is let go, not dropped after a wait on the loop."""
    import sqlite3
    memo = HostMemo(MemoSettings(folder=str(folder)))
    memo.kept().result()  # opened (its own first prune done) before the other worker's prune begins
    other = sqlite3.connect(folder / FILE_NAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def answers_arrive() -> None:
        memo.store_soon([(b"k" * 32, "kept")])
        for _ in range(3):  # turns of the loop, while the answers wait for the lock
            await asyncio.sleep(0)
        other.execute("COMMIT")

    asyncio.run(answers_arrive())
    assert memo.lookup([b"k" * 32]) == {b"k" * 32: "kept"}
    other.close()
    memo.close()


def test_a_folder_others_can_read_turns_the_memo_off(tmp_path):
    open_folder = tmp_path / "shared"
    open_folder.mkdir()
    open_folder.chmod(0o755)
    memo = HostMemo(MemoSettings(folder=str(open_folder)))
    assert not memo.usable and memo.lookup([b"k" * 32]) == {}
    memo.store([(b"k" * 32, "v")])  # does nothing, raises nothing
    assert not (open_folder / FILE_NAME).exists()


def test_a_broken_database_fails_open(folder, memo_chat):
    (folder / FILE_NAME).write_bytes(b"this is not a database" * 100)
    settings = MemoSettings(folder=str(folder))
    client = EndpointClient(registry.get("memo-chat"))
    outcomes = asyncio.run(_answer(settings, client, ["memo broken a", "memo broken b"]))
    assert [o.value for o in outcomes] == [simulated_answer(p)[0] for p in ("memo broken a", "memo broken b")]
    assert calls(memo_chat) == {"memo broken a": 1, "memo broken b": 1}


async def _answer(settings, client, values, **kwargs):
    try:
        return await answer_remembered(settings, client, values, **kwargs)
    finally:
        await client.aclose()


def test_settings_from_the_environment():
    assert not settings_from_env({"BATCH_MEMO": "off"}).enabled
    s = settings_from_env({"BATCH_MEMO_MAX_AGE_S": "30", "BATCH_MEMO_MAX_ENTRIES": "5", "BATCH_MEMO_MAX_MB": "2",
                           "BATCH_MEMO_SCOPE": "host", "BATCH_MEMO_DIR": "/x"})
    assert (s.enabled, s.max_age_s, s.max_entries, s.max_bytes, s.scope, s.folder) == (
        True, 30.0, 5, 2 * 1024 * 1024, "host", "/x")
    assert settings_from_env({}).scope != settings_from_env({}).scope  # a scope per built column
    assert settings_from_env({"BATCH_MEMO_MAX_AGE_S": "soon"}).max_age_s == MemoSettings().max_age_s


# ---------------------------------------------------------------- through real HTTP

def test_only_successes_are_kept_and_hits_cost_nothing(folder, memo_chat):
    settings = MemoSettings(folder=str(folder))
    prompts = ["memo ok one", "memo bad [[fail:400]]", "memo ok one", None, "memo ok two"]
    first = asyncio.run(_answer(settings, EndpointClient(registry.get("memo-chat")), prompts))
    assert [o.error is not None for o in first] == [False, True, False, False, False]
    again = asyncio.run(_answer(settings, EndpointClient(registry.get("memo-chat")), prompts))
    assert [o.value for o in again] == [o.value for o in first]
    assert calls(memo_chat) == {"memo ok one": 1, "memo ok two": 1, "memo bad [[fail:400]]": 2}  # failures re-asked
    hit = again[0]
    assert (hit.requests, hit.attempts, hit.total_tokens, hit.latency_ms, hit.answered) == (0, 0, 0, None, True)
    assert again[1].requests == 1 and "HTTP 400" in again[1].error.describe()


def test_packed_embeddings_keep_each_input(folder, memo_chat):
    settings = MemoSettings(folder=str(folder))
    spec = build_spec("memo-embed")
    texts = [f"memo vector {i}" for i in range(6)]
    first = asyncio.run(_answer(settings, EndpointClient(spec.endpoint), texts, convert=spec.converter()))
    more = texts[2:] + ["memo vector new"]
    second = asyncio.run(_answer(settings, EndpointClient(spec.endpoint), more, convert=spec.converter()))
    assert [o.value.tolist() for o in second[:4]] == [o.value.tolist() for o in first[2:]]
    assert memo_chat.stats()["inputs"] == 7 and memo_chat.stats()["answered"] == 3  # 4 + 2, then only the new one


def test_remembering_client_stores_as_answers_arrive(folder, memo_chat):
    """Per call, not per batch: what a worker killed mid-batch was paid for is already kept."""
    host = HostMemo(MemoSettings(folder=str(folder)))
    config = registry.get("memo-chat")

    async def one() -> None:
        client = EndpointClient(config)
        try:
            await RememberingClient(client, host, "scope").call(["memo arrives"], {"max_tokens": 4})
        finally:
            await client.aclose()
    asyncio.run(one())
    key = fingerprint("scope", config, "memo arrives", {"max_tokens": 4}, None)
    assert host.lookup([key]) == {key: simulated_answer("memo arrives", 4)[0]}


@pytest.mark.parametrize("remembered", [True, False], ids=["memo", "no-memo"])
def test_a_large_batch_is_asked_in_slices_in_order_each_prompt_once(folder, memo_chat, remembered):
    settings = MemoSettings(folder=str(folder)) if remembered else None
    distinct = SLICE + 40  # so that every slice after the first repeats prompts of the one before
    prompts = [f"memo slice {i % distinct}" for i in range(3 * SLICE + 7)]
    prompts[5] = None
    outcomes = asyncio.run(_answer(settings, EndpointClient(registry.get("memo-chat")), prompts))
    assert [o.value for o in outcomes] == [p and simulated_answer(p)[0] for p in prompts]
    assert calls(memo_chat) == {f"memo slice {i}": 1 for i in range(distinct)}
    assert sum(o.requests for o in outcomes) == distinct  # a repeat rides on its first row's request


def test_packed_inputs_fill_their_requests_as_in_one_batch(folder, memo_chat):
    registry.add("memo-embed-100", api="openai", base_url=memo_chat.url + "/v1", task="embeddings", batch_size=100,
                 **FAST)
    spec = build_spec("memo-embed-100")
    texts = [f"memo packed {i}" for i in range(2600)]  # 26 requests of 100, sliced or not
    outcomes = asyncio.run(_answer(MemoSettings(folder=str(folder)), EndpointClient(spec.endpoint), texts,
                                   convert=spec.converter()))
    assert all(o.error is None for o in outcomes) and memo_chat.stats()["answered"] == 26


class _Counting:
    """A client that answers after one turn of the event loop, noting how many calls had begun by then."""

    def __init__(self, config) -> None:
        self.config, self.begun, self.begun_at_first_answer = config, 0, None
        self.finished = 0

    async def call(self, inputs, params=None, response_format=None):
        self.begun += 1
        await asyncio.sleep(0)
        if self.begun_at_first_answer is None:
            self.begun_at_first_answer = self.begun
        await asyncio.sleep(0)
        self.finished += 1
        return CallResult([f"answer {inputs[0]}"], None, 1, 0, 0.0, Usage(), None)


def test_a_batch_sends_its_first_slice_before_preparing_the_rest(folder, memo_chat):
    for settings in (MemoSettings(folder=str(folder)), None):
        client = _Counting(registry.get("memo-chat"))
        values = [f"memo first {i}" for i in range(20 * SLICE)]
        outcomes = asyncio.run(answer_remembered(settings, client, values))
        assert [o.value for o in outcomes] == [f"answer {v}" for v in values]
        assert client.begun_at_first_answer <= 2 * SLICE < client.begun == len(values)


def test_a_cancelled_batch_cancels_every_slice(memo_chat):
    client = _Counting(registry.get("memo-chat"))

    async def cancelled() -> None:
        task = asyncio.ensure_future(answer_remembered(None, client, [f"memo cut {i}" for i in range(10 * SLICE)]))
        while client.begun < 3 * SLICE:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        begun = client.begun
        for _ in range(20):
            await asyncio.sleep(0)
        assert client.begun == begun and client.finished < begun  # no slice went on asking
        assert asyncio.all_tasks() == {asyncio.current_task()}
    asyncio.run(cancelled())


# ---------------------------------------------------------------- through Spark

@pytest.mark.spark
def test_dataframe_order_by_asks_each_prompt_once(spark, memo_chat):
    prompts = [f"memo sort {i % 30}" for i in range(60)] + [None]
    # Repeats of a prompt sit in one partition: two tasks asking one new prompt at the same moment both pay
    # (see docs/memo.md); what this test is about is the sort evaluating every task twice.
    df = spark.createDataFrame([(i, p) for i, p in enumerate(prompts)], "id int, prompt string") \
        .repartition(3, "prompt")
    spec = build_spec("memo-chat", failOnError=False, modelParameters={"max_tokens": 20})
    meta = query_column(spec, "prompt", with_metadata=True)
    rows = df.select("id", "prompt", meta.alias("m")).orderBy(F.col("m.result").desc(), "id").collect()
    assert calls(memo_chat) == {f"memo sort {i}": 1 for i in range(30)}
    assert len(rows) == 61 and all(r.m.result == simulated_answer(r.prompt, 20)[0] for r in rows if r.prompt)
    # The sort's sampling job read every row and paid for every prompt; the rows it hands back are all memo
    # hits, which cost no request and no token (the job runner, which sums these, never sorts before answering).
    assert memo_chat.stats()["answered"] == 30
    assert sum(r.m.requests for r in rows) == 0 and sum(r.m.total_tokens for r in rows) == 0
    assert all(r.m.attempts == 0 for r in rows if r.prompt)


@pytest.mark.spark
def test_a_batch_of_many_slices_through_spark_keeps_row_order_and_asks_each_prompt_once(spark, memo_chat):
    distinct = SLICE + 40
    prompts = [f"memo spark slice {i % distinct}" for i in range(3 * SLICE + 5)]
    df = spark.createDataFrame([(i, p) for i, p in enumerate(prompts)], "id int, prompt string").coalesce(1)
    df.createOrReplaceTempView("memo_slices")
    batch.register(spark)
    rows = df.select("id", batch.ai_query("memo-chat", "prompt").alias("a")).collect()
    assert [r.a for r in rows] == [simulated_answer(prompts[r.id])[0] for r in rows]
    assert [r.id for r in rows] == list(range(len(prompts)))
    sql = spark.sql("SELECT id, ai_query('memo-chat', prompt) AS a FROM memo_slices").collect()  # a scalar UDF
    assert [r.a for r in sql] == [simulated_answer(prompts[r.id])[0] for r in sql]
    assert calls(memo_chat) == {f"memo spark slice {i}": 2 for i in range(distinct)}  # once per built column


@pytest.mark.spark
def test_a_second_action_on_one_dataframe_asks_nothing(spark, memo_chat):
    df = spark.createDataFrame([(f"memo twice {i}",) for i in range(12)], "prompt string")
    out = df.withColumn("answer", batch.ai_query("memo-chat", "prompt"))
    assert out.count() == 12 and len(out.collect()) == 12
    assert calls(memo_chat) == {f"memo twice {i}": 1 for i in range(12)}
    fresh = df.withColumn("answer", batch.ai_query("memo-chat", "prompt")).collect()  # a new query asks again
    assert len(fresh) == 12 and set(calls(memo_chat).values()) == {2}


@pytest.mark.spark
def test_sql_order_by_asks_each_prompt_once(spark, memo_chat):
    spark.createDataFrame([(i, f"memo sql {i % 20}") for i in range(40)], "id int, prompt string") \
        .repartition(2, "prompt").createOrReplaceTempView("memo_prompts")
    rows = batch.sql(spark, "SELECT id, ai_query('memo-chat', prompt, failOnError => false) AS out "
                            "FROM memo_prompts ORDER BY out.result, id").collect()
    assert len(rows) == 40 and all(r.out.errorMessage is None for r in rows)
    assert calls(memo_chat) == {f"memo sql {i}": 1 for i in range(20)}
    batch.register(spark)
    raw = spark.sql("SELECT id, ai_query('memo-chat', concat(prompt, ' raw')) AS a FROM memo_prompts "
                    "ORDER BY a, id").collect()
    assert len(raw) == 40 and calls(memo_chat) == {**{f"memo sql {i}": 1 for i in range(20)},
                                                   **{f"memo sql {i} raw": 1 for i in range(20)}}


@pytest.mark.spark
def test_memo_off_asks_again(spark, memo_chat, monkeypatch):
    monkeypatch.setenv("BATCH_MEMO", "off")
    df = spark.createDataFrame([(f"memo off {i}",) for i in range(5)], "prompt string")
    out = df.withColumn("answer", batch.ai_query("memo-chat", "prompt"))
    out.collect()
    out.collect()
    assert calls(memo_chat) == {f"memo off {i}": 2 for i in range(5)}


KILLED_TASK = textwrap.dedent("""
    import os, sys, json
    import pandas as pd
    from pyspark import TaskContext
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    import batch
    from batch._session import local_session

    url, warehouse, out = sys.argv[1], sys.argv[2], sys.argv[3]
    batch.add_endpoint("kill-chat", api="openai", base_url=url + "/v1", max_retries=2, initial_backoff=0.01)
    spark = local_session("local[2,4]", warehouse, hive=False)

    @pandas_udf("string")
    def die_once(answers: pd.Series) -> pd.Series:
        # The first attempt of each task has its answers (the memo has them too), then its worker dies.
        if TaskContext.get().attemptNumber() == 0:
            os._exit(1)
        return answers

    df = spark.createDataFrame([(i, f"memo killed {i}") for i in range(16)], "id int, prompt string").repartition(2)
    answered = df.select("id", batch.ai_query("kill-chat", "prompt").alias("a"))
    rows = answered.select("id", die_once("a").alias("a")).orderBy("id").collect()
    json.dump([[r.id, r.a] for r in rows], open(out, "w"))
    spark.stop()
""")


@pytest.mark.spark
def test_a_killed_and_retried_task_pays_nothing_twice(spark, memo_chat, tmp_path):
    script, out = tmp_path / "killed.py", tmp_path / "rows.json"
    script.write_text(KILLED_TASK)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(script), memo_chat.url, str(tmp_path / "wh"), str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert rows == [[i, simulated_answer(f"memo killed {i}")[0]] for i in range(16)]
    assert calls(memo_chat) == {f"memo killed {i}": 1 for i in range(16)}


@pytest.mark.spark
def test_task_functions_under_a_sort_ask_each_text_once(spark, memo_chat, monkeypatch):
    registry.names()
    monkeypatch.setitem(registry.defaults, "chat", "memo-chat")
    monkeypatch.setitem(registry.defaults, "embeddings", "memo-embed")
    texts = [f"memo task {i}" for i in range(8)]
    df = spark.createDataFrame([(t,) for t in texts], "content string").coalesce(1)
    rows = df.select("content", batch.ai_similarity("content", F.lit("memo anchor")).alias("sim"),
                     batch.ai_summarize("content", 5).alias("summary")).orderBy("sim", "content").collect()
    assert len(rows) == 8 and all(r.summary for r in rows)
    asked = calls(memo_chat)
    assert {t: asked[t] for t in texts} == {t: 1 for t in texts}  # embedded once each, despite the sort
    assert asked["memo anchor"] == 1
    summaries = {p: n for p, n in asked.items() if p.endswith(tuple(texts)) and p not in texts}
    assert sorted(summaries.values()) == [1] * 8
    batch.register(spark)
    df.createOrReplaceTempView("memo_tasks")
    raw = spark.sql("SELECT content, ai_similarity(content, 'memo raw anchor') AS s FROM memo_tasks "
                    "ORDER BY s, content").collect()
    assert len(raw) == 8 and calls(memo_chat)["memo raw anchor"] == 1
    assert {t: calls(memo_chat)[t] for t in texts} == {t: 2 for t in texts}  # a new query asks once more
