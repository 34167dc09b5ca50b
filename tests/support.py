"""What many test files share: fake clocks, one retry policy, the simulator reset, and small Spark helpers.

Import it as ``from support import ...`` (``tests/`` is on the path: pytest's rootdir-relative imports).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch.serve.settings import FIXED  # options that name the process itself: they cannot change while it runs

ROOT = Path(__file__).resolve().parents[1]
# The suite's JVMs (set for all of them in conftest.py) run small jobs on few cores: the quick compiler alone
# and a serial collector cost less CPU than the optimising compiler's work for code that runs a few times.
QUICK_JVM = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"

# ---------------------------------------------------------------- retry policy

# Endpoints in tests retry quickly: four retries with backoffs of 10 to 50 ms, a 10 s timeout. A file that
# needs other values writes only those: ``{**FAST, "max_retries": 2}``.
FAST: dict[str, Any] = dict(max_retries=4, initial_backoff=0.01, max_backoff=0.05, timeout=10.0)


# ---------------------------------------------------------------- a job file

# A small job spec as a user writes it; tests change one line of it and check the line an error names
# (the prompt is on line 8).
JOB_YAML = """\
job: broken
input:
  table: t
  key: id
outputs:
  answer:
    endpoint: job-chat
    prompt: "Hi {body}"
results:
  table: answers
usage:
  table: usage
"""


# ---------------------------------------------------------------- fake clocks

class Clock:
    """A clock for the code that takes one: it moves only when a test moves ``now``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeTime:
    """A clock and a sleep that never wait. ``advance``: whether sleeping moves the clock."""

    def __init__(self, advance: bool = True) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.advance = advance

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if self.advance:
            self.now += max(0.0, seconds)
        await asyncio.sleep(0)


class SteppedTime:
    """A clock that moves only when told to; ``sleep`` parks the caller until ``advance`` passes its deadline."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, asyncio.Future]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move the clock forward, waking sleepers in deadline order at their own deadlines."""
        target = self.now + seconds
        await settle()
        while self._timers and self._timers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = target
        await settle()


async def settle(rounds: int = 20) -> None:
    """Let every runnable task run until it blocks again (yields only; no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def run(coroutine):
    return asyncio.run(coroutine)


def poll(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    """Whether ``check()`` comes true within ``seconds`` of real time (asked every 20 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


# ---------------------------------------------------------------- the simulator



def restore(server, **settings: Any) -> dict:
    """Put a running ``batch.serve`` back as it started, then apply ``settings``, and zero its counters.

    Every option is sent: None (the simulator's default) for each one it shows, overlaid with what the
    process was started with (``ServerProcess(record=True, ...)``), overlaid with ``settings``. So nothing
    one test sets (a seed, a limit profile, a token) is still set for the next, and the fault draws start
    again from the seed. Returns the options the server now shows.
    """
    started = {k: v for k, v in server.options.items() if k not in FIXED}
    defaults = {k: None for k in server.configure() if k not in FIXED}
    shown = server.configure(**{**defaults, **started, **settings})
    server.reset()
    return shown


# ---------------------------------------------------------------- Spark helpers

def texts(spark, values, parts=1):
    """A one-column frame (``p string``); one partition by default, so every row is in one task and one
    Arrow batch."""
    return spark.createDataFrame([(v,) for v in values], "p string").coalesce(parts)


def answer(prompt, max_tokens=None):
    """The simulator's answer to ``prompt``; NULL for a NULL prompt."""
    from batch.serve.simulate import simulated_answer

    return None if prompt is None else simulated_answer(prompt, max_tokens)[0]


def failure(df) -> str:
    """The text of the error that collecting ``df`` raises."""
    with pytest.raises(Exception) as caught:
        df.collect()
    return str(caught.value)


def table(spark, name: str, rows: list, ddl: str = "id int, body string") -> None:
    """A fresh database holding one parquet table, ``name`` as ``db.table``, of ``rows`` with the schema ``ddl``."""
    db = name.split(".")[0]
    spark.sql(f"DROP DATABASE IF EXISTS {db} CASCADE")
    spark.sql(f"CREATE DATABASE {db}")
    spark.createDataFrame(rows, ddl).write.format("parquet").saveAsTable(name)


def tickets(spark, db: str, bodies: list[str | None], name: str = "tickets") -> None:
    """A fresh database ``db`` holding ``db.tickets`` (``id int, body string``): one row per body, ids from 0."""
    table(spark, f"{db}.{name}", list(enumerate(bodies)))


# ---------------------------------------------------------------- a job in a process of its own

def job_process(spec: Path, endpoints: Path, log: Path, *args: str) -> subprocess.Popen:
    """``python -m jobs run SPEC --quiet [ARGS]`` with the endpoints file ``endpoints``, in a new process session
    (so ``os.killpg(job.pid, ...)`` ends the job, its JVM and its Python workers), writing to ``log``. Its JVM
    takes this process's ``JDK_JAVA_OPTIONS`` (:data:`QUICK_JVM`, from conftest.py)."""
    env = dict(os.environ, BATCH_ENDPOINTS=str(endpoints), PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "jobs", "run", str(spec), "--quiet", *args], cwd=ROOT, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
