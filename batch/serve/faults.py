"""Fault injection: which fault a request gets (scripted by its prompt, or drawn at ``fault_rate``) and the
reply that fault produces.

A prompt scripts its own fate with ``[[fail:NNN]]`` (that status, every call), ``[[fault:KIND]]`` (that
fault, every call) or ``[[flaky:N:KIND]]`` (that fault for the first N calls, then the answer).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import limits
from . import simulate as sim
from .replies import DBX_CODES, drop, reply_bytes, reply_error, reply_json

if TYPE_CHECKING:
    from .state import State

__all__ = ["DEFAULT_FAULTS", "FAULT_KINDS", "draw", "fault_reply", "inject", "scripted"]

FAULT_KINDS = frozenset(
    "429 429-bare 500 502 503 504 drop stall malformed truncated unexpected "
    "dbx-limit dbx-unavailable dbx-bad-request "
    "quota html-502 body-400 body-429 body-500 body-503".split()  # body-NNN: that error inside a 200
)
DEFAULT_FAULTS = "500,502,503,504,429,drop,malformed,truncated"
QUOTA_MESSAGE = ("You exceeded your current quota, please check your plan and billing details. For more "
                 "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.")
NGINX_502 = (b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
             b"</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
# Databricks-shaped faults: the status, whose error_code is in DBX_CODES, and the message
DBX_FAULTS = {
    "dbx-limit": (429, "Exceeded workspace rate limit"),
    "dbx-unavailable": (503, "The service is temporarily unavailable"),
    "dbx-bad-request": (400, "Simulated bad request"),
}


def scripted(state: State, texts: list[str]) -> tuple[str, Any] | None:
    """``("fail", status)`` or ``("fault", kind)`` as the first directive-carrying prompt asks; checked
    before any random fault. A flaky prompt's calls are counted here."""
    for text in texts:
        if "[[" not in text:
            continue
        status = sim.failure_status(text)
        if status:
            return "fail", status
        always = sim.fault_directive(text)
        if always:
            return "fault", always
        flaky = sim.flaky_directive(text)
        if flaky:
            seen = state.flaky[text] = state.flaky.get(text, 0) + 1
            if seen <= flaky[0]:
                return "fault", flaky[1]
    return None


def draw(state: State) -> str | None:
    """A fault kind from ``faults`` for a ``fault_rate`` share of calls, from the seeded generator."""
    rate, kinds = state.settings.fault_rate, state.settings.faults
    if rate <= 0 or not kinds or state.rng.random() >= rate:
        return None
    return state.rng.choice(kinds)


async def fault_reply(kind: str, state: State, request: web.Request, databricks: bool) -> web.StreamResponse | None:
    """:func:`inject` for a known kind (or any status number); a 400 naming a kind a flaky directive made up."""
    if kind in FAULT_KINDS or kind.isdigit() or kind[:5] == "body-" and kind[5:].isdigit():
        return await inject(kind, state, request, databricks)
    return reply_error(state.stats, 400, f"unknown fault kind {kind!r} in a flaky directive", databricks)


async def inject(kind: str, state: State, request: web.Request, databricks: bool) -> web.StreamResponse | None:
    """The response a fault produces; None lets the normal answer through (stall, truncated)."""
    stats = state.stats
    stats.faults[kind] += 1
    if kind == "stall":
        await asyncio.sleep(state.settings.stall_seconds)
        return None
    if kind == "truncated":
        return None
    if kind == "drop":
        return drop(stats, request)
    if kind == "malformed":
        return reply_bytes(stats, 200, b"<html><body>simulated malformed answer</body></html>")
    if kind == "unexpected":
        return reply_json(stats, 200, {"result": "surprise"})
    if kind in DBX_FAULTS:
        status, message = DBX_FAULTS[kind]
        return reply_json(stats, status, {"error_code": DBX_CODES[status], "message": message})
    if kind == "429-bare":
        return reply_error(stats, 429, "simulated fault 429", databricks)
    if kind == "quota":
        return reply_error(stats, 429, QUOTA_MESSAGE, False, code="insufficient_quota", kind="insufficient_quota")
    if kind == "html-502":
        stats.by_status[502] += 1
        return web.Response(body=NGINX_502, status=502, content_type="text/html")
    if kind.startswith("body-"):
        return reply_json(stats, 200, _error_in_body(int(kind[5:]), databricks))
    headers = _retry_headers(state) if kind == "429" else None
    return reply_error(stats, int(kind), f"simulated fault {kind}", databricks, headers=headers)


def _error_in_body(status: int, databricks: bool) -> dict:
    """An error sent as a 200, as routers do: OpenRouter and LiteLLM put the status in ``error.code``."""
    message = f"simulated error {status}"
    if databricks:
        return {"error_code": DBX_CODES.get(status, "INTERNAL_ERROR"), "message": message}
    return {"error": {"message": message, "code": status}}


def _retry_headers(state: State) -> dict[str, str]:
    """An injected 429 says to wait as long as the request bucket would, as the token-bucket profile does."""
    bucket = getattr(state.limiter, "bucket", None)
    return limits.retry_headers(state.settings.retry_after, bucket.wait() if bucket else 0.0)
