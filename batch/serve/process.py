"""Run the local endpoint in its own process, as tests and benchmarks need it.

A separate process keeps the server's event loop and CPU apart from the
client under test, so measured throughput and latency belong to the client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from .cli import READY_PREFIX
from .settings import SECRET_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[2]
OUTPUT_LIMIT = 1 << 20


def _command(options: dict[str, Any]) -> list[str]:
    command = [sys.executable, "-m", "batch.serve"]
    for name, value in options.items():
        if name in SECRET_ENV or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            command.append(flag)
        else:
            command += [flag, ",".join(value) if isinstance(value, (list, tuple)) else str(value)]
    return command


def _environment(options: dict[str, Any]) -> dict[str, str]:
    """Secrets travel in the environment so they never show in the process list."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    for name, variable in SECRET_ENV.items():
        env.pop(variable, None)
        if options.get(name):
            env[variable] = str(options[name])
    return env


class ServerProcess:
    """``python -m batch.serve`` in a subprocess, with admin calls over HTTP.

    Options are the server's option names with underscores, for example
    ``ServerProcess(latency_ms=5, fault_rate=0.1, record=True)``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, ready_timeout: float = 30.0, **options: Any):
        self.options = {"host": host, "port": port, **options}
        self.ready_timeout = ready_timeout
        self.url = ""
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._admin: httpx.Client | None = None
        self._lines: list[str] = []
        self._size = 0
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._returncode: int | None = None

    def start(self) -> ServerProcess:
        """Start the child process and wait until it says it is listening; a second call does nothing."""
        if self._proc is not None:
            return self
        self._proc = subprocess.Popen(
            _command(self.options), env=_environment(self.options), cwd=str(PROJECT_ROOT),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._drain, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        self._wait_ready()
        self._admin = httpx.Client(base_url=self.url, timeout=30.0)
        return self

    def _drain(self, stream: Any) -> None:
        """Keep reading so a chatty server never blocks on a full pipe."""
        for line in stream:
            if not self._ready.is_set() and line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX):].strip()
                self.port = int(self.url.rsplit(":", 1)[1])
                self._ready.set()
            if self._size < OUTPUT_LIMIT:
                self._lines.append(line)
                self._size += len(line)
        stream.close()
        self._ready.set()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.05):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"batch.serve not ready after {self.ready_timeout} s:\n{self.output()}")
        if not self.url:
            self.stop()
            raise RuntimeError(f"batch.serve exited before listening:\n{self.output()}")

    @property
    def returncode(self) -> int | None:
        """The exit status once stopped; None while running or never started."""
        return self._returncode

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far (first MiB)."""
        return "".join(self._lines)

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        if self._admin is None:
            raise RuntimeError("the server is not running")
        response = self._admin.request(method, path, json=payload)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict:
        """``GET /_admin/stats``: requests, 429s, faults, tokens and in-flight counts since the last reset."""
        return self._call("GET", "/_admin/stats")

    def configure(self, **options: Any) -> dict:
        """Change options while it runs (None: the option's default); returns every option, secrets masked.
        Raises httpx.HTTPStatusError (400) naming a wrong value."""
        return self._call("POST", "/_admin/config", options)

    def reset(self) -> None:
        """Zero the counters and recordings (the options stay as they are)."""
        self._call("POST", "/_admin/reset")

    def prompts(self) -> dict:
        """``GET /_admin/prompts`` (with ``record=True``): calls and answers per prompt text."""
        return self._call("GET", "/_admin/prompts")

    def bodies(self) -> list:
        """``GET /_admin/bodies`` (with ``record=True``): the last 200 request bodies, oldest first."""
        return self._call("GET", "/_admin/bodies")

    def stop(self) -> None:
        """Stop the child process (terminate, then kill after a bound); a second call does nothing."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        proc, self._proc = self._proc, None
        if proc is not None:
            self._returncode = stop_process(proc, self._reader)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stop_process(proc: subprocess.Popen, reader: threading.Thread | None = None) -> int:
    """Terminate, then kill if it has not ended within 10 s; wait for the thread reading its output.
    Returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if reader is not None:
        reader.join(timeout=5)
    return proc.returncode
