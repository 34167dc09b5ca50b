"""Client CPU per request of two source trees, measured alternately in one run: before and after a change.

Each tree is a checkout of this project (say ``git worktree add /tmp/before <commit>``) with this
``benchmarks/`` folder copied in, so both are measured the same way. Run by run, alternating trees:

  worker     ``client_cpu.py`` in a fresh interpreter (the UDF's code path outside Spark), one server for all
  spark      ``throughput.py cpu`` (a new Spark application per run: cold with start-up, cold net, warm)

    python benchmarks/compare_cpu.py /tmp/before /tmp/after [--names before,after] [--repeat 2] [--skip-spark]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path


def _env(tree: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": tree}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2)
    parser.add_argument("--names", default="before,after")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--skip-spark", action="store_true")
    args = parser.parse_args(argv)
    names = args.names.split(",")
    trees = [str(Path(t).resolve()) for t in args.trees]
    sys.path.insert(0, trees[0])
    from batch.serve import ServerProcess

    worker: dict[str, list[float]] = {n: [] for n in names}
    spark: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}", flush=True)
    with ServerProcess(latency_ms=20) as server:
        for run in range(args.repeat):
            for name, tree in zip(names, trees):
                server.reset()
                out = subprocess.run([sys.executable, f"{tree}/benchmarks/client_cpu.py", "--url", server.url,
                                      "--rows", str(args.rows)], check=True, capture_output=True, text=True,
                                     env=_env(tree), cwd=tree).stdout
                result = json.loads(out.strip().splitlines()[-1])
                worker[name].append(result["cpu"] / server.stats()["requests"] * 1e6)
                print(f"  run {run + 1} {name:>8} worker path: {worker[name][-1]:5.0f} us/request", flush=True)
    if not args.skip_spark:
        for run in range(args.repeat):
            for name, tree in zip(names, trees):
                out = subprocess.run([sys.executable, f"{tree}/benchmarks/throughput.py", "cpu"], check=True,
                                     capture_output=True, text=True, env=_env(tree), cwd=tree).stdout
                figures = {}
                for key, pattern in (("cold", r"\| client CPU per request \(Python workers\), cold[^|]*\| ([\d,]+) us"),
                                     ("start-up s", r"\| +of which starting the Python workers \| ([\d.]+) s"),
                                     ("cold net", r"\| +cold, once the workers are up \| ([\d,]+) us"),
                                     ("warm", r"\| client CPU per request \(Python workers\), warm \| ([\d,]+) us")):
                    found = re.search(pattern, out)
                    figures[key] = float(found.group(1).replace(",", "")) if found else float("nan")
                spark[name].append(figures)
                print(f"  run {run + 1} {name:>8} Spark: " + ", ".join(f"{k} {v:g}" for k, v in figures.items()),
                      flush=True)
    print("\n| measure | " + " | ".join(names) + " |")
    print("| --- | " + " | ".join("---" for _ in names) + " |")
    print("| worker code path, us/request (median) | " +
          " | ".join(f"{statistics.median(worker[n]):.0f}" for n in names) + " |")
    if not args.skip_spark:
        for key in ("cold", "start-up s", "cold net", "warm"):
            unit = "s" if key.endswith(" s") else "us/request"
            label = key.removesuffix(" s")
            print(f"| Spark `throughput.py cpu`, {label}, {unit} (median) | " +
                  " | ".join(f"{statistics.median(r[key] for r in spark[n]):g}" for n in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
