"""Does one requests-per-minute budget hold when several executors share an endpoint?

Starts ``batch.serve`` (with latency) and a Spark standalone cluster on loopback (a master and
``--workers`` workers of ``--cores`` cores, from PySpark's own launcher), then runs one
``ai_query`` over ``--rows`` distinct prompts against an endpoint whose whole budget is
``--rpm`` requests per minute. Nobody divides that budget by hand: the column splits it by the
cluster's task slots (``batch._functions.task_slots``). The server counts requests per second;
this prints the achieved rate against the budget and the busiest second.

    python benchmarks/cluster_rate.py [--rows 3000] [--rpm 6000] [--latency-ms 40] [--workers 2] [--cores 1]
                                      [--task-slots N]   # force a slot count, e.g. 1 to see an unsplit budget

Exit status 0 when the achieved rate is at most 1.05 times the budget, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the cluster launcher the tests use

from batch.serve import ServerProcess, simulated_answer  # noqa: E402
from spark_cluster import StandaloneCluster, java_available, rate_figures, spark_env  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--rpm", type=float, default=6000.0, help="the endpoint's whole budget, requests/minute")
    parser.add_argument("--latency-ms", type=float, default=40.0)
    parser.add_argument("--jitter-ms", type=float, default=20.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=0, help="default: 4 per task slot")
    parser.add_argument("--task-slots", type=int, default=0, help="set spark.aiquery.taskSlots (0: leave it)")
    args = parser.parse_args(argv)
    if not java_available():
        print("java is not installed: a Spark standalone cluster needs a JDK (17 or 21)", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="cluster-rate-"))
    os.environ.update(spark_env(work))  # this process is the driver: loopback, this Python on the executors
    with ServerProcess(latency_ms=args.latency_ms, latency_jitter_ms=args.jitter_ms) as server, \
            StandaloneCluster(work / "cluster", workers=args.workers, cores=args.cores) as cluster:
        from pyspark.sql import SparkSession
        from pyspark.sql import functions as F

        import batch
        from batch._functions import SLOTS_CONF, task_slots

        spark = (SparkSession.builder.master(cluster.master_url).appName("cluster-rate")
                 .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
                 .config("spark.executor.memory", "512m")
                 .config("spark.sql.shuffle.partitions", "4").getOrCreate())
        spark.sparkContext.setLogLevel("ERROR")
        spark.range(args.workers * args.cores * 2).count()  # executors registered before the column is built
        if args.task_slots:
            spark.conf.set(SLOTS_CONF, str(args.task_slots))
        slots = task_slots(spark)
        batch.add_endpoint("rated", api="openai", base_url=server.url + "/v1", task="chat",
                           requests_per_minute=args.rpm, max_retries=4, timeout=30.0)
        partitions = args.partitions or 4 * slots
        prompts = (spark.range(args.rows).repartition(partitions)
                   .select(F.col("id"), F.concat(F.lit("rate question "), F.col("id").cast("string")).alias("p")))
        answers = prompts.select("id", batch.ai_query("rated", "p").alias("a"))
        server.reset()
        started = time.perf_counter()
        rows = answers.collect()
        wall = time.perf_counter() - started
        stats = server.stats()
        spark.stop()

    wrong = [r for r in rows if r["a"] != simulated_answer(f"rate question {r['id']}")[0]]
    budget = args.rpm / 60.0
    figures = rate_figures(stats["per_second"])
    ratio = figures["mean"] / budget
    print(f"cluster: {args.workers} workers x {args.cores} cores, task slots seen by the driver: {slots}, "
          f"{partitions} partitions; python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"endpoint: budget {args.rpm:g} requests/min = {budget:.1f}/s, latency {args.latency_ms:g} ms "
          f"(+0..{args.jitter_ms:g}), {args.rows} rows, {len(wrong)} wrong answers")
    print(f"server: {stats['answered']} requests in {figures['seconds']} busy seconds ({wall:.1f} s query), "
          f"{stats['rate_limited']} rate-limited")
    print(f"achieved {figures['mean']:.1f} requests/s over whole seconds vs budget {budget:.1f}/s: "
          f"ratio {ratio:.3f} (must be <= 1.05); peak second {figures['peak']} requests "
          f"({figures['peak'] / budget:.2f}x)")
    print("per second:", " ".join(str(n) for n in stats["per_second"] if n))
    return 0 if ratio <= 1.05 and not wrong else 1


if __name__ == "__main__":
    sys.exit(main())
