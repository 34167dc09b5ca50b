"""``make demo``: a local endpoint, a sample table, the demo job end to end, then everything stopped.

The endpoint is the project's simulator (``batch.serve``) with realistic latency and a
few injected faults, so the summary shows retries doing their work. ``make demo-real``
(``--real``) runs the same job against a real model on this machine instead: llama.cpp's
``llama-server`` with SmolLM2-135M-Instruct (see ``jobs/llama.py``), into tables of its own
so that the simulated answers are not resumed as if they were real.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from collections.abc import Callable, Iterator

from batch.config import Registry
from batch.serve import ServerProcess

from .progress import Progress
from .session import session_for
from .spec import load_spec
from .summary import summary

SAMPLE = Path("conf") / "samples" / "support_tickets.csv"
SPEC = Path("conf") / "jobs" / "demo.yaml"
REAL_ROWS = 24  # SmolLM2 on two cores answers a few requests a second: enough rows to see, few enough to wait for


DEMO_ENDPOINTS = ("demo-chat", "demo-embed")
Served = tuple[Callable[[], str], Registry]  # what the endpoint saw, and the registry aimed at it


@contextlib.contextmanager
def _simulator() -> Iterator[Served]:
    with ServerProcess(latency_ms=40, latency_jitter_ms=60, fault_rate=0.03, faults="429,503,drop") as server:
        print(f"endpoint simulator: {server.url} (40-100 ms latency, 3% injected faults)")
        endpoints = Registry()  # conf/endpoints.yaml, with the demo entries aimed at this server
        for name in DEMO_ENDPOINTS:
            config = endpoints.get(name)
            endpoints.add(name, config.with_overrides(base_url=server.url + "/v1") if config.api == "openai"
                          else config.with_overrides(host=server.url))
        yield (lambda: f"server saw {server.stats()['requests']} requests"), endpoints


@contextlib.contextmanager
def _real_model() -> Iterator[Served]:
    from . import llama

    llama.build()
    # one server per kind of task: see tests/test_llama_server.py for why embeddings get their own
    with llama.LlamaServer() as chat, llama.LlamaServer(embeddings=True, parallel=2) as embed:
        print(f"real model: llama-server with SmolLM2-135M-Instruct at {chat.url}/v1 (chat) and {embed.url}/v1 "
              "(embeddings)")
        endpoints = Registry()
        for name, server in zip(DEMO_ENDPOINTS, (chat, embed)):
            # llama-server decodes `parallel` requests at once and queues the rest, and a request's timeout
            # runs while it waits there: each worker sends no more than the server decodes at once
            endpoints.add(name, endpoints.get(name).with_overrides(
                api="openai", base_url=server.url + "/v1", model=llama.MODEL_NAME, max_concurrency=server.parallel,
                timeout=600.0))
        yield (lambda: "answered by llama-server"), endpoints


def _real_tables(spec):
    """The real answers go to tables of their own: resuming the simulated ones would ask nothing."""
    return dataclasses.replace(spec, name=spec.name + "-real", results_table=spec.results_table + "_real",
                               usage_table=spec.usage_table + "_real")


def run_demo(rows: int | None = None, real: bool = False) -> bool:
    from .runner import run_job

    rows = rows or (REAL_ROWS if real else None)
    with (_real_model() if real else _simulator()) as (served, endpoints):
        spec = load_spec(SPEC, endpoints)
        if real:
            spec = _real_tables(spec)
        spark = session_for(spec)
        spark.sql("CREATE DATABASE IF NOT EXISTS demo")
        tickets = spark.read.option("header", True).csv(str(SAMPLE.resolve()))
        if rows:
            tickets = tickets.limit(rows)
        tickets.write.mode("overwrite").format("parquet").saveAsTable("demo.support_tickets")
        print(f"sample table demo.support_tickets: {spark.table('demo.support_tickets').count()} tickets")
        started = time.monotonic()
        result = run_job(spark, spec, progress=Progress(spec.name))
        print(summary(spec, result, time.monotonic() - started))
        print("\nA few answers:")
        answers = spark.table(spec.results_table).orderBy("ticket_id").limit(3).collect()
        for row in answers:
            triage = row["triage"]
            print(f"  {row['ticket_id']}: {row['summary']!r}")
            print(f"    triage={triage.asDict() if triage else None} "
                  f"embedding[:3]={[round(x, 3) for x in (row['embedding'] or [])[:3]]}")
        from pyspark.sql import functions as F

        usage = spark.table(spec.usage_table)
        if result.rows_pending:
            usage = usage.where(F.col("run_id") == result.run_id)
            print(f"\nUsage of this run ({spec.usage_table}):")
        else:
            print(f"\nEvery row was answered by an earlier run, so nothing was asked again. "
                  f"Usage of all runs ({spec.usage_table}):")
        usage.orderBy("started_at", "endpoint").select(
            "run_id", "endpoint", "rows_answered", "requests", "retries", "total_tokens",
            F.round("latency_p95_ms").alias("latency_p95_ms"),
            F.format_number("estimated_cost", 6).alias("estimated_cost"),
        ).show(truncate=False)
        again = "make demo-real" if real else "make demo"
        print(f"{served()}; run `{again}` again to see resume (nothing is asked twice)" if result.rows_pending
              else f"{served()}: the answers were resumed from {spec.results_table}")
        spark.stop()
    return result.ok
