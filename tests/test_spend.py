"""Spend: the estimate before a run, max_spend during it, incremental reruns and tokens counted as billed,
through real Spark and real HTTP against batch.serve."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from batch.config import registry
from batch.serve import simulate as sim
from batch._wire import Usage
from jobs.summary import summary
from jobs.estimate import describe, estimate_job
from jobs.runner import run_job
from jobs.spec import load_spec, parse_spec
from jobs.usage import Price, load_prices
from support import FAST

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def spend_srv(srv):
    registry.add("sp-chat", api="openai", base_url=srv.url + "/v1", task="chat", **FAST)
    registry.add("sp-embed", api="openai", base_url=srv.url + "/v1", task="embeddings", batch_size=8, **FAST)
    return srv


def _tickets(spark, db: str, bodies: list[str], fresh: bool = True) -> None:
    if fresh:
        spark.sql(f"DROP DATABASE IF EXISTS {db} CASCADE")
        spark.sql(f"CREATE DATABASE {db}")
    spark.createDataFrame(list(enumerate(bodies)), "id int, body string").write.mode("overwrite").saveAsTable(
        f"{db}.tickets_next" if not fresh else f"{db}.tickets")
    if not fresh:  # swap in the edited input (a table cannot be overwritten while it is read)
        spark.sql(f"DROP TABLE {db}.tickets")
        spark.sql(f"ALTER TABLE {db}.tickets_next RENAME TO {db}.tickets")


def _spec(db: str, **changes) -> dict:
    spec = {"job": "spend-job", "input": {"table": f"{db}.tickets", "key": "id"},
            "outputs": {"answer": {"endpoint": "sp-chat", "prompt": "Reply to: {body}",
                                   "modelParameters": {"max_tokens": 40}}},
            "results": {"table": f"{db}.answers"}, "usage": {"table": f"{db}.usage"},
            "limits": {"max_error_fraction": 0.5}, "commit_every": 20}
    spec.update(changes)
    return spec


@pytest.mark.spark
def test_the_demo_estimate_is_within_a_quarter_of_the_spend(spark, srv, capsys):
    for name in ("demo-chat", "demo-embed"):
        config = registry.get(name)
        registry.add(name, config.with_overrides(base_url=srv.url + "/v1") if config.api == "openai"
                     else config.with_overrides(host=srv.url))
    spec = load_spec(ROOT / "conf" / "jobs" / "demo.yaml")
    spec = dataclasses.replace(spec, input=dataclasses.replace(spec.input, table="spend_demo.support_tickets"),
                               results_table="spend_demo.answers", usage_table="spend_demo.usage")
    spark.sql("DROP DATABASE IF EXISTS spend_demo CASCADE")
    spark.sql("CREATE DATABASE spend_demo")
    spark.read.option("header", True).csv(str(ROOT / "conf" / "samples" / "support_tickets.csv")).write.saveAsTable(
        "spend_demo.support_tickets")
    prices = load_prices(ROOT / "conf" / "prices.yaml")
    estimate = estimate_job(spark, spec, sample=8, prices=prices)
    print(describe(spec, estimate))
    assert estimate.rows == 300 and all(o.sampled == 8 for o in estimate.outputs)
    assert all(not o.exact and "approximation" in o.tokenizer for o in estimate.outputs)  # demo models: no tokenizer
    result = run_job(spark, spec, prices=prices)
    assert result.ok, result.reasons
    print(summary(spec, result, 0.0))
    print(f"estimate ${estimate.cost_point:.6f}, spend ${result.spend:.6f}")
    assert result.spend == pytest.approx(sum(u.estimated_cost for u in result.usage))
    assert abs(estimate.cost_point - result.spend) <= 0.25 * result.spend
    assert "spend: $" in capsys.readouterr().out


@pytest.mark.spark
def test_max_spend_stops_at_a_chunk_boundary_and_the_rerun_answers_every_key_once(spark, spend_srv):
    srv = spend_srv
    bodies = [f"ticket {i} about a late parcel" for i in range(100)]
    _tickets(spark, "sp_limit", bodies)
    prices = {"sp-chat": Price(input=1000.0, output=1000.0)}  # a tenth of a cent a token
    spec = parse_spec(_spec("sp_limit", limits={"max_spend": 1.0}))
    first = run_job(spark, spec, prices=prices)
    assert first.stopped and not first.ok and "max_spend 1.0" in first.reasons[0]
    assert 0 < first.rows_in < 100 and first.rows_in % 20 == 0 and first.spend <= 1.0
    assert "stopped before it (resumable" in first.reasons[0]
    assert "limit: max_spend" in summary(spec, first, 1.0)
    assert spark.table("sp_limit.answers").count() == first.rows_in
    usage = spark.table("sp_limit.usage").collect()
    assert usage[0]["status"] == "stopped" and usage[0]["estimated_cost"] == pytest.approx(first.spend)
    second = run_job(spark, parse_spec(_spec("sp_limit")), prices=prices)
    assert second.ok and second.rows_in == 100 - first.rows_in
    table = spark.table("sp_limit.answers")
    assert table.count() == 100 and table.select("id").distinct().count() == 100 and table.where("NOT ok").count() == 0
    calls = srv.prompts()["calls"]
    assert sorted(calls) == sorted(f"Reply to: {b}" for b in bodies) and set(calls.values()) == {1}


@pytest.mark.spark
def test_an_estimate_above_max_spend_asks_nothing(spark, spend_srv):
    _tickets(spark, "sp_refuse", [f"ticket {i}" for i in range(30)])
    spec = parse_spec(_spec("sp_refuse", limits={"max_spend": 0.001}))
    result = run_job(spark, spec, prices={"sp-chat": Price(input=1000.0, output=1000.0)})
    assert result.stopped and "nothing was asked" in result.reasons[0]
    assert spend_srv.stats()["requests"] == 0


@pytest.mark.spark
def test_a_rerun_asks_only_what_changed(spark, spend_srv):
    srv = spend_srv
    bodies = [f"parcel {i} is late" for i in range(30)]
    _tickets(spark, "sp_inc", bodies)
    outputs = {"answer": {"endpoint": "sp-chat", "prompt": "Reply to: {body}"},
               "vec": {"endpoint": "sp-embed", "request": "body"}}
    first = run_job(spark, parse_spec(_spec("sp_inc", outputs=outputs)), prices={})
    assert first.ok and first.rows_by_category["new"] == 30
    vectors = {r["id"]: r["vec"] for r in spark.table("sp_inc.answers").collect()}

    srv.reset()
    unchanged = run_job(spark, parse_spec(_spec("sp_inc", outputs=outputs)), prices={})
    assert unchanged.rows_by_category == {"new": 0, "changed": 0, "failed": 0, "unchanged": 30}
    assert srv.stats()["requests"] == 0 and unchanged.rows_in == 0

    edited = {**outputs, "answer": {"endpoint": "sp-chat", "prompt": "Answer politely: {body}"}}
    template = run_job(spark, parse_spec(_spec("sp_inc", outputs=edited)), prices={})
    stats = srv.stats()
    assert template.rows_by_category["changed"] == 30
    assert stats["by_task"]["chat"] == 30 and stats["by_task"]["embeddings"] == 0  # only that output's rows
    table = {r["id"]: r for r in spark.table("sp_inc.answers").collect()}
    assert len(table) == 30 and all(table[i]["vec"] == vectors[i] for i in range(30))  # carried over
    assert table[3]["answer"] == sim.simulated_answer("Answer politely: parcel 3 is late")[0]
    # the usage of this run is what this run asked, not the embeddings it carried over
    usage = {r["endpoint"]: r for r in spark.table("sp_inc.usage").where(f"run_id = '{template.run_id}'").collect()}
    assert set(usage) == {"sp-chat"} and usage["sp-chat"]["requests"] == 30
    assert usage["sp-chat"]["prompt_tokens"] == stats["prompt_tokens"]
    assert usage["sp-chat"]["completion_tokens"] == stats["completion_tokens"]

    srv.reset()
    bodies_now = [b + " (edited)" if i % 3 == 0 else b for i, b in enumerate(bodies)]
    _tickets(spark, "sp_inc", bodies_now, fresh=False)
    rows = run_job(spark, parse_spec(_spec("sp_inc", outputs=edited)), prices={})
    stats = srv.stats()
    assert rows.rows_by_category == {"new": 0, "changed": 10, "failed": 0, "unchanged": 20}
    assert stats["by_task"]["chat"] == 10 and stats["inputs_received"] - stats["by_task"]["chat"] == 10
    usage = {r["endpoint"]: r for r in spark.table("sp_inc.usage").where(f"run_id = '{rows.run_id}'").collect()}
    assert sum(u["prompt_tokens"] + u["completion_tokens"] for u in usage.values()) == \
        stats["prompt_tokens"] + stats["completion_tokens"]
    assert {e: u["rows_answered"] for e, u in usage.items()} == {"sp-chat": 10, "sp-embed": 10}
    edited_rows = [bodies_now[i] for i in range(0, 30, 3)]
    assert set(srv.prompts()["calls"]) == {f"Answer politely: {b}" for b in edited_rows} | set(edited_rows)
    assert spark.table("sp_inc.answers").count() == 30

    srv.reset()
    _tickets(spark, "sp_inc", bodies_now[:25], fresh=False)
    resume = run_job(spark, parse_spec(_spec("sp_inc", outputs=edited)), prices={})
    assert resume.rows_removed == 0 and spark.table("sp_inc.answers").count() == 30  # resume keeps them
    synced = run_job(spark, parse_spec({**_spec("sp_inc", outputs=edited),
                                        "results": {"table": "sp_inc.answers", "mode": "sync"}}), prices={})
    assert synced.rows_removed == 5 and synced.rows_by_category["unchanged"] == 25
    assert sorted(r["id"] for r in spark.table("sp_inc.answers").collect()) == list(range(25))
    assert srv.stats()["requests"] == 0
    assert "5 removed" in summary(parse_spec(_spec("sp_inc", outputs=edited)), synced, 1.0)


@pytest.mark.spark
def test_billed_tokens_of_unusable_answers_reach_the_usage_table(spark, spend_srv):
    srv = spend_srv
    bodies = ([f"plain question {i}" for i in range(6)] + [f"[[shape:refusal]] question {i}" for i in range(3)]
              + [f"[[shape:cut]] question {i}" for i in range(2)] + [f"[[shape:reasoning]] question {i}"
                                                                      for i in range(4)])
    _tickets(spark, "sp_billed", bodies)
    outputs = {"answer": {"endpoint": "sp-chat", "request": "body", "modelParameters": {"max_tokens": 30},
                          "responseFormat": "STRUCT<reply: STRING>"}}
    result = run_job(spark, parse_spec(_spec("sp_billed", outputs=outputs, limits={"max_error_fraction": 1.0})),
                     prices={"sp-chat": Price(input=1.0, output=2.0, reasoning=4.0)})
    assert result.ok and result.rows_failed == 9
    stats = srv.stats()
    usage = spark.table("sp_billed.usage").collect()[0]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (stats["prompt_tokens"], stats["completion_tokens"])
    assert usage["total_tokens"] == stats["total_tokens"]
    assert usage["reasoning_tokens"] == 4 * 30 and usage["cached_tokens"] == 0
    rows = {r["id"]: r["answer__status"] for r in spark.table("sp_billed.answers").collect()}
    refused = rows[6]
    assert "refused" in refused["error"] and refused["completion_tokens"] == sim.count_tokens(sim.REFUSAL)
    assert refused["prompt_tokens"] == sim.count_tokens(bodies[6])
    assert "cut at the output-token limit" in rows[9]["error"] and rows[9]["completion_tokens"] == 30
    assert rows[11]["reasoning_tokens"] == 30 == rows[11]["completion_tokens"]
    reasoning_free = (usage["prompt_tokens"] * 1.0 + (usage["completion_tokens"] - 120) * 2.0 + 120 * 4.0) / 1e6
    assert usage["estimated_cost"] == pytest.approx(reasoning_free)


def test_token_details_are_subsets_and_priced_at_their_own_rate():
    chat = Usage.from_body({"usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
                                      "prompt_tokens_details": {"cached_tokens": 60},
                                      "completion_tokens_details": {"reasoning_tokens": 20}}})
    assert (chat.prompt_tokens, chat.completion_tokens, chat.total_tokens) == (100, 50, 150)
    assert (chat.cached_tokens, chat.reasoning_tokens) == (60, 20)
    responses = Usage.from_body({"usage": {"input_tokens": 10, "output_tokens": 8, "total_tokens": 18,
                                           "input_tokens_details": {"cached_tokens": 4},
                                           "output_tokens_details": {"reasoning_tokens": 8}}})
    assert (responses.cached_tokens, responses.reasoning_tokens, responses.total_tokens) == (4, 8, 18)
    price = Price(input=2.0, output=8.0, cached_input=0.5, reasoning=10.0)
    assert price.cost(100, 50, cached_tokens=60, reasoning_tokens=20) == pytest.approx(
        (40 * 2.0 + 60 * 0.5 + 30 * 8.0 + 20 * 10.0) / 1e6)
    assert Price(input=2.0, output=8.0).cost(100, 50, 60, 20) == pytest.approx((100 * 2.0 + 50 * 8.0) / 1e6)
    assert Price(input=2.0, output=8.0).cost(100, 50, batch=True) == pytest.approx((100 * 1.0 + 50 * 4.0) / 1e6)


def test_a_bad_price_entry_names_the_key(tmp_path):
    from batch.errors import ConfigError
    path = tmp_path / "prices.yaml"
    path.write_text("prices:\n  x: {input: 1, cache: 0.5}\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['cache'\]") as caught:
        load_prices(path)
    assert f"{path}:2" in str(caught.value)
