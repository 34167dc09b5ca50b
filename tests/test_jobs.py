"""The job runner through real Spark, the real warehouse and a real ``batch.serve``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from batch.config import registry
from batch.errors import ConfigError
from batch.serve import simulated_answer
from jobs.cli import main
from jobs.runner import run_job
from jobs.spec import load_spec, parse_spec
from support import FAST, JOB_YAML, job_process, tickets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def job_endpoints(srv):
    registry.add("job-chat", api="openai", base_url=srv.url + "/v1", task="chat", **FAST)
    registry.add("job-embed", api="databricks", host=srv.url, task="embeddings", batch_size=16, **FAST)
    return srv


def _spec(db: str, **changes) -> dict:
    spec = {
        "job": "test-job",
        "input": {"table": f"{db}.tickets", "key": "id"},
        "outputs": {
            "answer": {"endpoint": "job-chat", "prompt": "Reply to: {body}", "modelParameters": {"max_tokens": 50}},
            "vec": {"endpoint": "job-embed", "request": "body"},
        },
        "results": {"table": f"{db}.answers"},
        "usage": {"table": f"{db}.usage"},
        "limits": {"max_error_fraction": 0.5},
        "commit_every": 40,
    }
    spec.update(changes)
    return spec


@pytest.mark.spark
def test_results_and_usage_tables_match_the_server(spark, job_endpoints):
    srv = job_endpoints
    bodies = [f"ticket number {i} about billing" for i in range(100)] + ["ticket number 1 about billing", None]
    tickets(spark, "jobs_a", bodies)
    spec = parse_spec(_spec("jobs_a"))
    before = time.time()
    result = run_job(spark, spec, prices={})
    after = time.time()
    assert result.ok, result.reasons
    answers = spark.table("jobs_a.answers").orderBy("id").collect()
    assert [r["id"] for r in answers] == list(range(102))
    assert answers[101]["answer__status"]["started_at"] is None  # a NULL request was never sent
    # Rows 1 and 100 ask the same: in one task one request answers both; in two tasks of a chunk both may ask,
    # or the later one finds the other's answer in the host memo (no attempt, never sent: docs/memo.md).
    sent = [r for r in answers[:101] if r["answer__status"]["attempts"]]
    assert {r["id"] for r in answers[:101]} - {r["id"] for r in sent} <= {1, 100} and len(sent) >= 100
    assert all(before <= r["answer__status"]["started_at"] <= after for r in sent)  # epoch seconds of the first send
    for row in answers[:101]:
        assert row["answer"] == simulated_answer(f"Reply to: {bodies[row['id']]}", 50)[0]
        assert len(row["vec"]) == 16 and row["ok"]
        assert row["answer__status"]["error"] is None
        if row not in sent:
            assert row["answer__status"]["started_at"] is None and row["answer__status"]["latency_ms"] is None
    assert answers[101]["answer"] is None and answers[101]["ok"]  # NULL request: NULL answer, no call
    stats = srv.stats()
    usage = {r["endpoint"]: r for r in spark.table("jobs_a.usage").collect()}
    assert set(usage) == {"job-chat", "job-embed"}
    assert sum(u["total_tokens"] for u in usage.values()) == stats["total_tokens"]
    assert sum(u["prompt_tokens"] for u in usage.values()) == stats["prompt_tokens"]
    assert sum(u["requests"] for u in usage.values()) == stats["answered"]
    chat = usage["job-chat"]
    assert (chat["rows_in"], chat["rows_answered"], chat["rows_failed"]) == (102, 101, 0)
    assert chat["requests"] == stats["by_task"]["chat"] <= 101  # a duplicate in the same task is asked once
    assert chat["latency_p50_ms"] is not None and chat["status"] == "succeeded"


@pytest.mark.spark
def test_row_errors_are_kept_and_only_failed_answers_them_again(spark, job_endpoints):
    bodies = [f"question {i}" for i in range(30)] + [f"[[flaky:1:400]] question {i}" for i in range(5)]
    tickets(spark, "jobs_b", bodies)
    spec = parse_spec(_spec("jobs_b", outputs={"answer": {"endpoint": "job-chat", "request": "body"}}))
    first = run_job(spark, spec, prices={})
    assert first.ok and first.rows_failed == 5
    failed = spark.table("jobs_b.answers").where("NOT ok").collect()
    assert len(failed) == 5
    assert all("HTTP 400" in r["answer__status"]["error"] for r in failed)
    assert all(r["answer__status"]["error_kind"] == "HTTPRequestError" for r in failed)
    calls_before = job_endpoints.stats()["requests"]
    again = run_job(spark, spec, only_failed=True, prices={})
    assert again.ok and again.rows_in == 5 and again.rows_failed == 0
    assert job_endpoints.stats()["requests"] - calls_before == 5
    table = spark.table("jobs_b.answers")
    assert table.count() == 35 and table.select("id").distinct().count() == 35
    assert table.where("NOT ok").count() == 0


@pytest.mark.spark
def test_error_fraction_limit_fails_the_run(spark, job_endpoints):
    tickets(spark, "jobs_c", [f"[[fail:400]] q{i}" for i in range(20)] + [f"q{i}" for i in range(20)])
    spec = parse_spec(_spec("jobs_c", outputs={"answer": {"endpoint": "job-chat", "request": "body"}},
                            limits={"max_error_fraction": 0.1}, commit_every=100))
    result = run_job(spark, spec, prices={})
    assert not result.ok
    assert "max_error_fraction" in result.reasons[0]
    usage = spark.table("jobs_c.usage").collect()
    assert usage[0]["status"] == "failed" and usage[0]["rows_failed"] == 20
    assert usage[0]["failed_by_kind"] == {"HTTPRequestError": 20}


@pytest.mark.spark
def test_overwrite_and_append_modes(spark, job_endpoints):
    tickets(spark, "jobs_d", [f"q{i}" for i in range(10)])
    spec = parse_spec(_spec("jobs_d", outputs={"answer": {"endpoint": "job-chat", "request": "body"}}))
    run_job(spark, spec, prices={})
    run_job(spark, parse_spec({**_spec("jobs_d", outputs={"answer": {"endpoint": "job-chat", "request": "body"}}),
                               "results": {"table": "jobs_d.answers", "mode": "append"}}), prices={})
    assert spark.table("jobs_d.answers").count() == 20
    run_job(spark, parse_spec({**_spec("jobs_d", outputs={"answer": {"endpoint": "job-chat", "request": "body"}}),
                               "results": {"table": "jobs_d.answers", "mode": "overwrite"}}), prices={})
    assert spark.table("jobs_d.answers").count() == 10


@pytest.mark.spark
def test_price_table_gives_estimated_cost(spark, job_endpoints, tmp_path):
    from jobs.usage import load_prices
    prices_file = tmp_path / "prices.yaml"
    prices_file.write_text("prices:\n  job-chat: {input: 1000000, output: 2000000}\n")
    tickets(spark, "jobs_e", ["one two three"])
    spec = parse_spec(_spec("jobs_e", outputs={"answer": {"endpoint": "job-chat", "request": "body"}}))
    run_job(spark, spec, prices=load_prices(prices_file))
    usage = spark.table("jobs_e.usage").collect()[0]
    assert usage["estimated_cost"] == pytest.approx(usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2)


# ---------------------------------------------------------------- spec errors, before Spark starts

def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("change, line, words", [
    (("    prompt: \"Hi {body}\"\n", "    prompt: \"Hi {body}\"\n    colour: blue\n"), 9, "unknown key 'colour'"),
    (("    endpoint: job-chat\n", "    endpoint: no-such-endpoint\n"), 7, "unknown endpoint 'no-such-endpoint'"),
    (("    prompt: \"Hi {body}\"\n", "    prompt: \"Hi {body}\"\n    modelParameters: {temperature: 9}\n"), 9,
     "INVALID_NUMERIC_PARAMETER"),
    (("    prompt: \"Hi {body}\"\n", "    prompt: \"Hi {body}\"\n    responseFormat: xml\n"), 9,
     "AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT"),
    (("  key: id\n", "  key: id\n  keys: [id]\n"), 5, "unknown key 'keys'"),
    (("  table: answers\n", "  table: answers\n  mode: upsert\n"), 11, "results.mode"),
    (("outputs:\n", "outputs\n"), None, "malformed YAML"),
])
def test_spec_errors_name_file_and_line(tmp_path, job_endpoints, change, line, words):
    path = _write(tmp_path, JOB_YAML.replace(*change))
    with pytest.raises(ConfigError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert words in message and str(path) in message
    if line is not None:
        assert f"{path}:{line}" in message


def test_cli_reports_a_spec_error_before_spark_starts(tmp_path):
    path = _write(tmp_path, JOB_YAML.replace("    endpoint: job-chat\n", "    endpoint: missing-endpoint\n"))
    done = subprocess.run([sys.executable, "-m", "jobs", "run", str(path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown endpoint 'missing-endpoint'" in done.stderr and f"{path}:7" in done.stderr
    assert "log4j" not in done.stderr + done.stdout  # Spark never started


@pytest.mark.parametrize("argv,words", [
    (["preview", "SPEC", "--rows", "-3"], "argument --rows: must be at least 1, got -3"),
    (["preview", "SPEC", "--rows", "0"], "argument --rows: must be at least 1, got 0"),
    (["run", "SPEC", "--max-rows", "many"], "argument --max-rows: expected a whole number, got 'many'"),
])
def test_row_counts_on_the_command_line_are_checked(argv, words, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.spark
def test_missing_column_is_reported_with_its_line(spark, job_endpoints, tmp_path):
    tickets(spark, "jobs_f", ["x"])
    path = _write(tmp_path, JOB_YAML.replace("table: t", "table: jobs_f.tickets").replace("{body}", "{bodyy}")
                  .replace("table: answers", "table: jobs_f.answers").replace("table: usage", "table: jobs_f.u"))
    with pytest.raises(ConfigError, match=r"\{bodyy\}, which is not an input column") as caught:
        run_job(spark, load_spec(path), prices={})
    assert f"{path}:8" in str(caught.value)


def test_cli_validate_accepts_the_demo_spec():
    assert main(["validate", str(ROOT / "conf" / "jobs" / "demo.yaml")]) == 0


def test_cli_names_the_endpoints_flag_when_its_file_is_missing(tmp_path, capsys):
    spec = str(ROOT / "conf" / "jobs" / "demo.yaml")
    assert main(["validate", spec, "--endpoints", str(tmp_path / "missing.yaml")]) == 2
    assert "--endpoints: file not found" in capsys.readouterr().err
    assert main(["validate", spec, "--endpoints", str(ROOT / "conf" / "endpoints.yaml")]) == 0


# ---------------------------------------------------------------- crash and resume

def _answered_rows(spark, warehouse: Path) -> list:
    files = warehouse / "crash.db" / "answers"
    if not files.exists():
        return []
    return spark.read.parquet(str(files)).select("id", "ok").collect()


@pytest.mark.spark
def test_resume_after_the_job_process_is_killed(spark, srv, tmp_path):
    """SIGKILL midway, then run again: every key once, and re-asked rows bounded by one chunk."""
    rows, chunk = 120, 30
    srv.configure(latency_ms=60)
    warehouse = tmp_path / "warehouse"
    data = tmp_path / "tickets.json"
    data.write_text("\n".join(f'{{"id": {i}, "body": "crash test prompt {i}"}}' for i in range(rows)))
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump({"endpoints": {"crash-chat": {
        "api": "openai", "base_url": srv.url + "/v1", "max_retries": 3, "initial_backoff": 0.01}}}))
    spec_path = tmp_path / "crash.yaml"
    spec_path.write_text(yaml.safe_dump({
        "job": "crash", "input": {"path": str(data), "format": "json", "key": "id"},
        "outputs": {"answer": {"endpoint": "crash-chat", "request": "body"}},
        "results": {"table": "crash.answers"}, "usage": {"table": "crash.usage"},
        "spark": {"master": "local[2]", "warehouse": str(warehouse)}, "commit_every": chunk,
        "limits": {"max_error_fraction": 0.0}}))
    (warehouse / "crash.db").mkdir(parents=True)
    first = job_process(spec_path, endpoints, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and first.poll() is None:
            if srv.stats()["answered"] >= rows // 2:
                break
            time.sleep(0.2)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    written = _answered_rows(spark, warehouse)
    assert 0 < len(written) < rows
    calls_before = dict(srv.prompts()["calls"])
    second = job_process(spec_path, endpoints, tmp_path / "second.log")
    assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    final = _answered_rows(spark, warehouse)
    ids = [r["id"] for r in final]
    assert sorted(ids) == list(range(rows)) and all(r["ok"] for r in final)
    calls = srv.prompts()["calls"]
    asked_twice = [p for p, n in calls.items() if n > 1]
    already_written = {f"crash test prompt {r['id']}" for r in written}
    assert not already_written & {p for p, n in calls.items() if n > calls_before.get(p, 0)}
    assert len(asked_twice) <= chunk  # only the chunk in flight when it was killed was asked again


@pytest.mark.spark
def test_job_runs_under_spark_submit(srv, tmp_path):
    from pyspark.find_spark_home import _find_spark_home
    data = tmp_path / "rows.json"
    data.write_text("\n".join(f'{{"id": {i}, "body": "submitted {i}"}}' for i in range(20)))
    endpoints = tmp_path / "endpoints.yaml"
    endpoints.write_text(yaml.safe_dump({"endpoints": {"submit-chat": {"api": "openai",
                                                                       "base_url": srv.url + "/v1"}}}))
    spec_path = tmp_path / "submit.yaml"
    spec_path.write_text(yaml.safe_dump({
        "job": "submitted", "input": {"path": str(data), "format": "json", "key": "id"},
        "outputs": {"answer": {"endpoint": "submit-chat", "request": "body"}},
        "results": {"table": "answers"}, "usage": {"table": "usage"}}))
    submit = Path(_find_spark_home()) / "bin" / "spark-submit"
    env = dict(os.environ, BATCH_ENDPOINTS=str(endpoints), PYSPARK_PYTHON=sys.executable,
               PYSPARK_DRIVER_PYTHON=sys.executable)
    done = subprocess.run([str(submit), "--master", "local[2]", "--conf", f"spark.sql.warehouse.dir={tmp_path}/wh",
                           str(ROOT / "jobs" / "__main__.py"), "run", str(spec_path), "--quiet"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "job submitted run" in done.stdout and "20 written" in done.stdout
    assert srv.stats()["answered"] == 20


@pytest.mark.spark
def test_literal_braces_in_a_prompt_template(spark, job_endpoints):
    with pytest.raises(ConfigError) as caught:
        parse_spec(_spec("jobs_braces", outputs={"answer": {
            "endpoint": "job-chat", "prompt": 'Reply as JSON like {"label": "x"} for: {body}'}}))
    message = str(caught.value)
    assert "'{\"label\": \"x\"}' in the prompt is not a column name" in message
    assert "a literal brace is written twice, as in Python's str.format: '{{' gives '{' and '}}' gives '}'" in message
    for template, lone in (("Hi {body", "{"), ("}{body}", "}"), ("{body}} and more", "}")):
        with pytest.raises(ConfigError, match=f"the prompt has a lone '{lone}'; a literal brace is written twice"):
            parse_spec(_spec("jobs_braces", outputs={"answer": {"endpoint": "job-chat", "prompt": template}}))
    tickets(spark, "jobs_braces", ["first ticket", "second {ticket}"])
    spec = parse_spec(_spec("jobs_braces", outputs={"answer": {
        "endpoint": "job-chat", "prompt": 'Reply as JSON like {{"label": "x"}} for: {body} {{body}}'}}))
    assert spec.outputs[0].template_columns() == ["body"]
    assert run_job(spark, spec, prices={}).ok
    answers = {r["id"]: r["answer"] for r in spark.table("jobs_braces.answers").collect()}
    assert answers == {i: simulated_answer(f'Reply as JSON like {{"label": "x"}} for: {body} {{body}}')[0]
                       for i, body in enumerate(["first ticket", "second {ticket}"])}


@pytest.mark.spark
def test_a_job_with_no_input_rows_leaves_empty_tables(spark, job_endpoints):
    tickets(spark, "jobs_empty", [])
    result = run_job(spark, parse_spec(_spec("jobs_empty")), prices={})
    assert result.ok and result.rows_in == 0 and job_endpoints.stats()["requests"] == 0
    answers, usage = spark.table("jobs_empty.answers"), spark.table("jobs_empty.usage")
    assert answers.count() == 0 and usage.count() == 0
    assert answers.columns == ["id", "answer", "answer__status", "vec", "vec__status", "ok", "run_id", "run_chunk",
                               "answered_at"]
    assert answers.schema["vec"].dataType.simpleString() == "array<float>"
    assert answers.schema["answer__status"].dataType.names == [
        "error", "error_kind", "attempts", "latency_ms", "started_at", "prompt_tokens", "completion_tokens",
        "total_tokens", "reasoning_tokens", "cached_tokens", "requests", "rate_limited", "fingerprint", "asked_in"]
    from jobs.tables import USAGE_SCHEMA
    assert [(f.name, f.dataType) for f in usage.schema] == [(f.name, f.dataType) for f in USAGE_SCHEMA]
    tickets(spark, "jobs_empty", ["now one ticket"])  # the next run fills the same tables
    again = run_job(spark, parse_spec(_spec("jobs_empty")), prices={})
    assert again.ok and again.rows_in == 1 and spark.table("jobs_empty.answers").count() == 1
    assert spark.table("jobs_empty.usage").count() == 2
