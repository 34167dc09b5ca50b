"""``python -m jobs preview``: a job's own rows through each variant, side by side, before paying for the table.

A variant is the job with some outputs changed: another endpoint (``--endpoint NAME``,
or ``--endpoint OUTPUT=NAME``), or any ai_query argument or prompt changed in the spec's
``preview:`` section. The sample is the first rows in the order of a hash of the keys,
so two previews see the same rows, and they are answered through the same
``query_column`` path a run uses. Nothing is written to the results or usage tables.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping, Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch._yaml import Lines, load_yaml
from batch.config import Registry, registry
from batch._engine import ROW_RECORD, RowOutcome
from batch.errors import ConfigError
from batch._cluster import task_slots
from batch._functions import query_column

from . import page, svg
from .plan import check_input, read_input, request_column
from .spec import _OUTPUT, JobSpec, OutputSpec, _Checker, job_endpoints, parse_spec
from .usage import Price, load_prices, price_for

__all__ = ["Variant", "Preview", "load_variants", "run_preview", "render_html", "render_text", "DEFAULT_ROWS"]

DEFAULT_ROWS = 20
_SECTION = {"rows", "variants"}
_FAMILY = {"chat": "text", "completions": "text", "embeddings": "embeddings", "custom": "custom"}
_PACKED = ("embeddings", "custom")  # tasks that send batch_size inputs per request


@dataclass(frozen=True)
class Variant:
    name: str
    spec: JobSpec
    changes: tuple[str, ...] = ()   # what differs from the job as written, for the page


# ------------------------------------------------------------------ variants, checked like the rest of a spec

def load_variants(path: str | Path, endpoints: Sequence[str] = (), only: Sequence[str] = (),
                  registry: Registry = registry) -> tuple[JobSpec, list[Variant], int]:
    """The job as written, the variants to compare and the sample size the spec asks for.

    ``--endpoint`` flags replace the spec's variants; without them the job as written (``spec``)
    is compared with each variant of the ``preview:`` section."""
    data, lines = load_yaml(path)
    source = str(path)
    base_data = {k: v for k, v in data.items() if k != "preview"} if isinstance(data, Mapping) else data
    base = parse_spec(base_data, source, lines, registry)
    c = _Checker(source, lines, job_endpoints(base_data, source, lines, registry))
    section = c.mapping((data.get("preview") or {}), _SECTION, "preview")
    rows = c.number(section.get("rows", DEFAULT_ROWS), "preview", "rows", integer=True, low=1)
    if endpoints:
        variants = [_endpoint_variant(c, base_data, base, flag) for flag in endpoints]
    else:
        variants = [Variant("spec", base)]
        raw = section.get("variants") or {}
        if not isinstance(raw, Mapping):
            raise c.error("'preview.variants' must map variant names to the outputs they change", "preview",
                          "variants")
        for name, changes in raw.items():
            name = c.text(name, "preview", "variants", str(name))
            if name == "spec":
                raise c.error("'spec' names the job as written; call this variant something else",
                              "preview", "variants", name)
            variants.append(_spec_variant(c, base_data, name, changes))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"two variants have the same name: {', '.join(names)}", source=source)
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ConfigError(f"--variant {unknown[0]}: no such variant (known: {', '.join(names)})", source=source)
        variants = [v for v in variants if v.name in only]
    return base, variants, rows


def _merge(entry: Mapping, change: Mapping) -> dict:
    merged = dict(entry)
    for exclusive in ("prompt", "request"):
        if exclusive in change:
            merged.pop("request" if exclusive == "prompt" else "prompt", None)
    merged.update(change)
    return merged


def _spec_variant(c: _Checker, base_data: Mapping, name: str, raw: Any) -> Variant:
    outputs = dict(base_data["outputs"])
    changes = c.mapping(raw, set(outputs), "preview", "variants", name)
    if not changes:
        raise c.error(f"preview variant '{name}' changes nothing: map output names to the ai_query arguments "
                      f"that differ (outputs: {', '.join(outputs)})", "preview", "variants", name)
    lines: Lines = dict(c.lines)
    described = []
    for output, change in changes.items():
        change = c.mapping(change, _OUTPUT, "preview", "variants", name, output)
        outputs[output] = _merge(outputs[output], change)
        here = ("preview", "variants", name, output)
        for key in change:  # errors in the merged output point at the variant's lines
            for path in [p for p in lines if p[:3] == ("outputs", output, key)]:
                del lines[path]
            for path, line in list(c.lines.items()):
                if path[:5] == here + (key,):
                    lines[("outputs", output) + path[4:]] = line
            described.append(f"{output}.{key} = {_short(change[key])}")
    return Variant(name, _parse(c, base_data, outputs, lines, f"preview variant '{name}'"), tuple(described))


def _endpoint_variant(c: _Checker, base_data: Mapping, base: JobSpec, flag: str) -> Variant:
    target, _, endpoint = flag.rpartition("=")
    try:
        config = c.endpoints.get(endpoint)
    except ConfigError as exc:
        raise ConfigError(f"--endpoint {flag}: {exc.reason}") from None
    family = _FAMILY[config.task]
    fits = [o.name for o in base.outputs if (o.name == target if target else
                                              _FAMILY[o.query.endpoint.task] == family)]
    if not fits:
        listed = ", ".join(f"{o.name} ({o.query.endpoint.task})" for o in base.outputs)
        what = f"no output named '{target}'" if target else f"a {config.task} endpoint fits no output"
        raise ConfigError(f"--endpoint {flag}: {what} of job {base.name} (outputs: {listed})")
    outputs = dict(base_data["outputs"])
    for name in fits:
        outputs[name] = _merge(outputs[name], {"endpoint": endpoint})
    spec = _parse(c, base_data, outputs, {}, f"--endpoint {flag}")
    return Variant(flag, spec, tuple(f"{name}.endpoint = {endpoint}" for name in fits))


def _parse(c: _Checker, base_data: Mapping, outputs: Mapping, lines: Lines, what: str) -> JobSpec:
    try:
        return parse_spec({**base_data, "outputs": outputs}, c.source, lines, c.endpoints)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc.reason}", source=exc.source, key=exc.key, line=exc.line) from None


def _short(value: Any) -> str:
    shown = value if isinstance(value, str) else repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


# ------------------------------------------------------------------ the sample, answered

@dataclass(slots=True, kw_only=True)
class Answer(RowOutcome):
    """One sampled answer, read back from the UDF's metadata struct: the per-row record (``ROW_RECORD``;
    counts NULL there are 0, times stay NULL), with the error as its message and kind."""

    message: str | None = None
    error_kind: str | None = None


@dataclass
class Projection:
    """The whole table through one variant, scaled from the sample."""

    cost: float | None
    seconds: float
    requests: float
    tokens: float
    bounds: list[str] = field(default_factory=list)   # what limits each endpoint's pace
    unpriced: list[str] = field(default_factory=list)


@dataclass
class Preview:
    spec: JobSpec
    variants: list[Variant]
    columns: list[str]
    rows: list[dict[str, Any]]                        # the sample's input values, in sample order
    answers: list[dict[tuple[str, str], Answer]]      # per row: (variant, output) -> answer
    table_rows: int
    slots: int
    projections: dict[str, Projection]


def _sample(spark: SparkSession, spec: JobSpec, df: DataFrame, rows: int) -> tuple[list, int]:
    """The first ``rows`` rows by a hash of the keys (NULL keys skipped, one row per key): the same rows on
    every preview of the same input, spread over the table rather than its first file."""
    keys = [F.col(k) for k in spec.keys]
    usable = df.where(F.expr(" AND ".join(f"`{k}` IS NOT NULL" for k in spec.keys))).dropDuplicates(list(spec.keys))
    sample = usable.orderBy(F.xxhash64(*keys), *keys).limit(rows).collect()
    return sample, usable.count()


def run_preview(spark: SparkSession, base: JobSpec, variants: Sequence[Variant], rows: int = DEFAULT_ROWS,
                prices: Mapping[str, Price] | None = None) -> Preview:
    prices = load_prices(base.prices) if prices is None else prices
    df = read_input(spark, base)
    for variant in variants:
        check_input(df, variant.spec)
    sample, total = _sample(spark, base, df, rows)
    calls: dict[tuple, OutputSpec] = {}  # an output unchanged between variants is asked once
    for variant in variants:
        for output in variant.spec.outputs:
            calls.setdefault(_call_key(output), output)
    keys = list(calls)
    slots = task_slots(spark)
    answers: list[dict[tuple[str, str], Answer]] = [{} for _ in sample]
    if sample:
        frame = spark.createDataFrame(sample, df.schema).repartition(min(slots, len(sample)))
        indexed = {tuple(r[k] for k in base.keys): i for i, r in enumerate(sample)}
        metas = [query_column(dataclasses.replace(calls[k].query, fail_on_error=False), request_column(calls[k]),
                              with_metadata=True, name=f"ai_query_{calls[k].name}").alias(f"_m{i}")
                 for i, k in enumerate(keys)]
        for row in frame.select(*base.keys, *metas).collect():
            found = [_answer(row[f"_m{i}"]) for i in range(len(keys))]
            by_call = dict(zip(keys, found))
            slot = answers[indexed[tuple(row[k] for k in base.keys)]]
            for variant in variants:
                for output in variant.spec.outputs:
                    slot[(variant.name, output.name)] = by_call[_call_key(output)]
    projections = {v.name: project(v.spec, answers, v.name, len(sample), total, slots, prices)
                   for v in variants}
    return Preview(base, list(variants), list(df.columns), [r.asDict() for r in sample], answers, total, slots,
                   projections)


def _call_key(output: OutputSpec) -> tuple:
    return output.name, output.query, output.prompt, output.request


def _answer(meta: Any) -> Answer:
    if meta is None:
        return Answer()
    record: dict[str, Any] = {name: meta[name] if meta[name] is not None or sql_type == "double" else 0
                              for name, sql_type in ROW_RECORD.items()}
    return Answer(value=meta["result"], message=meta["errorMessage"], error_kind=meta["error_kind"], **record)


# ------------------------------------------------------------------ projections

def project(spec: JobSpec, answers: Sequence[Mapping[tuple[str, str], Answer]], variant: str, sampled: int,
            table_rows: int, slots: int, prices: Mapping[str, Price]) -> Projection:
    """Cost and time for the whole table, from the sample's tokens and latency and each endpoint's settings.

    Tokens and requests scale with the table (``table_rows / sampled``; a packed task sends
    ``batch_size`` inputs per request). Each endpoint goes at the slowest of: its requests in
    flight (task slots times ``max_concurrency``, and no more than a chunk's rows per task) over the
    measured latency, ``requests_per_minute`` and ``tokens_per_minute``. Outputs are counted one
    after another, since a chunk's outputs share the same tasks."""
    scale = table_rows / sampled if sampled else 0.0
    cost: float | None = 0.0
    unpriced: list[str] = []
    per_endpoint: dict[str, dict[str, float]] = {}
    for output in spec.outputs:
        config = output.query.endpoint
        mine = [a[(variant, output.name)] for a in answers if (variant, output.name) in a]
        prompt = sum(a.prompt_tokens for a in mine) * scale
        completion = sum(a.completion_tokens for a in mine) * scale
        asked = [a for a in mine if a.attempts or a.message]
        if config.task in _PACKED:
            requests = len(asked) * scale / config.batch_size
            per_task = math.ceil(spec.commit_every / slots / config.batch_size)
        else:
            requests = sum(a.requests for a in mine) * scale
            per_task = math.ceil(spec.commit_every / slots)
        timed = [a.latency_ms for a in mine if a.requests and a.latency_ms is not None]
        latency = sum(timed) / len(timed) / 1000.0 if timed else 0.0
        in_flight = slots * max(1, min(config.max_concurrency, per_task))
        price = price_for(prices, config)
        if price is None:
            unpriced.append(config.name)
        elif cost is not None:
            cost += price.cost(round(prompt), round(completion))
        load = per_endpoint.setdefault(config.name, {"requests": 0.0, "tokens": 0.0, "busy": 0.0})
        load["requests"] += requests
        load["tokens"] += prompt + completion
        load["busy"] += requests * latency / in_flight
        load["in_flight"] = in_flight
        load["latency"] = latency
    seconds, bounds = 0.0, []
    for name, load in per_endpoint.items():
        config = next(o.query.endpoint for o in spec.outputs if o.query.endpoint.name == name)
        limits = [(load["busy"], f"{name}: {load['in_flight']:.0f} requests in flight at "
                                 f"{load['latency'] * 1000:.0f} ms")]
        if config.requests_per_minute:
            limits.append((load["requests"] / config.requests_per_minute * 60,
                           f"{name}: requests_per_minute {config.requests_per_minute:g}"))
        if config.tokens_per_minute:
            limits.append((load["tokens"] / config.tokens_per_minute * 60,
                           f"{name}: tokens_per_minute {config.tokens_per_minute:g}"))
        took, why = max(limits, key=lambda pair: pair[0])
        seconds += took
        bounds.append(why)
    return Projection(None if len(set(unpriced)) == len(per_endpoint) else cost, seconds,
                      sum(v["requests"] for v in per_endpoint.values()),
                      sum(v["tokens"] for v in per_endpoint.values()), bounds, sorted(set(unpriced)))


# ------------------------------------------------------------------ the page and the terminal

def _stats(preview: Preview, variant: Variant) -> dict[str, Any]:
    mine = [a[(variant.name, o.name)] for a in preview.answers for o in variant.spec.outputs]
    asked = [a for a in mine if a.attempts or a.message]
    timed = sorted(a.latency_ms for a in mine if a.requests and a.latency_ms is not None)
    pick = (lambda q: timed[min(len(timed) - 1, int(q * len(timed)))]) if timed else (lambda q: None)
    return dict(asked=len(asked), failed=sum(1 for a in mine if a.message), p50=pick(0.5), p95=pick(0.95),
                tokens=sum(a.total_tokens for a in mine), latencies=timed)


def render_text(preview: Preview, path: Path | None = None) -> str:
    spec = preview.spec
    lines = [f"preview of job {spec.name}: {len(preview.rows)} of {preview.table_rows:,} rows (stable sample), "
             f"{len(preview.variants)} variant(s)"]
    width = max(len(v.name) for v in preview.variants)
    lines.append(f"  {'variant':<{width}}  answers  failed  p50 ms  tokens   whole table: cost, time")
    for variant in preview.variants:
        s, p = _stats(preview, variant), preview.projections[variant.name]
        p50 = f"{s['p50']:.0f}" if s["p50"] is not None else "-"
        lines.append(f"  {variant.name:<{width}}  {s['asked']:>7}  {s['failed']:>6}  {p50:>6}  {s['tokens']:>6}   "
                     f"{_cost(p)}, {svg.fmt_seconds(p.seconds)}")
    for i, row in enumerate(preview.rows[:3]):
        key = ", ".join(f"{k}={row[k]}" for k in spec.keys)
        lines.append(f"  [{key}]")
        for output in spec.outputs:
            for variant in preview.variants:
                a = preview.answers[i].get((variant.name, output.name))
                if a is None:
                    continue
                shown = f"ERROR {a.error_kind or ''}: {a.message}" if a.message else _one_line(a.value)
                lines.append(f"    {output.name} / {variant.name}: {shown[:100]}")
    if path is not None:
        lines.append(f"  page: {path}")
    return "\n".join(lines)


def _one_line(value: Any) -> str:
    if hasattr(value, "asDict"):
        value = value.asDict(recursive=True)
    if isinstance(value, list) and len(value) > 6:
        return f"[{len(value)} values]"
    return " ".join(str(value).split())


def _answer_html(a: Answer | None) -> str:
    if a is None:
        return ""
    meta = []
    if a.latency_ms is not None and a.requests:
        meta.append(f"{a.latency_ms:,.0f} ms")
    if a.total_tokens:
        meta.append(f"{a.prompt_tokens:,} + {a.completion_tokens:,} tokens")
    if a.attempts > 1:
        meta.append(f"{a.attempts} attempts")
    if a.rate_limited:
        meta.append(f"{a.rate_limited} × 429")
    tail = f'<div class="meta">{page.text(" · ".join(meta))}</div>' if meta else ""
    if a.message:
        return (f'<div class="error"><span class="kind">{page.text(a.error_kind or "error")}</span>: '
                f'{page.show_value(a.message)}</div>{tail}')
    return f'<div class="answer">{page.show_value(a.value)}</div>{tail}'


def render_html(preview: Preview) -> str:
    spec, variants = preview.spec, preview.variants
    names = [v.name for v in variants]
    cards, summary = [], []
    for v in variants:
        s, p = _stats(preview, v), preview.projections[v.name]
        cards.append(f'<div class="card"><span>{page.text(v.name)}: whole table</span><b>{page.money(p.cost)}</b>'
                     f'<span>about {page.text(svg.fmt_seconds(p.seconds))}'
                     f'{"<br>no price: " + page.text(", ".join(p.unpriced)) if p.unpriced else ""}</span></div>')
        summary.append([page.text(v.name), page.text("; ".join(v.changes) or "the job as written"),
                        f"{s['asked']:,}", f"{s['failed']:,}", "-" if s["p50"] is None else f"{s['p50']:,.0f}",
                        "-" if s["p95"] is None else f"{s['p95']:,.0f}", f"{s['tokens']:,}",
                        f"{p.requests:,.0f}", f"{p.tokens:,.0f}", page.money(p.cost),
                        page.text(svg.fmt_seconds(p.seconds)),
                        page.text("; ".join(p.bounds)
                                  + (f" (no price: {', '.join(p.unpriced)})" if p.unpriced else ""))])
    charts = [
        svg.bar_chart(names, [svg.Series("cost", [p.cost or 0.0 for p in preview.projections.values()])],
                      title="Projected cost, whole table (USD)", y_label="US dollars", y_format=_dollars,
                      width=380, empty="no prices for these endpoints"),
        svg.bar_chart(names, [svg.Series("time", [p.seconds for p in preview.projections.values()],
                                         svg.PALETTE[1])], title="Projected time, whole table",
                      y_label="time", y_format=svg.fmt_seconds, width=380),
        _latency_chart(preview),
    ]
    body = [f'<div class="cards">{"".join(cards)}</div>', f'<div class="charts">{"".join(charts)}</div>',
            "<h2>Variants</h2>",
            page.table(["variant", "changes", "answered", "failed", "p50 ms", "p95 ms", "sample tokens",
                        "table requests", "table tokens", "projected cost", "projected time", "paced by"],
                       summary, numeric=range(2, 11)),
            f'<p class="note">Projected from the {len(preview.rows)} sampled rows, scaled to the '
            f'{preview.table_rows:,} rows of the input, with prices from the price table and each endpoint\'s '
            f"max_concurrency, requests_per_minute and tokens_per_minute; {preview.slots} task slot(s), "
            f"commit_every {spec.commit_every}. Nothing was written to {page.text(spec.results_table)}.</p>",
            "<h2>Rows</h2>"]
    inputs = [c for c in preview.columns]
    for i, row in enumerate(preview.rows):
        key = ", ".join(f"{k} = {row[k]}" for k in spec.keys)
        fields = "".join(f"<tr><th>{page.text(c)}</th><td class=\"answer\">{page.show_value(row.get(c), 600)}</td></tr>"
                         for c in inputs if c not in spec.keys)
        grid = page.table(["output", *names],
                          [[f"<b>{page.text(o.name)}</b>", *[_answer_html(preview.answers[i].get((v.name, o.name)))
                                                              for v in variants]] for o in spec.outputs])
        body.append(f'<div class="row"><h3>{page.text(key)}</h3><table class="fields">{fields}</table>{grid}</div>')
    subtitle = (f"{page.text(spec.source)} · {len(preview.rows)} of {preview.table_rows:,} rows (a stable sample) · "
                f"{len(variants)} variant(s)")
    return page.document(f"Preview: {spec.name}", subtitle, "".join(body))


def _cost(p: Projection) -> str:
    return page.money(p.cost) + (f" (no price: {', '.join(p.unpriced)})" if p.unpriced and p.cost is not None else "")


def _dollars(value: float) -> str:
    return f"${value:.2g}" if value < 1 else f"${value:,.2f}"


def _latency_chart(preview: Preview) -> str:
    per_variant = {v.name: _stats(preview, v)["latencies"] for v in preview.variants}
    everything = [x for xs in per_variant.values() for x in xs]
    if not everything:
        return svg.range_bars([], [], title="Latency per request (sample)", x_label="ms", y_label="requests",
                              width=380)
    edges = svg.nice_ticks(0.0, max(everything), 10)
    counts = [svg.Series(name, [sum(1 for x in xs if lo <= x < hi or (hi == edges[-1] and x == hi))
                                for lo, hi in zip(edges, edges[1:])]) for name, xs in per_variant.items()]
    return svg.range_bars(edges, counts, title="Latency per request (sample)", x_label="latency (ms)",
                          y_label="requests", stacked=False, width=380)


def default_path(spark: SparkSession, spec: JobSpec) -> Path:
    """Beside the warehouse when it is a local folder (where the tables are), else under ``previews/``."""
    warehouse = spark.conf.get("spark.sql.warehouse.dir", None) or ""
    local = warehouse[len("file:"):] if warehouse.startswith("file:") else warehouse if "://" not in warehouse \
        else ""
    folder = Path(local) / "previews" if local else Path("previews")
    return folder / f"{spec.name}.html"
