"""A million rows through ``ai_query`` against the local endpoint with no latency: wall time, rows/s, and the
memory of the Python workers as the rows go by, which must stay flat (bounded by the batches in flight and
the per-task memo, not by the row count).

The query writes to Spark's ``noop`` format, so what is measured is reading rows, asking the endpoint and
building the answers, not storage. ``failOnError`` is left on: the run only finishes if every row was answered.

Usage: python benchmarks/million_rows.py [--rows 1000000] [--task chat|embeddings] [--partitions 4]
                                        [--master local[2]]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyspark.sql import functions as F

import batch
from batch.serve import ServerProcess
from batch._session import local_session


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def python_workers(root: int) -> list[int]:
    """PySpark's Python daemon and workers below ``root`` (this process: its JVM, the JVM's daemon, its forks).

    Walking down from this process, not scanning every process, keeps other Spark applications out."""
    tree, found, stack = _children(), [], [root]
    while stack:
        pid = stack.pop()
        for child in tree.get(pid, []):
            stack.append(child)
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"pyspark.daemon" in command or b"pyspark.worker" in command:
                found.append(child)
    return found


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB; zeros once it is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class Sampler(threading.Thread):
    """Every ``every`` seconds: rows answered so far (the server's count) and the workers' memory."""

    def __init__(self, server: ServerProcess, inputs_per_row: float, every: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.server, self.inputs_per_row, self.every = server, inputs_per_row, every
        self.samples: list[tuple[float, int, int, float]] = []  # seconds, rows, workers, largest RSS (MB)
        self.peak_hwm_mb = 0.0
        self.stop = threading.Event()
        self.started = time.perf_counter()

    def sample(self) -> None:
        pids = python_workers(os.getpid())
        memory = [memory_kb(pid) for pid in pids]
        self.peak_hwm_mb = max([self.peak_hwm_mb] + [hwm / 1024 for _, hwm in memory])
        rows = int(self.server.stats()["inputs"] / self.inputs_per_row)
        largest = max([rss for rss, _ in memory] or [0]) / 1024
        self.samples.append((time.perf_counter() - self.started, rows, len(pids), largest))

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.sample()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--task", choices=("chat", "embeddings"), default="chat")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--master", default="local[2]")
    args = parser.parse_args()

    warehouse = tempfile.mkdtemp(prefix="million-wh-")
    spark = local_session(args.master, warehouse, app_name="million-rows", hive=False)
    with ServerProcess() as server:
        batch.add_endpoint("million", api="openai", base_url=server.url + "/v1", task=args.task)
        rows = spark.range(args.rows, numPartitions=args.partitions).select(
            F.concat(F.lit("million row "), F.col("id").cast("string")).alias("prompt"))
        query = rows.select(batch.ai_query("million", "prompt").alias("answer"))
        spark.range(100).select(F.concat(F.lit("warm "), F.col("id").cast("string")).alias("prompt")) \
            .select(batch.ai_query("million", "prompt")).write.format("noop").mode("overwrite").save()
        server.reset()
        sampler = Sampler(server, inputs_per_row=1.0)
        sampler.start()
        started = time.perf_counter()
        query.write.format("noop").mode("overwrite").save()
        seconds = time.perf_counter() - started
        sampler.stop.set()
        sampler.join()
        sampler.sample()
        stats = server.stats()
    spark.stop()

    print(f"rows            {args.rows:,} ({args.task}, {args.partitions} partitions, {args.master})")
    print(f"wall time       {seconds:.1f} s")
    print(f"throughput      {args.rows / seconds:,.0f} rows/s")
    print(f"requests        {stats['requests']:,} ({stats['answered']:,} answered, {stats['inputs']:,} inputs)")
    print(f"worker peak     {sampler.peak_hwm_mb:.0f} MB VmHWM (largest Python worker)")
    print("worker memory as the rows went by (largest VmRSS of the live workers):")
    shown = sampler.samples[:: max(1, len(sampler.samples) // 12)] + sampler.samples[-1:]
    for at, done, workers, largest in shown:
        print(f"  {at:7.1f} s  {done:>10,} rows  {workers} processes  {largest:6.0f} MB")
    return 0 if stats["inputs"] >= args.rows else 1


if __name__ == "__main__":
    sys.exit(main())
