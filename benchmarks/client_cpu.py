"""Client CPU per request in one Python worker's code path, outside Spark: where it goes and what it costs.

The UDF's own function (``batch._udf.make_udf``, every endpoint key at its default, the host memo on as
it is by default) is fed the pandas batches Spark would hand a worker (10,000 rows per Arrow batch) in a
fresh interpreter, against ``batch.serve`` with 20 ms latency in another process. CPU is
``time.process_time()`` of this process over the run (both the main thread and the event-loop thread)
divided by the requests the server answered: what the Python worker spends, less PySpark's own Arrow
reading and writing.

    python benchmarks/client_cpu.py [--rows 20000] [--repeat 3] [--profile N]

``--profile N`` prints the N most expensive functions (cProfile, inclusive and own time per request) of
one run with the engine on the main thread, instead of the timed runs.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH_ROWS = 10_000  # spark.sql.execution.arrow.maxRecordsPerBatch


def _udf_run(url: str):
    from batch._arguments import build_spec
    from batch.config import EndpointConfig
    from batch._udf import make_udf

    config = EndpointConfig(name=f"cpu-{uuid.uuid4().hex[:8]}", api="openai", base_url=url + "/v1")
    spec = build_spec(config, failOnError=False)
    return make_udf(spec).func


def one_run(url: str, rows: int) -> dict:
    """In this (fresh) process: the UDF function over ``rows`` prompts; CPU and wall over the run."""
    import pandas as pd

    run = _udf_run(url)
    batches = [pd.Series([f"prompt {i}" for i in range(start, min(rows, start + BATCH_ROWS))])
               for start in range(0, rows, BATCH_ROWS)]
    cpu, wall = time.process_time(), time.perf_counter()
    frames = list(run(iter(batches)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    failed = sum(int(f["errorMessage"].notna().sum()) for f in frames)
    return {"cpu": cpu, "wall": wall, "failed": failed, "rows": rows}


def raw_run(url: str, rows: int) -> dict:
    """The floor: a bare aiohttp session with a 1,024 semaphore (no flow control, no memo, no retries), fed
    the same batches from the same kind of worker runtime, answers parsed with json.loads."""
    import gc

    import aiohttp
    import pandas as pd

    from batch._runtime import WorkerRuntime

    runtime = WorkerRuntime()
    gc.set_threshold(20000, 10, 10)
    endpoint = url + "/v1/chat/completions"
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    state: dict = {}

    async def one(gate: asyncio.Semaphore, prompt: str) -> str:
        session = state.get("session")
        if session is None:
            session = state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        body = encode({"model": "m", "messages": [{"role": "user", "content": prompt}]}).encode()
        async with gate, session.post(endpoint, data=body, headers={"content-type": "application/json"}) as resp:
            return json.loads(await resp.read())["choices"][0]["message"]["content"]

    async def answer(values: list) -> list:
        gate = state.setdefault("gate", asyncio.Semaphore(1024))
        return await asyncio.gather(*(one(gate, v) for v in values))

    batches = [pd.Series([f"prompt {i}" for i in range(start, min(rows, start + BATCH_ROWS))])
               for start in range(0, rows, BATCH_ROWS)]
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        answers = runtime.run(answer(batch.tolist()))
        pd.DataFrame({"result": answers, "errorMessage": [None] * len(answers)})
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "failed": 0, "rows": rows}


def profile_run(url: str, rows: int, top: int) -> None:
    """The engine on the main thread under cProfile (the worker runs it on its loop thread)."""
    import gc

    import pandas as pd

    from batch._arguments import build_spec
    from batch.config import EndpointConfig
    from batch._engine import Memo
    from batch._memo import answer_remembered, settings_from_env
    from batch._runtime import WorkerRuntime
    from batch._udf import request_values, rows_to_frame

    WorkerRuntime().close()  # what a worker's runtime sets up (the collector's threshold)
    gc.set_threshold(20000, 10, 10)
    config = EndpointConfig(name=f"cpu-{uuid.uuid4().hex[:8]}", api="openai", base_url=url + "/v1")
    spec = build_spec(config, failOnError=False)
    from batch._client import EndpointClient
    settings = settings_from_env()

    async def go() -> None:
        client = EndpointClient(config, share_pace=True)
        memo = Memo()
        for start in range(0, rows, BATCH_ROWS):
            batch = pd.Series([f"prompt {i}" for i in range(start, min(rows, start + BATCH_ROWS))])
            outcomes = await answer_remembered(settings, client, request_values(batch, spec), memo=memo)
            rows_to_frame(outcomes, spec, False)
        await client.aclose()

    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(go())
    profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt
    print(f"profiled: {total / rows * 1e6:.0f} us per request under cProfile (inflated by the profiler)")
    entries = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])[:top]
    print(f"{'inclusive':>10} {'own':>8} {'calls/req':>9}  function")
    for (path, line, name), (_, calls, own, inclusive, _) in entries:
        where = f"{Path(path).name}:{line}" if line else path
        print(f"{inclusive / rows * 1e6:8.1f}us {own / rows * 1e6:6.1f}us {calls / rows:9.2f}  {name} ({where})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions of one run")
    parser.add_argument("--raw", action="store_true", help="a bare aiohttp session instead (the floor)")
    parser.add_argument("--url", help=argparse.SUPPRESS)  # a child run against the parent's server
    args = parser.parse_args(argv)
    if args.url:
        if args.profile:
            profile_run(args.url, args.rows, args.profile)
        else:
            print(json.dumps((raw_run if args.raw else one_run)(args.url, args.rows)))
        return 0

    from batch.serve import ServerProcess

    with ServerProcess(latency_ms=args.latency_ms) as server:
        child = [sys.executable, __file__, "--url", server.url, "--rows", str(args.rows), *(["--raw"] * args.raw)]
        if args.profile:
            return subprocess.call([*child, "--profile", str(args.profile)])
        runs = []
        for _ in range(args.repeat):
            server.reset()
            out = subprocess.run(child, check=True, capture_output=True, text=True, env=os.environ).stdout
            result = json.loads(out.strip().splitlines()[-1])
            result["requests"] = server.stats()["requests"]
            runs.append(result)
            print(f"  {result['cpu'] / result['requests'] * 1e6:6.0f} us CPU/request, "
                  f"{result['requests'] / result['wall']:7,.0f} requests/s, {result['failed']} failed", flush=True)
    median = statistics.median(r["cpu"] / r["requests"] * 1e6 for r in runs)
    print(f"median: {median:.0f} us CPU per request ({args.rows:,} rows, fresh process per run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
