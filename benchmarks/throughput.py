"""Throughput of ``ai_query`` through Spark against a local endpoint, as ratios measured in one run.

Each scenario starts ``batch.serve`` with a latency model and (maybe) a rate cap, runs an
``ai_query`` job in ``local[2]``, and prints what it measured next to its target:

  saturation   20,000 chat rows, cap R=1,000 req/s, 100 ms latency: rows/s / R, share of 429s, failed rows
  latency      10,000 rows, no cap, 1 s latency: wall time and peak in-flight requests at the server
  cpu          client CPU per request in the Python workers (process CPU time over the run)
  scale        10k vs 100k rows: time ratio, peak worker memory
  overhead     the same requests through the UDF layer vs the toolkit's client alone, outside Spark
  baselines    row-at-a-time UDF and pandas UDF + thread pool (hand-rolled), same server: rows/s and our ratio
  embeddings   100,000 short texts packed per request: rows/s
  faults       5,000 rows with 20% of requests answered 429 at random, whatever the pace: rate vs a clean run

Usage: python benchmarks/throughput.py [scenario ...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

import batch  # noqa: E402
from batch.client import EndpointClient  # noqa: E402
from batch.config import EndpointConfig  # noqa: E402
from batch.engine import answer_rows  # noqa: E402
from batch.serve import ServerProcess  # noqa: E402
from batch.session import local_session  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def python_workers() -> list[int]:
    """Pids of PySpark's Python daemon and workers (children of this driver's JVM)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd:
            pids.append(int(entry))
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU of the processes and of their reaped children (forked workers that exited)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
        total += (utime + stime + cutime + cstime) / CLK
    return total


def peak_rss_mb(pids: list[int]) -> float:
    peak = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) / 1024)
        except OSError:
            continue
    return peak


class Bench:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.warehouse = tempfile.mkdtemp(prefix="bench-wh-")
        self.spark = local_session("local[2]", self.warehouse, app_name="bench", hive=False,
                                   extra={"spark.sql.execution.arrow.maxRecordsPerBatch": "5000"})
        self.figures: list[tuple[str, str, str]] = []

    def rows(self, n: int, prefix: str = "prompt"):
        return (self.spark.range(n, numPartitions=2)
                .select(F.concat(F.lit(f"{prefix} "), F.col("id").cast("string")).alias("prompt")))

    def run(self, df) -> tuple[float, int]:
        """Wall seconds of one Spark job over the column, and how many rows failed."""
        started = time.perf_counter()
        failed = df.agg(F.count("out.errorMessage").alias("failed")).first()["failed"]
        return time.perf_counter() - started, failed

    def query(self, endpoint: str, df, **kwargs):
        return df.select(batch.ai_query(endpoint, "prompt", failOnError=False, **kwargs).alias("out"))

    def report(self, name: str, measured: str, target: str) -> None:
        self.figures.append((name, measured, target))
        print(f"  {name:<44} {measured:<28} target: {target}", flush=True)

    def endpoint(self, name: str, server: ServerProcess, **keys) -> None:
        batch.add_endpoint(name, api="openai", base_url=server.url + "/v1", **keys)

    def warm_up(self, endpoint: str) -> None:
        self.run(self.query(endpoint, self.rows(200, "warm")))

    # ------------------------------------------------------------ scenarios

    def saturation(self) -> None:
        rate, rows = 1000, (6000 if self.quick else 20000)
        with ServerProcess(latency_ms=100, rate_limit=rate) as server:
            self.endpoint("sat", server, max_concurrency=512)
            self.warm_up("sat")
            server.reset()
            seconds, failed = self.run(self.query("sat", self.rows(rows)))
            stats = server.stats()
        share_429 = stats["rate_limited"] / max(1, stats["requests"])
        self.report("saturation: rows/s / R", f"{rows / seconds / rate:.3f} ({rows / seconds:,.0f} rows/s)",
                    ">= 0.95")
        self.report("saturation: share of requests answered 429", f"{share_429:.2%}", "< 2%")
        self.report("saturation: failed rows", str(failed), "0")

    def latency(self) -> None:
        rows = 4000 if self.quick else 10000
        with ServerProcess(latency_ms=1000) as server:
            self.endpoint("slow", server, max_concurrency=1024)
            self.warm_up("slow")
            server.reset()
            seconds, failed = self.run(self.query("slow", self.rows(rows)))
            stats = server.stats()
        self.report(f"latency-bound: {rows:,} rows at 1 s latency", f"{seconds:.1f} s, {failed} failed", "< 20 s")
        self.report("latency-bound: peak in-flight at the server", str(stats["max_in_flight"]), "about 500+")

    def cpu(self) -> None:
        rows = 8000 if self.quick else 20000
        with ServerProcess(latency_ms=20) as server:
            self.endpoint("cpu", server, max_concurrency=256)
            self.warm_up("cpu")
            pids = python_workers()
            before = cpu_seconds(pids)
            server.reset()
            self.run(self.query("cpu", self.rows(rows)))
            requests = server.stats()["requests"]
            used = cpu_seconds(python_workers()) - before
        self.report("client CPU per request (Python workers)", f"{used / requests * 1e6:,.0f} us", "<= 150 us")

    def scale(self) -> None:
        small, large = (5000, 50000) if self.quick else (10000, 100000)
        with ServerProcess(latency_ms=5) as server:
            self.endpoint("scale", server, max_concurrency=256)
            self.warm_up("scale")
            t_small, _ = self.run(self.query("scale", self.rows(small)))
            t_large, failed = self.run(self.query("scale", self.rows(large)))
            rss = peak_rss_mb(python_workers())
        self.report(f"scale: time({large:,}) / time({small:,})", f"{t_large / t_small:.2f}x", "<= 10.5x")
        self.report("scale: peak Python worker memory", f"{rss:.0f} MB", "flat in rows")

    def overhead(self) -> None:
        rows = 6000 if self.quick else 20000
        with ServerProcess(latency_ms=50) as server:
            self.endpoint("over", server, max_concurrency=256)
            self.warm_up("over")
            spark_seconds, _ = self.run(self.query("over", self.rows(rows, "same")))
            config = EndpointConfig(name="over-alone", base_url=server.url + "/v1", max_concurrency=512)

            async def alone() -> float:
                client = EndpointClient(config)
                started = time.perf_counter()
                await answer_rows(client, [f"same {i}" for i in range(rows)])
                elapsed = time.perf_counter() - started
                await client.aclose()
                return elapsed

            alone_seconds = asyncio.run(alone())
        self.report("Spark overhead: UDF layer / client alone",
                    f"{spark_seconds / alone_seconds:.2f}x ({spark_seconds:.1f}s vs {alone_seconds:.1f}s)", "<= 1.2x")

    def baselines(self) -> None:
        import httpx
        from concurrent.futures import ThreadPoolExecutor
        from pyspark.sql.functions import pandas_udf, udf

        with ServerProcess(latency_ms=100) as server:
            url = server.url + "/v1/chat/completions"

            def ask(client, prompt):
                r = client.post(url, json={"model": "m", "messages": [{"role": "user", "content": prompt}]})
                return r.json()["choices"][0]["message"]["content"]

            @udf("string")
            def row_at_a_time(prompt):
                with httpx.Client(timeout=30) as client:
                    return ask(client, prompt)

            @pandas_udf("string")
            def thread_pool(prompts: pd.Series) -> pd.Series:
                with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32)) as client, \
                        ThreadPoolExecutor(32) as pool:
                    return pd.Series(list(pool.map(lambda p: ask(client, p), prompts)))

            def timed(column, n):
                df = self.rows(n, "base").select(column("prompt").alias("a"))
                started = time.perf_counter()
                df.agg(F.count("a")).first()
                return n / (time.perf_counter() - started)

            row_rate = timed(row_at_a_time, 100 if self.quick else 300)
            pool_rate = timed(thread_pool, 2000 if self.quick else 5000)
            self.endpoint("ours", server, max_concurrency=512)
            self.warm_up("ours")
            n = 5000 if self.quick else 20000
            seconds, _ = self.run(self.query("ours", self.rows(n)))
            ours = n / seconds
        self.report("baseline: row-at-a-time @udf", f"{row_rate:,.0f} rows/s", "(reference)")
        self.report("baseline: pandas UDF + 32 threads", f"{pool_rate:,.0f} rows/s", "(reference)")
        self.report("ai_query rows/s and ratio to the thread pool", f"{ours:,.0f} rows/s, {ours / pool_rate:.1f}x",
                    ">= 2x")
        self.report("ratio to row-at-a-time", f"{ours / row_rate:.0f}x", "(reference)")

    def faults(self) -> None:
        rows = 2000 if self.quick else 5000
        with ServerProcess(latency_ms=20) as server:
            self.endpoint("faulty", server, max_concurrency=256, max_retries=20, initial_backoff=0.01,
                          max_backoff=0.05)
            self.warm_up("faulty")
            clean, _ = self.run(self.query("faulty", self.rows(rows, "clean")))
            server.configure(fault_rate=0.2, faults="429,429-bare,dbx-limit", seed=5)
            faulty, failed = self.run(self.query("faulty", self.rows(rows, "faulty")))
        self.report(f"20% of requests 429 at random, {rows:,} rows",
                    f"{rows / faulty:,.0f} rows/s vs {rows / clean:,.0f} clean, {failed} failed", "(reference)")

    def embeddings(self) -> None:
        rows = 30000 if self.quick else 100000
        with ServerProcess(latency_ms=20) as server:
            batch.add_endpoint("emb", api="databricks", host=server.url, task="embeddings", batch_size=128,
                               max_concurrency=64)
            self.warm_up("emb")
            server.reset()
            seconds, failed = self.run(self.query("emb", self.rows(rows, "short text")))
            requests = server.stats()["requests"]
        self.report(f"embeddings: {rows:,} short texts", f"{rows / seconds:,.0f} rows/s, {requests:,} requests",
                    f"{failed} failed")


SCENARIOS = ("saturation", "latency", "cpu", "scale", "overhead", "baselines", "embeddings", "faults")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="scenario", help=", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="fewer rows, for a fast look")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    bench = Bench(args.quick)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, local[2]")
    for name in args.scenarios or SCENARIOS:
        print(f"{name}:", flush=True)
        getattr(bench, name)()
    bench.spark.stop()


if __name__ == "__main__":
    main()
