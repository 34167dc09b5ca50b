"""Client cost per transport: requests/s and client CPU per request against a local endpoint.

The endpoint runs in its own process with no latency, so what this measures is the
client: the retry loop, flow control, request building and the connection pool under
it. CPU is ``time.process_time()`` of this process only (the server is another process).

    python benchmarks/client_transport.py [--requests 5000] [--levels 1,64,256] [--repeat 1] [--gc-threshold 20000]

Python's cyclic garbage collector is a large share of the client's CPU: thousands of requests
in flight keep tens of thousands of objects alive, and every few hundred allocations the
collector walks the young ones. ``--gc-threshold`` adds one row measured with a larger
first-generation threshold, to show what a worker process that tunes it would get.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from batch._client import EndpointClient
from batch.config import EndpointConfig
from batch._engine import answer_rows
from batch.serve import ServerProcess, simulated_answer
from batch._transport import TRANSPORTS, make_transport


def prompts(count: int, tag: str) -> list[str]:
    """Distinct prompts, so no two rows share a call."""
    return [f"{tag} prompt number {i}" for i in range(count)]


async def run_client(url: str, transport: str, in_flight: int, count: int, tag: str) -> tuple[float, float]:
    config = EndpointConfig(name="bench", api="openai", base_url=url + "/v1", task="chat",
                            max_concurrency=in_flight, max_retries=2, timeout=60.0)
    client = EndpointClient(config, transport=make_transport(transport))
    try:
        await answer_rows(client, prompts(min(count, 200), tag + "-warm"))  # connections and code paths warm
        rows = prompts(count, tag)
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        outcomes = await answer_rows(client, rows)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await client.aclose()
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise SystemExit(f"{len(failed)} rows failed, first: {failed[0].error}")
    assert outcomes[-1].value == simulated_answer(rows[-1])[0]
    return count / wall, cpu / count * 1e6


async def run_raw_aiohttp(url: str, in_flight: int, count: int, tag: str) -> tuple[float, float]:
    """The floor: a bare ClientSession with a semaphore, no retries, no flow control, no httpx objects."""
    import json
    endpoint = url + "/v1/chat/completions"

    async def one(session: aiohttp.ClientSession, gate: asyncio.Semaphore, prompt: str) -> str:
        body = {"model": "bench", "messages": [{"role": "user", "content": prompt}]}
        async with gate:
            async with session.post(endpoint, data=json.dumps(body).encode(),
                                    headers={"content-type": "application/json"}) as resp:
                return json.loads(await resp.read())["choices"][0]["message"]["content"]

    gate = asyncio.Semaphore(in_flight)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, gate, p) for p in prompts(min(count, 200), tag + "-warm")))
        rows = prompts(count, tag)
        gc.collect()
        cpu, wall = time.process_time(), time.perf_counter()
        answers = await asyncio.gather(*(one(session, gate, p) for p in rows))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert answers[-1] == simulated_answer(rows[-1])[0]
    return count / wall, cpu / count * 1e6


def median_run(repeat: int, make) -> tuple[float, float]:
    runs = [asyncio.run(make(i)) for i in range(repeat)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per measurement (default 5000)")
    parser.add_argument("--levels", default="1,64,256", help="in-flight levels, comma separated")
    parser.add_argument("--repeat", type=int, default=1, help="runs per cell; the median is shown")
    parser.add_argument("--transports", default=",".join(TRANSPORTS), help="transports to measure")
    parser.add_argument("--gc-threshold", type=int, default=0,
                        help="also measure aiohttp at 64 in flight with gc.set_threshold(N) (0: skip)")
    args = parser.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",") if v]
    transports = [t for t in args.transports.split(",") if t]
    count = args.requests

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{platform.system()}; {count} chat requests per cell, median of {args.repeat}")
    results: dict[tuple[str, int], tuple[float, float]] = {}
    with ServerProcess(latency_ms=0) as server:
        for transport in transports:
            for level in levels:
                tag = f"{transport}-{level}"
                results[transport, level] = median_run(
                    args.repeat, lambda i, t=transport, lv=level, tg=tag: run_client(server.url, t, lv, count,
                                                                                     f"{tg}-{i}"))
                rps, cpu = results[transport, level]
                print(f"  {transport:8} {level:4} in flight: {rps:9,.0f} req/s {cpu:8,.0f} us CPU/request",
                      flush=True)
        raw = median_run(args.repeat, lambda i: run_raw_aiohttp(server.url, 64, count, f"raw-{i}"))
        print(f"  raw aiohttp   64 in flight: {raw[0]:9,.0f} req/s {raw[1]:8,.0f} us CPU/request", flush=True)
        tuned = None
        if args.gc_threshold:
            default = gc.get_threshold()
            gc.set_threshold(args.gc_threshold, *default[1:])
            try:
                tuned = median_run(args.repeat, lambda i: run_client(server.url, "aiohttp", 64, count, f"gc-{i}"))
            finally:
                gc.set_threshold(*default)
            print(f"  aiohttp, gc threshold {args.gc_threshold}, 64 in flight: {tuned[0]:9,.0f} req/s "
                  f"{tuned[1]:8,.0f} us CPU/request", flush=True)

    print()
    print("| client | in flight | requests/s | CPU per request |")
    print("| --- | --- | --- | --- |")
    for (transport, level), (rps, cpu) in results.items():
        print(f"| EndpointClient + {transport} transport | {level} | {rps:,.0f} | {cpu:,.0f} us |")
    if tuned:
        print(f"| EndpointClient + aiohttp transport, gc threshold {args.gc_threshold} | 64 | {tuned[0]:,.0f} | "
              f"{tuned[1]:,.0f} us |")
    print(f"| raw aiohttp ClientSession (reference) | 64 | {raw[0]:,.0f} | {raw[1]:,.0f} us |")
    if "aiohttp" in transports and "httpx" in transports:
        print()
        print("| in flight | aiohttp / httpx requests/s | aiohttp / httpx CPU per request |")
        print("| --- | --- | --- |")
        for level in levels:
            a, h = results["aiohttp", level], results["httpx", level]
            print(f"| {level} | {a[0] / h[0]:.2f}x | {a[1] / h[1]:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
