"""Throughput of ``ai_query`` through Spark against a local endpoint, as a user gets it: every endpoint key at
its default. Saturation measures the first run cold (a new Spark application, so new Python workers, and an
endpoint nothing was learned about) and a second run warm (same application, new rows); the latency-bound
run is cold only; the other scenarios run in the application at hand.

  saturation   for every 429 style (``batch.serve --limit-profile``): 20,000 chat rows against a cap of
               R=1,000 requests/s (or its token / window / concurrency equivalent) at 100 ms latency:
               rows/s over the cap cold and warm, share of 429s, failed rows, and a pandas UDF with 32
               threads a task that sleeps Retry-After in the thread that got the 429, same server, same
               run (once, after the warm run); for the concurrency cap also 100 lanes that know it (no
               Spark), a reference client told the cap
  latency      10,000 rows, no cap, 1 s latency, cold: wall time and peak in-flight requests at the server
  cpu          client CPU per request in the Python workers of this application (process CPU time over the
               run), cold (worker start-up included, and shown alone, as is what a pandas UDF that calls
               nothing pays to start its workers) and warm
  scale        10k vs 100k rows: time ratio, peak worker memory
  overhead     the same requests through the UDF layer vs the toolkit's client alone, outside Spark
  baselines    row-at-a-time UDF and pandas UDF + thread pool (hand-rolled), uncapped server: rows/s and our ratio
  embeddings   100,000 short texts packed per request: rows/s
  faults       5,000 rows with 20% of requests answered 429 at random, whatever the rate: rate vs a clean run

Only what the endpoint imposes is set (its cap, latency, 429 style, window length). Figures on a
shared machine are noisy: compare rows of one run, and repeat runs for medians.

Usage: python benchmarks/throughput.py [scenario ...] [--quick] [--profiles a,b] [--trace]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd
from pyspark.sql import functions as F

import batch
from batch._client import EndpointClient
from batch.config import EndpointConfig
from batch._engine import answer_rows
from batch.serve import ServerProcess
from batch._session import local_session
from batch._transport import AiohttpTransport

CLK = os.sysconf("SC_CLK_TCK")


def python_workers() -> list[int]:
    """Pids of PySpark's Python daemons and workers started by this driver (descendants of this process, through
    its JVM): other Spark applications on the machine (a test suite, another benchmark) have their own."""
    parents, commands = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
    me = os.getpid()

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False

    return [pid for pid, cmd in commands.items()
            if (b"pyspark.daemon" in cmd or b"pyspark.worker" in cmd) and ours(pid)]


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


def core_speed() -> float:
    """CPU seconds of a fixed pure-Python loop: per-request CPU figures scale with it from machine to machine."""
    started = time.process_time()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.process_time() - started


RATE = 1000          # the cap: requests per second (or what the profile's own unit allows at that rate)
LATENCY_MS = 100
WINDOW_S = 5.0       # the window profile's window, shorter than a minute so a run spans several
CONCURRENT = 100     # the concurrency profile's cap: 100 in flight at 100 ms is 1,000 requests/s
WORDS = 20           # prompts of 2..21 words, so requests cost different numbers of tokens
MEAN_COST = 2 * (2 + (WORDS - 1) / 2) + 1  # prompt tokens + the echoed answer (batch.serve.limits.request_cost)
PROFILES = {  # name: (server options, how the cap is counted)
    "retry-after": (dict(limit_profile="retry-after", rate_limit=RATE), "requests"),
    "bare": (dict(limit_profile="bare", rate_limit=RATE), "requests"),
    "retry-after-ms": (dict(limit_profile="token-bucket", rate_limit=RATE), "requests"),
    "openai": (dict(limit_profile="openai", rate_limit=RATE), "requests"),
    "openai-retry": (dict(limit_profile="openai-retry", rate_limit=RATE), "requests"),
    "azure": (dict(limit_profile="azure", rate_limit=RATE), "requests"),
    "window": (dict(limit_profile="window", rate_limit=RATE, window_s=WINDOW_S), "window"),
    "tpm": (dict(limit_profile="tpm", tokens_per_minute=RATE * MEAN_COST * 60), "tokens"),
    "concurrency": (dict(limit_profile="concurrency", max_concurrent=CONCURRENT), "requests"),
}


class Tracer:
    """Samples the server's counters every ``TRACE_S`` seconds in a thread and prints, when stopped, one line
    per sample: answered and refused requests per second then, and how many were in flight at the server then."""

    def __init__(self, server: ServerProcess, label: str) -> None:
        import threading
        self.server, self.label = server, label
        self.samples: list[tuple[float, int, int, int]] = []
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        began = time.monotonic()
        while not self.halt.wait(TRACE_S):
            stats = self.server.stats()
            self.samples.append((time.monotonic() - began, stats["requests"], stats["rate_limited"],
                                 stats["in_flight"]))

    def stop(self) -> None:
        self.halt.set()
        self.thread.join()
        print(f"    trace {self.label}: t, answered/s, 429/s, in flight", flush=True)
        last = (0.0, 0, 0, 0)
        for t, requests, limited, in_flight in self.samples:
            dt = t - last[0]
            ok = (requests - limited) - (last[1] - last[2])
            print(f"    {t:6.2f} {ok / dt:7.0f} {(limited - last[2]) / dt:6.0f} {in_flight:5d}")
            last = (t, requests, limited, in_flight)


TRACE_S = 0.25


class Bench:
    def __init__(self, quick: bool, profiles: list[str], trace: bool = False) -> None:
        self.quick, self.trace = quick, trace
        self.profiles = profiles
        self.warehouse = tempfile.mkdtemp(prefix="bench-wh-")
        self.spark = None
        self.figures: list[tuple[str, str, str]] = []
        self.table: list[tuple[str, ...]] = []
        self.fresh()
        self.jvm_warm_up()

    def jvm_warm_up(self) -> None:
        """One pandas UDF job that calls no endpoint, so that the JVM's first-job costs (loading and compiling
        Spark's own classes, paid once per driver process) fall on no profile; every measured cold run still
        starts in a new application with new Python workers and nothing learned."""
        self.plain_udf_job(4)

    def plain_udf_job(self, rows: int) -> None:
        """A job of a pandas UDF that calls nothing, over ``rows`` rows in two partitions."""
        from pyspark.sql.functions import pandas_udf

        @pandas_udf("long")
        def same(ids: pd.Series) -> pd.Series:
            return ids

        self.spark.range(rows, numPartitions=2).select(same("id").alias("a")).agg(F.sum("a")).first()

    def fresh(self) -> None:
        """A new Spark application: new Python workers, nothing learned in this process."""
        if self.spark is not None:
            self.spark.stop()
        self.spark = local_session("local[2]", self.warehouse, app_name="bench", hive=False)

    def rows(self, n: int, prefix: str = "prompt", varied: bool = False):
        text = F.concat(F.lit(f"{prefix} "), F.col("id").cast("string"))
        if varied:
            text = F.concat(text, F.expr(f"repeat(' w', CAST(id % {WORDS} AS INT))"))
        return self.spark.range(n, numPartitions=2).select(text.alias("prompt"))

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

    def endpoint(self, name: str, server: ServerProcess) -> str:
        """An endpoint entry with every key at its default; a new name each time, so nothing learned applies."""
        name = f"{name}-{server.port}"
        batch.add_endpoint(name, api="openai", base_url=server.url + "/v1")
        return name

    # ------------------------------------------------------------ scenarios

    def saturation(self) -> None:
        rows = 6000 if self.quick else 20000
        pool_rows = 2000 if self.quick else 5000
        print(f"  {rows:,} chat rows a run (the thread pool: {pool_rows:,}), cap {RATE:,} requests/s or its "
              f"equivalent, {LATENCY_MS:g} ms latency{', --quick' if self.quick else ''}", flush=True)
        for profile in self.profiles:
            options, unit = PROFILES[profile]
            self.fresh()
            with ServerProcess(latency_ms=LATENCY_MS, **options) as server:
                name = self.endpoint("sat-" + profile, server)
                cold = self.measured(server, name, rows, "cold", unit)
                warm = self.measured(server, name, rows, "warm", unit)
                pool = self.thread_pool(server, pool_rows, unit)
                if profile == "concurrency":
                    share, refused = self.lanes(server)
                    self.report(f"concurrency cap: {CONCURRENT} lanes that know it", f"{share:.3f} of the cap, "
                                f"{refused} 429s", "(reference: a client told the cap, no Spark)")
            for run, (ratio, share, failed, per_s) in (("cold", cold), ("warm", warm)):
                self.table.append((profile, run, f"{ratio:.3f}", f"{share:.2%}", str(failed), f"{per_s:,.0f}",
                                   f"{pool[3]:,.0f}", f"{per_s / pool[3]:.2f}x"))
            print(f"  {profile:<15} cold {cold[0]:.3f} ({cold[1]:.2%} 429s, {cold[2]} failed)  "
                  f"warm {warm[0]:.3f} ({warm[1]:.2%}, {warm[2]} failed)  thread pool {pool[0]:.3f} "
                  f"({pool[3]:,.0f} rows/s)", flush=True)

    def measured(self, server: ServerProcess, name: str, rows: int, prefix: str, unit: str):
        """One run: (share of the cap reached, share of requests answered 429, failed rows, rows/s)."""
        server.reset()
        spent = (server.stats()["limit"] or {}).get("tokens_admitted", 0.0)
        tracer = Tracer(server, f"{name} {prefix}") if self.trace else None
        began = time.monotonic()
        try:
            seconds, failed = self.run(self.query(name, self.rows(rows, prefix, varied=unit == "tokens")))
        finally:
            if tracer:
                tracer.stop()
        ended = time.monotonic()
        stats = server.stats()
        if unit == "tokens":
            stats["limit"]["tokens_admitted"] -= spent
        share = stats["rate_limited"] / max(1, stats["requests"])
        return self.ratio(stats, unit, rows, seconds, began, ended), share, failed, rows / seconds

    @staticmethod
    def ratio(stats: dict, unit: str, rows: int, seconds: float, began: float, ended: float) -> float:
        limit = stats["limit"]
        if unit == "tokens":
            return limit["tokens_admitted"] / seconds / limit["tokens_per_second"]
        if unit == "window":  # admitted over the whole windows inside the run, against their budget
            origin, length = limit["origin"], limit["window_s"]
            first, last = math.ceil((began - origin) / length), math.floor((ended - origin) / length)
            whole = [limit["per_window"][k] for k in range(first, last) if k < len(limit["per_window"])]
            return sum(whole) / (len(whole) * limit["budget"]) if whole else float("nan")
        return rows / seconds / RATE

    def thread_pool(self, server: ServerProcess, rows: int, unit: str):
        """The hand-rolled baseline: a pandas UDF, 32 threads, each sleeping Retry-After when its request got a 429."""
        import httpx
        from concurrent.futures import ThreadPoolExecutor
        from pyspark.sql.functions import pandas_udf

        url = server.url + "/v1/chat/completions"

        def ask(client, prompt):
            while True:
                r = client.post(url, json={"model": "m", "messages": [{"role": "user", "content": prompt}]})
                if r.status_code != 429:
                    return r.json()["choices"][0]["message"]["content"]
                wait = r.headers.get("retry-after-ms")
                time.sleep(float(wait) / 1000 if wait else float(r.headers.get("retry-after", 1)))

        @pandas_udf("string")
        def thread_pool(prompts: pd.Series) -> pd.Series:
            with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=32)) as client, \
                    ThreadPoolExecutor(32) as pool:
                return pd.Series(list(pool.map(lambda p: ask(client, p), prompts)))

        server.reset()
        spent = (server.stats()["limit"] or {}).get("tokens_admitted", 0.0)
        df = self.rows(rows, "pool", varied=unit == "tokens").select(thread_pool("prompt").alias("a"))
        began = time.monotonic()
        started = time.perf_counter()
        df.agg(F.count("a")).first()
        seconds = time.perf_counter() - started
        stats = server.stats()
        if unit == "tokens":
            stats["limit"]["tokens_admitted"] -= spent
        ratio = self.ratio(stats, unit, rows, seconds, began, time.monotonic())
        return ratio, stats["rate_limited"] / max(1, stats["requests"]), 0, rows / seconds

    @staticmethod
    def lanes(server: ServerProcess, rows: int = 10000) -> tuple[float, int]:
        """Answered rows/s over the cap of ``CONCURRENT`` lanes in this process (no Spark): a client told the cap,
        that never has more in flight than it. The lanes share the toolkit's transport with no flow control (for a
        plain ``http://`` endpoint, its keep-alive HTTP/1.1 pool on asyncio), and each posts its next request the
        moment its answer is read (a 429 is asked again at once). What they miss of the cap is each request's time
        outside the server's handler, the server's and the client's share of every round trip: aiohttp's client in
        their place gets three hundredths less."""
        url = server.url + "/v1/chat/completions"
        headers = {"Content-Type": "application/json"}
        body = b'{"model": "m", "messages": [{"role": "user", "content": "lane"}]}'

        async def run() -> float:
            transport = AiohttpTransport()
            timeout = transport.timeout({})
            left = iter(range(rows))

            async def lane() -> None:
                for _ in left:
                    while (await transport.post(url, headers, body, timeout))[0] == 429:
                        pass

            started = time.perf_counter()
            await asyncio.gather(*(lane() for _ in range(CONCURRENT)))
            await transport.aclose()
            return rows / (time.perf_counter() - started) / (CONCURRENT * 1000 / LATENCY_MS)

        server.reset()
        share = asyncio.run(run())
        return share, server.stats()["rate_limited"]

    def latency(self) -> None:
        rows = 4000 if self.quick else 10000
        self.fresh()
        with ServerProcess(latency_ms=1000) as server:
            name = self.endpoint("slow", server)
            seconds, failed = self.run(self.query(name, self.rows(rows)))
            stats = server.stats()
        self.report(f"latency-bound: {rows:,} rows at 1 s latency, cold", f"{seconds:.1f} s, {failed} failed",
                    "< 15 s")
        self.report("latency-bound: peak in-flight at the server", str(stats["max_in_flight"]), "(reference)")

    def cpu(self) -> None:
        """Python worker CPU per request answered. Cold is the first job of a new application, so it includes
        starting the workers (an interpreter each, importing PySpark, pandas, PyArrow and this package): that
        is also measured alone, as the CPU of a new application's workers over a job of one row per worker,
        and taken off the cold run to show what each request costs once the workers are up. What any pandas UDF
        pays to start its workers is measured the same way with a UDF that calls nothing: the rest of the
        start-up is this package's (its imports, its client, its first requests)."""
        rows = 8000 if self.quick else 20000
        self.fresh()
        spark_start = self.workers_cpu(lambda: self.plain_udf_job(2))  # one row in each of the two partitions
        self.fresh()
        with ServerProcess(latency_ms=20) as server:
            name = self.endpoint("cpu-start", server)
            startup, _ = self.worker_cpu(server, name, 2, "start")
            self.fresh()
            name = self.endpoint("cpu", server)
            cold, requests = self.worker_cpu(server, name, rows, "cold")
            warm, warm_requests = self.worker_cpu(server, name, rows, "warm")
        self.report(f"client CPU per request (Python workers), cold, {rows:,} rows", f"{cold / requests * 1e6:,.0f} us",
                    "(reference: any pandas UDF's start included)")
        self.report("  of which starting the Python workers", f"{startup:.2f} s ({startup / requests * 1e6:,.0f} us "
                    "a request)", "(reference)")
        self.report("    of which any pandas UDF's start (one that calls nothing)",
                    f"{spark_start:.2f} s ({spark_start / requests * 1e6:,.0f} us a request)", "(reference)")
        self.report("  cold, less what any pandas UDF pays to start",
                    f"{max(0.0, cold - spark_start) / requests * 1e6:,.0f} us", "<= 150 us")
        self.report("  cold, once the workers are up", f"{max(0.0, cold - startup) / requests * 1e6:,.0f} us",
                    "<= 150 us")
        self.report("client CPU per request (Python workers), warm", f"{warm / warm_requests * 1e6:,.0f} us",
                    "<= 150 us")

    def worker_cpu(self, server: ServerProcess, name: str, rows: int, prefix: str) -> tuple[float, int]:
        """CPU seconds this application's Python workers spent over one ``ai_query`` job, and the requests the
        server answered in it."""
        server.reset()
        seconds = self.workers_cpu(lambda: self.run(self.query(name, self.rows(rows, prefix))))
        return seconds, server.stats()["requests"]

    @staticmethod
    def workers_cpu(job: Callable[[], object]) -> float:
        """CPU seconds this application's Python workers spent over ``job`` (workers it started included)."""
        before = cpu_seconds(python_workers())
        job()
        return cpu_seconds(python_workers()) - before

    def scale(self) -> None:
        small, large = (5000, 50000) if self.quick else (10000, 100000)
        with ServerProcess(latency_ms=5) as server:
            name = self.endpoint("scale", server)
            t_small, _ = self.run(self.query(name, self.rows(small)))
            t_large, failed = self.run(self.query(name, self.rows(large, "large")))
            rss = peak_rss_mb(python_workers())
        self.report(f"scale: time({large:,}) / time({small:,})", f"{t_large / t_small:.2f}x", "<= 10.5x")
        self.report("scale: peak Python worker memory", f"{rss:.0f} MB", "flat in rows")

    def overhead(self) -> None:
        rows = 6000 if self.quick else 20000
        with ServerProcess(latency_ms=50) as server:
            name = self.endpoint("over", server)
            spark_seconds, _ = self.run(self.query(name, self.rows(rows, "same")))
            config = EndpointConfig(name="over-alone", base_url=server.url + "/v1")

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
            name = self.endpoint("ours", server)
            n = 5000 if self.quick else 20000
            seconds, _ = self.run(self.query(name, self.rows(n)))
            ours = n / seconds
        self.report("baseline: row-at-a-time @udf", f"{row_rate:,.0f} rows/s", "(reference)")
        self.report("baseline: pandas UDF + 32 threads", f"{pool_rate:,.0f} rows/s", "(reference)")
        self.report("ai_query rows/s and ratio to the thread pool", f"{ours:,.0f} rows/s, {ours / pool_rate:.1f}x",
                    ">= 2x")
        self.report("ratio to row-at-a-time", f"{ours / row_rate:.0f}x", "(reference)")

    def faults(self) -> None:
        rows = 2000 if self.quick else 5000
        with ServerProcess(latency_ms=20) as server:
            name = self.endpoint("faulty", server)
            clean, _ = self.run(self.query(name, self.rows(rows, "clean")))
            server.configure(fault_rate=0.2, faults="429,429-bare,dbx-limit", seed=5)
            faulty, failed = self.run(self.query(name, self.rows(rows, "faulty")))
        self.report(f"20% of requests 429 at random, {rows:,} rows",
                    f"{rows / faulty:,.0f} rows/s vs {rows / clean:,.0f} clean, {failed} failed", "(reference)")

    def embeddings(self) -> None:
        rows = 30000 if self.quick else 100000
        with ServerProcess(latency_ms=20) as server:
            batch.add_endpoint("emb", api="databricks", host=server.url, task="embeddings")
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
    parser.add_argument("--profiles", default=",".join(PROFILES), help="429 styles for saturation")
    parser.add_argument("--trace", action="store_true", help="print the server's answers and 429s per quarter "
                        "second over each saturation run")
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(SCENARIOS)
    profiles = [p for p in args.profiles.split(",") if p]
    if unknown or set(profiles) - set(PROFILES):
        parser.error(f"choose scenarios from {', '.join(SCENARIOS)} and profiles from {', '.join(PROFILES)}")
    bench = Bench(args.quick, profiles, args.trace)
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, local[2], load {os.getloadavg()[0]:.1f}, "
          f"one core's speed: {core_speed():.2f} s for 10M additions in a Python loop")
    for name in args.scenarios or SCENARIOS:
        print(f"{name}:", flush=True)
        getattr(bench, name)()
    if bench.table:
        print("\n| 429 style | run | of the cap | 429s | failed | rows/s | thread pool rows/s | ours / pool |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for row in bench.table:
            print("| " + " | ".join(row) + " |")
    if bench.figures:
        print("\n| scenario | measured | target |\n| --- | --- | --- |")
        for name, measured, target in bench.figures:
            print(f"| {name} | {measured} | {target} |")
    bench.spark.stop()


if __name__ == "__main__":
    main()
