"""ai_query through Spark Connect: a server from PySpark's own ``sbin/start-connect-server.sh`` on loopback.

The client is a separate Python process (this file run as a script, see the bottom): one interpreter
cannot hold this suite's local session and a Connect session side by side. The UDFs the client builds
are pickled, sent over gRPC and unpickled by the server's Python workers, which import ``batch`` from
the server's Python (here the same virtualenv, given as PYSPARK_PYTHON to the server).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from spark_cluster import (ConnectServer, client_main, java_available, rate_figures, run_client, spark_env,
                           FAST, RATED_ROWS, RATED_RPM)
from support import restore

pytestmark = pytest.mark.cluster

PROMPTS = [f"connect question {i}" for i in range(12)] + [None]
TICKETS = [f"connect ticket {i}" for i in range(30)]


def _endpoints(url: str) -> dict:
    return {
        "cn-chat": dict(api="openai", base_url=url + "/v1", task="chat", **FAST),
        "cn-embed": dict(api="openai", base_url=url + "/v1", task="embeddings", batch_size=8, **FAST),
        "cn-rated": dict(api="openai", base_url=url + "/v1", task="chat", requests_per_minute=RATED_RPM, **FAST),
    }


@pytest.fixture(scope="module")
def connect_server(tmp_path_factory):
    if not java_available():
        pytest.skip("java is not installed: a Spark Connect server needs a JDK (17 or 21)")
    with ConnectServer(tmp_path_factory.mktemp("connect"), master="local[2]") as running:
        yield running


@pytest.fixture(scope="module")
def run(connect_server, server, tmp_path_factory):
    work = tmp_path_factory.mktemp("connect-client")
    restore(server)
    source = work / "tickets.json"
    source.write_text("".join(json.dumps({"id": i, "body": b}) + "\n" for i, b in enumerate(TICKETS)))
    endpoints = work / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump({"endpoints": _endpoints(server.url)}))
    spec = work / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "job": "connect-job",
        "input": {"path": str(source), "format": "json", "key": "id"},
        "outputs": {"answer": {"endpoint": "cn-chat", "prompt": "Reply to: {body}"}},
        "results": {"table": "connect_job.answers"},
        "usage": {"table": "connect_job.usage"},
        "commit_every": 100,
    }))
    report = run_client(Path(__file__), "connect", {
        "url": connect_server.url, "spec": str(spec), "endpoints": str(endpoints), "server": server.url,
    }, spark_env(work), timeout=240)
    return report


def test_dataframe_api_through_connect(run):
    from batch.serve import simulated_answer, simulated_embedding

    assert run["remote"] is True, "the client did not get a Connect session"
    assert run["dataframe"] == [None if p is None else simulated_answer(p)[0] for p in PROMPTS]
    for prompt, vec in zip(PROMPTS, run["embeddings"]):
        assert vec is None if prompt is None else vec == pytest.approx(simulated_embedding(prompt, 16), abs=1e-6)
    for prompt, row in zip(PROMPTS, run["structured"]):
        if prompt is not None:
            assert row == {"result": simulated_answer(prompt, 4)[0], "errorMessage": None}


def test_sql_registration_through_connect(run):
    from batch.serve import simulated_answer

    expected = [None if p is None else simulated_answer(p)[0] for p in PROMPTS]
    assert run["raw_sql"] == expected
    assert [r["answer"] for r in run["typed_sql"]] == expected
    assert [r["n"] for r in run["typed_sql"]] == [None if p is None else 16 for p in PROMPTS]


def test_job_runner_through_connect(run):
    from batch.serve import simulated_answer

    assert run["job_exit"] == 0, (run["job_summary"], run["seconds"])
    assert run["job_rows"] == [[i, simulated_answer(f"Reply to: {b}")[0]] for i, b in enumerate(TICKETS)]


def test_a_failed_query_is_told_apart_by_class_through_connect(run):
    """A 400 fails the query (failOnError => true): Connect's exception carries the worker's class name."""
    assert run["failure"]["class"] == "HTTPRequestError", run["failure"]
    assert run["failure"]["raised"] != "HTTPRequestError"  # what crossed the wire is Spark Connect's own


def test_rate_budget_through_connect(run):
    """No SparkContext here: the slot count comes from the server's configuration (local[2])."""
    assert run["task_slots"] == 2 and run["pinned_slots"] == "2"
    budget = RATED_RPM / 60.0
    for path in ("rated_dataframe", "rated_raw_sql"):
        figures = rate_figures(run[path]["per_second"])
        assert figures["requests"] == RATED_ROWS, (path, figures)
        assert figures["mean"] <= budget * 1.15, (path, figures)  # a few seconds: see the cluster test
        assert figures["peak"] <= budget * 1.2 + 2, (path, figures)


class _RemoteSession:
    """What task_slots can see of a Connect session: settings, and a range's plan; no SparkContext."""

    def __init__(self, conf: dict, splits: int | None = None) -> None:
        self.conf = type("Conf", (), {"get": lambda _, key, default=None: conf.get(key, default)})()
        self.splits = splits

    @property
    def sparkContext(self):
        raise RuntimeError("[NOT_IMPLEMENTED] sparkContext() is not implemented.")

    def range(self, n):
        plan = f"*(1) Range (0, {n}, step=1, splits={self.splits})" if self.splits else "Range (0, 1)"
        return type("Frame", (), {"_explain_string": lambda _, **kw: plan})()


@pytest.mark.parametrize("conf,splits,slots", [
    ({"spark.master": "local[2]"}, None, 2),
    ({"spark.master": "local"}, None, 1),
    ({"spark.master": "local[*]"}, 6, 6),                              # the server's cores, from its plan
    ({"spark.master": "local[8]", "spark.task.cpus": "2"}, None, 4),
    ({"spark.master": "local-cluster[2, 3, 1024]"}, None, 6),
    ({"spark.master": "spark://h:7077", "spark.cores.max": "12"}, 2, 12),  # promised beats registered so far
    ({"spark.master": "spark://h:7077"}, 3, 3),
    ({"spark.master": "yarn", "spark.executor.instances": "3", "spark.executor.cores": "4"}, None, 12),
    ({"spark.master": "k8s://x", "spark.dynamicAllocation.enabled": "true",
      "spark.dynamicAllocation.maxExecutors": "5", "spark.executor.cores": "2", "spark.executor.instances": "1"},
     None, 10),
    ({"spark.master": "yarn", "spark.default.parallelism": "40"}, 40, 40),  # no figure for cores: the safe side
    ({"spark.master": "local[2]", "spark.default.parallelism": "40"}, 40, 2),
    ({"spark.master": "local[2]", "spark.aiquery.taskSlots": "7"}, None, 7),
    ({}, None, 1),
])
def test_task_slots_without_a_spark_context(conf, splits, slots):
    from batch._cluster import rate_share, task_slots
    from batch.config import EndpointConfig

    session = _RemoteSession(conf, splits)
    assert task_slots(session) == slots
    rated = EndpointConfig("x", base_url="http://h/v1", requests_per_minute=600)
    assert rate_share(rated, session) == pytest.approx(1 / slots)
    assert rate_share(EndpointConfig("y", base_url="http://h/v1"), session) == 1.0


def test_local_session_in_a_connect_client_says_what_to_use(monkeypatch):
    from batch.errors import ConfigError
    from batch._session import local_session

    monkeypatch.setenv("SPARK_REMOTE", "sc://127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"Spark Connect client: use SparkSession\.builder\.remote"):
        local_session()


# ---------------------------------------------------------------- the client application

def connect_client(url: str, spec: str, endpoints: str, server: str) -> dict:
    import httpx
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    import batch
    from batch._cluster import SLOTS_CONF, task_slots
    from jobs.cli import main

    started = time.monotonic()
    report: dict = {"seconds": {}}
    mark = lambda what: report["seconds"].__setitem__(what, round(time.monotonic() - started, 1))  # noqa: E731
    os.environ[batch.config.REGISTRY_ENV] = endpoints
    spark = SparkSession.builder.remote(url).getOrCreate()
    report["remote"] = type(spark).__module__.startswith("pyspark.sql.connect")

    prompts = spark.createDataFrame(list(enumerate(PROMPTS)), "id int, prompt string").repartition(2)
    out = (prompts.withColumn("answer", batch.ai_query("cn-chat", "prompt"))
           .withColumn("vec", batch.ai_query("cn-embed", F.col("prompt")))
           .withColumn("structured", batch.ai_query("cn-chat", "prompt", failOnError=False,
                                                    modelParameters={"max_tokens": 4}))
           .orderBy("id").collect())
    report["dataframe"] = [r["answer"] for r in out]
    report["embeddings"] = [r["vec"] for r in out]
    report["structured"] = [r["structured"].asDict() if r["structured"] is not None else None for r in out]
    try:
        prompts.limit(1).select(batch.ai_query("cn-chat", F.lit("[[fault:400]] refused"))).collect()
        report["failure"] = {"class": None, "raised": None}
    except Exception as exc:  # noqa: BLE001 - what Spark Connect raises is what is under test
        found = batch.failure_class(exc)
        report["failure"] = {"class": found and found.__name__, "raised": type(exc).__name__}
    mark("dataframe")

    batch.register(spark)
    report["pinned_slots"] = spark.conf.get(SLOTS_CONF, None)
    prompts.createOrReplaceTempView("prompts")
    report["raw_sql"] = [r[0] for r in spark.sql("SELECT ai_query('cn-chat', prompt) FROM prompts ORDER BY id")
                         .collect()]
    typed = batch.sql(spark, "SELECT id, ai_query('cn-chat', prompt) AS answer, "
                             "size(ai_query('cn-embed', prompt)) AS n FROM prompts ORDER BY id")
    report["typed_sql"] = [{"answer": r["answer"], "n": None if r["n"] is None or r["n"] < 0 else r["n"]}
                           for r in typed.collect()]
    mark("sql")

    report["task_slots"] = task_slots(spark)
    rated = spark.range(RATED_ROWS).repartition(6).select(
        F.concat(F.lit("rated question "), F.col("id").cast("string")).alias("p"))
    rated.createOrReplaceTempView("rated")
    for name, query in (("rated_dataframe", rated.select(batch.ai_query("cn-rated", "p").alias("a"))),
                        ("rated_raw_sql", spark.sql("SELECT ai_query('cn-rated', p) AS a FROM rated"))):
        httpx.post(server + "/_admin/reset").raise_for_status()
        assert query.where(F.col("a").isNotNull()).count() == RATED_ROWS
        report[name] = httpx.get(server + "/_admin/stats").json()
        mark(name)

    with contextlib.redirect_stdout(io.StringIO()) as summary:
        report["job_exit"] = main(["run", spec, "--master", url, "--quiet"])
    report["job_summary"] = summary.getvalue()
    report["job_rows"] = [[r["id"], r["answer"]] for r in
                          spark.table("connect_job.answers").orderBy("id").select("id", "answer").collect()]
    mark("job")
    spark.stop()
    return report


CLIENTS = {"connect": connect_client}

if __name__ == "__main__":
    client_main(CLIENTS)
