"""The run report: written by every run beside the usage table, its numbers from the run's own rows."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from batch.config import registry
from jobs.report import BINS, ReportData, _bin, render
from jobs.runner import run_job
from jobs.spec import parse_spec
from jobs.svg import PALETTE, bar_chart, line_chart, nice_ticks, range_bars, Series

from browser import colour_counts, hex_rgb, read_png, screenshot
from support import FAST, restore, tickets

ROOT = Path(__file__).resolve().parents[1]
ROWS = 60


def test_in_flight_is_the_overlap_of_each_request_with_each_bin():
    """Two requests from 0 s to 6 s and one from 3 s to 6 s over a 6 s run: 2 in flight, then 3."""
    rows = [dict(key=f"id={i}", output="a", endpoint="e", error=None, error_kind=None, attempts=1,
                 latency_ms=ms, started_at=100.0 + start, requests=1, rate_limited=0)
            for i, (start, ms) in enumerate([(0.0, 6000.0), (0.0, 6000.0), (3.0, 3000.0)])]
    rows.append(dict(rows[0], key="id=9", error="refused", error_kind="HTTPRequestError", attempts=3,
                     latency_ms=1500.0, started_at=100.0, rate_limited=2))
    data = ReportData()
    _bin(rows, data, started=100.0)
    assert data.seconds == 6.0 and len(data.edges) == BINS + 1
    flight = data.in_flight["e"]
    half = BINS // 2
    assert flight[:BINS // 4] == pytest.approx([3.0] * (BINS // 4))  # the failed one ran to 1.5 s
    assert flight[BINS // 4:half] == pytest.approx([2.0] * (half - BINS // 4))
    assert flight[half:] == pytest.approx([3.0] * half)
    assert sum(data.answers["e"]) * data.seconds / BINS == pytest.approx(4)
    assert sum(data.errors["HTTPRequestError"]) == 1 and sum(data.rate_limited) == 2 and sum(data.retries) == 2


def test_charts_have_axes_ticks_and_escaped_labels():
    assert nice_ticks(0, 37) == [0, 10, 20, 30, 40] and nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    chart = line_chart([Series("<a>", [(0, 1), (10, 3)]), Series("b", [(0, 2), (10, 0)])], title="T&T",
                       x_label="seconds", y_label="rows")
    assert chart.startswith("<svg") and "&lt;a&gt;" in chart and "<a>" not in chart and "T&amp;T" in chart
    assert chart.count("<polyline") == 2 and ">seconds</text>" in chart and ">rows</text>" in chart
    assert "no data" in range_bars([], [], title="x", x_label="", y_label="")
    bars = bar_chart(["e1", "e2"], [Series("cost", [0.5, 2.0])], title="cost", y_label="USD")
    assert bars.count("<rect") == 1 + 2 and ">e1</text>" in bars


@pytest.fixture(scope="module")
def ran(spark, server):
    """One run of a 60-row job, 30 rows a chunk, one row in ten refused by the endpoint."""
    registry.add("rep-chat", api="openai", base_url=server.url + "/v1", **{**FAST, "max_retries": 3})
    restore(server, latency_ms=30, latency_jitter_ms=40)
    bodies = [f"report row {i}" + (" [[fail:400]]" if i % 10 == 4 else "") for i in range(ROWS)]
    tickets(spark, "rep", bodies)
    spec = parse_spec({"job": "report-job", "input": {"table": "rep.tickets", "key": "id"},
                       "outputs": {"answer": {"endpoint": "rep-chat", "request": "body"}},
                       "results": {"table": "rep.answers"}, "usage": {"table": "rep.usage"},
                       "limits": {"max_error_fraction": 0.5}, "commit_every": 30})
    try:
        result = run_job(spark, spec, prices={})
    finally:
        restore(server)
    return result


@pytest.mark.spark
def test_every_run_writes_a_report_beside_the_usage_table(spark, ran):
    assert ran.ok and ran.rows_failed == ROWS // 10
    location = spark.sql("DESCRIBE TABLE EXTENDED rep.usage").where("col_name = 'Location'").first()["data_type"]
    report = Path(ran.report)
    assert report == Path(location.removeprefix("file:") + "_reports") / f"{ran.run_id}.html"
    html = report.read_text()
    for title in ("Answers per second", "Requests in flight", "Latency per request", "Errors by kind over time",
                  "429s and retries over time", "Tokens by endpoint", "Estimated cost by endpoint (USD)"):
        assert f"<title>{title}</title>" in html
    assert html.count("<svg") == 7 and "no data" not in html
    answered = spark.table("rep.answers").collect()
    failed = sorted(r["id"] for r in answered if not r["ok"])
    assert failed == [i for i in range(ROWS) if i % 10 == 4]
    listed = html.split("<h2>Failed answers")[1]
    for i in failed:
        assert f"<td>id={i}</td><td>answer</td><td>rep-chat</td>" in listed
    slowest = max(answered, key=lambda r: r["answer__status"]["latency_ms"])
    first = html.split("<h2>Slowest answers</h2>")[1].split("</tr>")[1]
    assert f"<td>id={slowest['id']}</td>" in first
    assert f"<b>{ROWS:,}</b>" in html and f"<b>{ROWS // 10:,}</b>" in html and "HTTPRequestError" in html


@pytest.mark.spark
def test_report_renders_in_a_browser(ran, tmp_path):
    png = screenshot(Path(ran.report), tmp_path / "report.png", 1280, 1100)
    width, height, rows = read_png(png)
    colours = colour_counts(rows)
    # answers/s and in flight, latency and errors in blue; retries' and tokens' second series in orange
    assert colours[hex_rgb(PALETTE[0])] > 5000 and colours[hex_rgb(PALETTE[1])] > 200
    for x0, x1 in ((0, width // 2), (width // 2, width)):  # the first row of charts is drawn, left and right
        assert len({p[:3] for row in rows[200:420] for p in row[x0:x1]}) > 20
    if os.environ.get("UPDATE_DOCS_PICTURES"):
        shutil.copy(png, ROOT / "docs" / "report.png")


def test_render_without_rows_says_so():
    class Result:
        run_id, status, rows_in, rows_failed, usage, reasons = "r1", "succeeded", 0, 0, [], []
        started = ended = None

    spec = type("Spec", (), {"name": "empty", "source": "<job>", "results_table": "a.b", "usage_table": "a.u"})()
    html = render(spec, Result(), ReportData())
    assert html.count("<svg") == 7 and "no errors" in html and "<h2>Failed answers</h2><p class=\"note\">none" in html
