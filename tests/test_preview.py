"""``python -m jobs preview`` on the demo job, through real Spark and two real ``batch.serve`` endpoints."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from html import escape
from pathlib import Path

import pytest
import yaml

from batch.config import registry
from batch.errors import ConfigError
from batch.serve import ServerProcess, simulated_answer
from jobs.cli import main
from jobs.preview import load_variants, run_preview
from jobs.spec import load_spec
from jobs.svg import PALETTE

import support
from browser import colour_counts, hex_rgb, read_png, screenshot

ROOT = Path(__file__).resolve().parents[1]
FAST = {**support.FAST, "max_retries": 2}
ROWS, TABLE_ROWS = 20, 300
PRICES = {"pv-chat": {"input": 0.15, "output": 0.60}, "pv-chat-large": {"input": 3.0, "output": 15.0},
          "pv-embed": {"input": 0.02}}
SCRIPT = '<script>alert("x")</script>'

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def large():
    """The second endpoint: a server of its own, so its requests and tokens are counted apart."""
    with ServerProcess(latency_ms=5, record=True) as server:
        yield server


@pytest.fixture(scope="module")
def demo(spark, server, large, tmp_path_factory):
    """The demo job (conf/jobs/demo.yaml) on the 300 sample tickets, its endpoints renamed onto the test servers.
    Tickets whose id ends in 7 are refused by the endpoint (400); those ending in 3 carry markup."""
    from pyspark.sql import functions as F

    work = tmp_path_factory.mktemp("preview")
    registry.add("pv-chat", api="openai", base_url=server.url + "/v1", **FAST)
    registry.add("pv-chat-large", api="openai", base_url=large.url + "/v1", requests_per_minute=600, **FAST)
    registry.add("pv-embed", api="databricks", host=server.url, task="embeddings", batch_size=32, **FAST)
    spark.sql("DROP DATABASE IF EXISTS pv CASCADE")
    spark.sql("CREATE DATABASE pv")
    tickets = spark.read.option("header", True).csv(str(ROOT / "conf" / "samples" / "support_tickets.csv"))
    body = (F.when(F.col("ticket_id").endswith("7"), F.concat("body", F.lit(" [[fail:400]]")))
            .when(F.col("ticket_id").endswith("3"), F.concat("body", F.lit(" " + SCRIPT))).otherwise(F.col("body")))
    tickets.withColumn("body", body).write.format("parquet").saveAsTable("pv.support_tickets")
    spec = yaml.safe_load((ROOT / "conf" / "jobs" / "demo.yaml").read_text())
    spec["input"]["table"] = "pv.support_tickets"
    spec["results"]["table"], spec["usage"]["table"] = "pv.ticket_answers", "pv.ai_usage"
    for output, endpoint in (("summary", "pv-chat"), ("triage", "pv-chat"), ("embedding", "pv-embed")):
        spec["outputs"][output]["endpoint"] = endpoint
    (work / "prices.yaml").write_text(yaml.safe_dump({"prices": PRICES}))
    spec["prices"] = str(work / "prices.yaml")
    spec["spark"] = {"warehouse": str(work / "warehouse")}
    path = work / "demo.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    tickets = {r["ticket_id"]: r.asDict() for r in spark.table("pv.support_tickets").collect()}
    return dict(path=path, spec=spec, work=work, tickets=tickets)


def _sample_ids(spark) -> list[str]:
    """The sample, as the preview promises it: the first rows in the order of a hash of the key."""
    from pyspark.sql import functions as F
    rows = spark.table("pv.support_tickets").orderBy(F.xxhash64("ticket_id"), "ticket_id").limit(ROWS).collect()
    return [r["ticket_id"] for r in rows]


def _prompt(demo, ticket: str, output: str = "summary") -> str:
    return demo["spec"]["outputs"][output]["prompt"].format(**demo["tickets"][ticket])


@pytest.fixture(scope="module")
def previewed(spark, demo, server, large):
    """One ``python -m jobs preview ... --endpoint pv-chat --endpoint pv-chat-large`` through the CLI."""
    support.restore(server)
    support.restore(large)
    out = io.StringIO()  # capsys is per test; the preview is run once for the module
    with contextlib.redirect_stdout(out):
        code = main(["preview", str(demo["path"]), "--rows", str(ROWS), "--endpoint", "pv-chat",
                     "--endpoint", "pv-chat-large"])
    text = out.getvalue()
    page = Path(text.strip().splitlines()[-1].split("page: ", 1)[1])
    return dict(code=code, text=text, page=page, html=page.read_text(), main_calls=server.prompts()["calls"],
                large_calls=large.prompts()["calls"])


def test_preview_page_shows_the_sample_side_by_side(spark, demo, previewed):
    assert previewed["code"] == 0
    html, ids = previewed["html"], _sample_ids(spark)
    warehouse = Path(spark.conf.get("spark.sql.warehouse.dir").removeprefix("file:"))
    assert previewed["page"] == warehouse / "previews" / "support-ticket-triage.html"  # default: beside the tables
    assert len(set(ids)) == ROWS and sum(1 for t in demo["tickets"] if f"ticket_id = {t}<" in html) == ROWS
    for ticket in ids:
        assert f"ticket_id = {escape(ticket)}<" in html
    assert html.count('<div class="row">') == ROWS
    # Both variants in every row's grid, each answer escaped, errors as errors
    assert "<th>pv-chat</th><th>pv-chat-large</th>" in html
    assert SCRIPT not in html and escape(SCRIPT) in html
    failing = [t for t in ids if t.endswith("7")]
    assert failing, "the sample should hold a ticket the endpoint refuses"
    # refused: summary and triage in both variants, and the embedding (shown under both)
    assert html.count('<div class="error"><span class="kind">') == 6 * len(failing)
    for ticket in ids:
        if not ticket.endswith("7"):
            assert escape(simulated_answer(_prompt(demo, ticket), 24)[0]) in html
    # Nothing written to the results or usage tables
    assert not spark.catalog.tableExists("pv.ticket_answers") and not spark.catalog.tableExists("pv.ai_usage")


def test_preview_asks_each_variant_once_per_row(spark, demo, previewed):
    """Each chat variant asks its own server each prompt once; the embedding output is the same in both
    variants, so it is asked once, of the first server only."""
    ids = _sample_ids(spark)
    chat = [_prompt(demo, t, o) for t in ids for o in ("summary", "triage")]
    embeds = {_prompt(demo, t, "embedding") for t in ids}
    for stats in (previewed["main_calls"], previewed["large_calls"]):
        assert all(stats.get(p) == 1 for p in chat), {p: stats.get(p) for p in chat if stats.get(p) != 1}
    assert set(previewed["large_calls"]) == set(chat)
    assert embeds <= set(previewed["main_calls"])


def test_projected_cost_and_time_follow_the_sample_and_the_limits(spark, demo, previewed):
    base, variants, _ = load_variants(demo["path"], ["pv-chat", "pv-chat-large"])
    preview = run_preview(spark, base, variants, ROWS)
    scale = TABLE_ROWS / ROWS
    for variant, chat_price in (("pv-chat", PRICES["pv-chat"]), ("pv-chat-large", PRICES["pv-chat-large"])):
        answers = [a[(variant, o)] for a in preview.answers for o in ("summary", "triage")]
        embeds = [a[(variant, "embedding")] for a in preview.answers]
        expected = scale * (sum(a.prompt_tokens for a in answers) * chat_price["input"] +
                            sum(a.completion_tokens for a in answers) * chat_price["output"] +
                            sum(a.prompt_tokens for a in embeds) * PRICES["pv-embed"]["input"]) / 1e6
        assert preview.projections[variant].cost == pytest.approx(expected, rel=1e-3)
        assert preview.table_rows == TABLE_ROWS
    large = preview.projections["pv-chat-large"]
    # 600 chat requests for the table at requests_per_minute 600: a minute, plus the embeddings' few requests
    assert large.requests == pytest.approx(2 * TABLE_ROWS + TABLE_ROWS / 32)
    assert 60.0 <= large.seconds < 61.0 and "pv-chat-large: requests_per_minute 600" in large.bounds
    assert preview.projections["pv-chat"].seconds < large.seconds
    html = previewed["html"]
    for variant in ("pv-chat", "pv-chat-large"):
        assert f"{variant}: whole table</span><b>$" in html
    assert "Projected cost, whole table" in html and "Latency per request (sample)" in html
    text = previewed["text"]
    assert f"preview of job support-ticket-triage: {ROWS} of {TABLE_ROWS} rows (stable sample), 2 variant(s)" in text
    assert f"summary / pv-chat-large: {simulated_answer(_prompt(demo, _sample_ids(spark)[0]), 24)[0][:40]}" in text


def test_prompt_variants_from_the_spec(spark, demo, server, tmp_path):
    spec = dict(demo["spec"])
    spec["preview"] = {"rows": 5, "variants": {"terse": {"summary": {"prompt": "In one line: {subject}",
                                                                     "modelParameters": {"max_tokens": 6}}}}}
    path = tmp_path / "variants.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    base, variants, rows = load_variants(path)
    assert [v.name for v in variants] == ["spec", "terse"] and rows == 5
    assert variants[1].changes == ("summary.prompt = In one line: {subject}", "summary.modelParameters = "
                                   "{'max_tokens': 6}")
    preview = run_preview(spark, base, variants, rows)
    assert len(preview.rows) == 5 and [r["ticket_id"] for r in preview.rows] == _sample_ids(spark)[:5]
    assert load_spec(path).outputs == base.outputs  # the same spec still runs: a run ignores its variants
    for row, answers in zip(preview.rows, preview.answers):
        assert answers[("terse", "summary")].value == simulated_answer(f"In one line: {row['subject']}", 6)[0]
        assert answers[("terse", "triage")] is answers[("spec", "triage")]  # unchanged: asked once


def test_variant_errors_name_the_file_and_line(demo, tmp_path):
    spec = dict(demo["spec"])
    spec["preview"] = {"variants": {"odd": {"sumary": {"endpoint": "pv-chat"}}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "sumary" in text)
    with pytest.raises(ConfigError, match=rf"unknown key 'sumary' in 'preview.variants.odd'.*bad.yaml:{line}\)"):
        load_variants(path)
    spec["preview"] = {"variants": {"odd": {"summary": {"modelParameters": {"max_tokens": -1}}}}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    line = max(i for i, text in enumerate(path.read_text().splitlines(), 1) if "modelParameters" in text)
    with pytest.raises(ConfigError, match=rf"preview variant 'odd': output 'summary'.*bad.yaml:{line}\)"):
        load_variants(path)
    with pytest.raises(ConfigError, match=r"--endpoint nowhere-chat: .*nowhere-chat"):
        load_variants(demo["path"], ["nowhere-chat"])
    with pytest.raises(ConfigError, match=r"--endpoint vec=pv-chat: no output named 'vec'"):
        load_variants(demo["path"], ["vec=pv-chat"])


def test_preview_page_renders_in_a_browser(previewed, tmp_path):
    png = screenshot(previewed["page"], tmp_path / "preview.png", 1280, 900)
    width, height, rows = read_png(png)
    assert (width, height) == (1280, 900)
    colours = colour_counts(rows)
    # The charts' bars (cost, time, latency) are drawn in the palette's first two colours, used nowhere else
    assert colours[hex_rgb(PALETTE[0])] > 2000 and colours[hex_rgb(PALETTE[1])] > 2000
    assert len(colours) > 50  # text and anti-aliasing, not a blank page
    if os.environ.get("UPDATE_DOCS_PICTURES"):
        shutil.copy(png, ROOT / "docs" / "preview.png")
