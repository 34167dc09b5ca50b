"""The few lines a finished run prints: rows, spend, and per endpoint what it took."""

from __future__ import annotations

from typing import Any

from .spec import JobSpec

__all__ = ["summary"]


def summary(spec: JobSpec, result: Any, seconds: float) -> str:
    """``result`` is a ``jobs.result.RunResult``; ``seconds`` the run's wall time. Returns the text, no newline at
    the end."""
    lines = [f"job {spec.name} run {result.run_id} {result.status} in {seconds:.1f}s"]
    failed_share = f" ({result.rows_failed / result.rows_in:.1%})" if result.rows_in else ""
    lines.append(f"  rows: {result.rows_pending:,} to answer, {result.rows_in:,} written, "
                 f"{result.rows_failed:,} failed{failed_share}, {result.skipped_null_keys:,} skipped (NULL key)")
    if getattr(result, "rows_by_category", None):
        lines.append("  keys: " + ", ".join(f"{v:,} {k}" for k, v in result.rows_by_category.items())
                     + f", {result.rows_removed:,} removed")
    estimate = getattr(result, "estimate", None)
    if estimate is not None and estimate.cost_low is not None:
        told = (f"${estimate.cost_point:.4f}" if estimate.cost_point is not None
                else f"at least ${estimate.cost_low:.4f}, no completion bound")
        lines.append(f"  spend: ${result.spend:.4f} (estimated before the run: {told})")
    elif any(u.estimated_cost is not None for u in result.usage):
        lines.append(f"  spend: ${result.spend:.4f}")
    for u in result.usage:
        latency = (f", latency p50 {u.latency_p50_ms:.0f} ms p95 {u.latency_p95_ms:.0f} ms"
                   if u.latency_p50_ms is not None else "")
        cost = f", est. cost ${u.estimated_cost:.4f}" if u.estimated_cost is not None else ""
        kinds = (" (" + ", ".join(f"{k}: {v}" for k, v in sorted(u.failed_by_kind.items())) + ")"
                 if u.failed_by_kind else "")
        lines.append(f"  {u.endpoint} [{', '.join(u.outputs)}]: {u.rows_answered:,} answered, {u.rows_failed:,} "
                     f"failed{kinds}, {u.requests:,} requests, {u.retries:,} retries, {u.rate_limited:,} rate-limited,"
                     f" {u.total_tokens:,} tokens ({u.prompt_tokens:,} in / {u.completion_tokens:,} out)"
                     f"{latency}{cost}")
    for reason in result.reasons:
        lines.append(f"  limit: {reason}")
    lines.append(f"  results: {spec.results_table}   usage: {spec.usage_table}")
    if getattr(result, "report", None):
        lines.append(f"  report: {result.report}")
    return "\n".join(lines)
