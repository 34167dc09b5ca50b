"""One event loop and one connection pool per Python worker process, alive across Arrow batches and tasks.

Spark reuses Python workers (``spark.python.worker.reuse``, on by default), so the
loop thread and the clients cached here serve every batch and every task that lands
in the process: connections stay warm and flow control sees the whole process load.
A fork (Spark's daemon forks workers) gets a fresh runtime, never a copy of the parent's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
import threading
from typing import Any, TypeVar
from collections.abc import Coroutine

from ._client import EndpointClient
from .config import EndpointConfig

__all__ = ["WorkerRuntime", "worker_runtime"]

R = TypeVar("R")

#: Sockets a worker may want open: one per request in flight (``max_concurrency`` defaults to 1,024)
#: plus room for the rest. Many systems start processes with a soft limit of 1,024 files.
OPEN_FILES = 8192


def _raise_open_files(wanted: int) -> None:
    """Raise this process's soft limit on open files towards ``wanted`` (never above the hard limit)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: the limit stays as it was
        pass


class WorkerRuntime:
    def __init__(self) -> None:
        # Thousands of short-lived request objects a second make the default collector run
        # constantly; a higher first threshold cuts the client's CPU per request by about a third
        # (benchmarks/client_transport.py --gc-threshold). This process is a Spark worker of ours.
        gc.set_threshold(20000, 10, 10)
        _raise_open_files(OPEN_FILES)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="batch-io", daemon=True)
        self._thread.start()
        self._clients: dict[tuple[EndpointConfig, float], EndpointClient] = {}
        self._lock = threading.Lock()

    def client(self, config: EndpointConfig, rate_share: float = 1.0) -> EndpointClient:
        key = (config, rate_share)
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._clients[key] = EndpointClient(config, rate_share=rate_share, share_pace=True)
        return client

    def submit(self, coroutine: Coroutine[Any, Any, R]) -> concurrent.futures.Future[R]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        return self.submit(coroutine).result()

    def close(self) -> None:
        async def _close() -> None:
            for client in self._clients.values():
                await client.aclose()
        self.run(_close())
        self._clients.clear()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


_runtime: WorkerRuntime | None = None
_pid: int | None = None
_guard = threading.Lock()


def worker_runtime() -> WorkerRuntime:
    global _runtime, _pid
    with _guard:
        if _runtime is None or _pid != os.getpid():
            _runtime, _pid = WorkerRuntime(), os.getpid()
        return _runtime
