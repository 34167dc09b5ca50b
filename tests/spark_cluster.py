"""Spark beyond one process, on loopback: a standalone cluster and a Spark Connect server.

Both are started from PySpark's own launchers (``bin/spark-class``, ``sbin/start-connect-server.sh``),
so nothing beyond ``pip install pyspark[connect]`` and a JDK is needed. Logs, work directories and
pid files live in a directory the caller owns; every wait is bounded, and whatever does not stop
when asked is killed by its process id. Clients run in their own Python processes (``run_client``):
one interpreter cannot hold a local session, a cluster session and a Connect session side by side.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from collections.abc import Callable, Mapping

import httpx

import support

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK = "127.0.0.1"
# What the cluster and Connect tests ask of their endpoints.
FAST = {**support.FAST, "timeout": 20.0}
RATED_RPM = 1800  # 30 requests/s for the whole cluster or Connect server
RATED_ROWS = 120

QUICK_JVM = support.QUICK_JVM  # the quick compiler alone and a serial collector, for JVMs of a few minutes
# Variables that would turn a child Python into a Connect client, attach it to another JVM, or
# point it at another installation's settings.
_CLIENT_MARKERS = ("SPARK_REMOTE", "SPARK_CONNECT_MODE_ENABLED", "SPARK_CONNECT_MODE", "PYSPARK_GATEWAY_PORT",
                   "PYSPARK_GATEWAY_SECRET", "SPARK_ENV_LOADED", "SPARK_CONF_DIR")


def java_available() -> bool:
    return shutil.which("java") is not None or bool(os.environ.get("JAVA_HOME"))


def spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home

    return Path(_find_spark_home())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def spark_env(workdir: Path, extra: Mapping[str, str] | None = None, drop: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for Spark daemons and clients: loopback only, this Python, an empty conf dir.

    ``drop`` removes variables (a token, say) that a process must not inherit from the test run.
    """
    conf_dir = workdir / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_MARKERS and k not in drop}
    env.update({
        "SPARK_HOME": str(spark_home()),
        "SPARK_CONF_DIR": str(conf_dir),
        "SPARK_LOCAL_IP": LOOPBACK,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "JDK_JAVA_OPTIONS": QUICK_JVM,  # every JVM below: daemons, drivers, executors
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
    })
    env.update(extra or {})
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM, a bounded wait, then SIGKILL to the process group it leads (its executors and Python workers)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group was created for this process alone (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(timeout=10)


class StandaloneCluster:
    """A master and ``workers`` workers of ``cores`` cores each, all on 127.0.0.1.

    ``worker_env`` is added to the workers' environment only: executors, and the Python
    workers they start, inherit it; the Spark conf of an application never sees it.
    """

    def __init__(self, workdir: Path, *, workers: int = 2, cores: int = 1, memory: str = "1g",
                 worker_env: Mapping[str, str] | None = None, drop_env: tuple[str, ...] = (),
                 timeout: float = 90.0) -> None:
        self.workdir = Path(workdir)
        self.workers, self.cores, self.memory = workers, cores, memory
        self.worker_env, self.drop_env = dict(worker_env or {}), drop_env
        self.timeout = timeout
        self.port, self.ui_port = free_port(), free_port()
        self.master_url = f"spark://{LOOPBACK}:{self.port}"
        self.ui_url = f"http://{LOOPBACK}:{self.ui_port}"
        self._procs: list[subprocess.Popen] = []
        self._logs: list[Path] = []

    def _launch(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = self.workdir / f"{name}.log"
        self._logs.append(log)
        with open(log, "ab") as out:
            self._procs.append(subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *args], env=env, cwd=str(self.workdir),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def start(self, wait: bool = True) -> StandaloneCluster:
        """Start the master, wait for it, launch the workers; with ``wait``, also wait until they joined.

        Without ``wait`` a client can start its driver while the workers boot (call ``wait_workers``).
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = spark_env(self.workdir, {"SPARK_DAEMON_MEMORY": "256m"}, drop=self.drop_env)
        try:
            self._launch("master", ["org.apache.spark.deploy.master.Master", "--host", LOOPBACK,
                                    "--port", str(self.port), "--webui-port", str(self.ui_port)], env)
            self._wait(lambda s: s.get("status") == "ALIVE", "the master")
            worker_env = {**env, **self.worker_env}
            for i in range(self.workers):
                work = self.workdir / f"worker-{i}"
                work.mkdir(exist_ok=True)
                self._launch(f"worker-{i}", [
                    "org.apache.spark.deploy.worker.Worker", "--host", LOOPBACK, "--cores", str(self.cores),
                    "--memory", self.memory, "--work-dir", str(work), "--webui-port", str(free_port()),
                    self.master_url], worker_env)
            if wait:
                self.wait_workers()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_workers(self) -> None:
        self._wait(lambda s: s.get("aliveworkers", 0) >= self.workers, f"{self.workers} workers")

    def status(self) -> dict[str, Any]:
        return httpx.get(self.ui_url + "/json/", timeout=5).json()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            dead = [p for p in self._procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Spark daemon exited while waiting for {what}:\n{self.logs()}")
            try:
                if ready(self.status()):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready after {self.timeout:g} s:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{_tail(log)}" for log in self._logs)

    def stop(self) -> None:
        for proc in reversed(self._procs):  # workers first: they stop their executors
            _stop_process(proc)
        self._procs.clear()

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class ConnectServer:
    """``sbin/start-connect-server.sh`` on 127.0.0.1, state in ``workdir``, stopped by ``stop-connect-server.sh``."""

    CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"

    def __init__(self, workdir: Path, *, master: str = "local[2]", conf: Mapping[str, str] | None = None,
                 env: Mapping[str, str] | None = None, drop_env: tuple[str, ...] = (),
                 timeout: float = 120.0) -> None:
        self.workdir = Path(workdir)
        self.master, self.timeout = master, timeout
        self.port = free_port()
        self.url = f"sc://{LOOPBACK}:{self.port}"
        self.warehouse = self.workdir / "warehouse"
        self.conf = {
            "spark.connect.grpc.binding.address": LOOPBACK,
            "spark.connect.grpc.binding.port": str(self.port),
            "spark.ui.enabled": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.sql.warehouse.dir": str(self.warehouse),
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={self.workdir}",
            "spark.python.daemon.module": "batch._daemon",  # PySpark is pip-installed here: docs/cluster.md
            **(conf or {}),
        }
        self.env = spark_env(self.workdir, {"SPARK_LOG_DIR": str(self.workdir / "logs"),
                                            "SPARK_PID_DIR": str(self.workdir / "pids"),
                                            "SPARK_IDENT_STRING": "aiq", **(env or {})}, drop=drop_env)

    def _script(self, name: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(spark_home() / "sbin" / name), *args], env=self.env, cwd=str(self.workdir),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)

    @property
    def pid_file(self) -> Path:
        return self.workdir / "pids" / f"spark-aiq-{self.CLASS}-1.pid"

    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def logs(self) -> str:
        return "\n".join(f"--- {log.name}\n{_tail(log, 60)}" for log in sorted((self.workdir / "logs").glob("*")))

    def start(self) -> ConnectServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = ["--master", self.master]
        for key, value in self.conf.items():
            args += ["--conf", f"{key}={value}"]
        try:
            done = self._script("start-connect-server.sh", *args)
            if done.returncode != 0:
                raise RuntimeError(f"start-connect-server.sh failed ({done.returncode}):\n{done.stdout}{done.stderr}")
            deadline = time.monotonic() + self.timeout
            while time.monotonic() < deadline:
                pid = self.pid()
                if pid is not None and not _alive(pid):
                    raise RuntimeError(f"the Spark Connect server exited:\n{self.logs()}")
                try:
                    with socket.create_connection((LOOPBACK, self.port), timeout=1):
                        return self
                except OSError:
                    time.sleep(0.3)
            raise RuntimeError(f"the Spark Connect server did not listen within {self.timeout:g} s:\n{self.logs()}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        pid = self.pid()
        try:
            self._script("stop-connect-server.sh", timeout=30)
        except subprocess.TimeoutExpired:
            pass
        if pid is None:
            return
        deadline = time.monotonic() + 20
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __enter__(self) -> ConnectServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def run_client(script: Path, name: str, args: Mapping[str, Any], env: dict[str, str], *,
               timeout: float = 240.0, meanwhile: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run ``python script name`` with ``args`` as JSON on stdin; its JSON answer is the last stdout line.

    ``meanwhile`` runs while the client starts up (waiting for workers, say); if it fails, the client is stopped.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(script), name], stdin=subprocess.PIPE, stdout=out, stderr=err,
                                env=env, cwd=str(PROJECT_ROOT), text=True, start_new_session=True)
        try:
            proc.stdin.write(json.dumps(dict(args)))
            proc.stdin.close()
            if meanwhile is not None:
                meanwhile()
            proc.wait(timeout=timeout)
        finally:
            _stop_process(proc, timeout=5)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"client {name} exited {proc.returncode}:\n{stdout[-4000:]}\n{stderr[-8000:]}")
    return json.loads(lines[-1])


def client_main(clients: Mapping[str, Any]) -> None:
    """The other half of ``run_client``: read the arguments, run one client, print its answer as JSON."""
    name = sys.argv[1]
    args = json.loads(sys.stdin.read() or "{}")
    print(json.dumps(clients[name](**args), default=str), flush=True)


def rate_figures(per_second: list[int]) -> dict[str, float]:
    """Requests per second as the server counted them: the mean over whole seconds, and the peak.

    The first and last busy seconds are partial (the run starts and ends inside them), so the
    mean leaves them out when there are enough seconds in between.
    """
    busy = [i for i, n in enumerate(per_second) if n]
    if not busy:
        return {"requests": 0, "seconds": 0, "mean": 0.0, "peak": 0}
    window = per_second[busy[0]:busy[-1] + 1]
    inner = window[1:-1] if len(window) > 3 else window
    return {"requests": sum(window), "seconds": len(window), "mean": sum(inner) / len(inner), "peak": max(window)}
