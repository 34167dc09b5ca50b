"""HTTP replies of the data plane, each counted in the server's stats, and error bodies in both wire formats."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .state import Stats

__all__ = ["DBX_CODES", "drop", "encode", "error_payload", "reply_bytes", "reply_error", "reply_json"]

# the error_code Databricks Model Serving sends for each status
DBX_CODES = {
    400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST", 409: "RESOURCE_CONFLICT", 429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR", 501: "NOT_IMPLEMENTED", 503: "TEMPORARILY_UNAVAILABLE",
}
# the error type and code OpenAI sends for each status
OPENAI_TYPES = {
    400: ("invalid_request_error", "invalid_request"), 401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "permission_denied"), 404: ("not_found_error", "not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
# compact and not ASCII-escaped: one allocation per answer on the hot path
encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def error_payload(status: int, message: str, databricks: bool, code: str | None = None,
                  kind: str | None = None) -> dict:
    """An error body: Databricks' ``{"error_code", "message"}`` when ``databricks``, else OpenAI's
    ``{"error": {"message", "type", "param", "code"}}``; ``code`` and ``kind`` override OpenAI's code and type."""
    if databricks:
        default = "TEMPORARILY_UNAVAILABLE" if status >= 500 else "BAD_REQUEST"
        return {"error_code": DBX_CODES.get(status, default), "message": message}
    default_kind, default_code = OPENAI_TYPES.get(status, ("server_error", "server_error") if status >= 500
                                                  else ("invalid_request_error", "invalid_request"))
    return {"error": {"message": message, "type": kind or default_kind, "param": None, "code": code or default_code}}


def reply_json(stats: Stats, status: int, payload: Any, headers: dict | None = None) -> web.Response:
    stats.by_status[status] += 1
    if status == 429:
        stats.rate_limited += 1
    return web.Response(body=encode(payload).encode(), status=status,
                        content_type="application/json", headers=headers)


def reply_error(stats: Stats, status: int, message: str, databricks: bool, code: str | None = None,
                headers: dict | None = None, kind: str | None = None) -> web.Response:
    return reply_json(stats, status, error_payload(status, message, databricks, code, kind), headers)


def reply_bytes(stats: Stats, status: int, body: bytes) -> web.Response:
    """A body sent as is, labelled JSON whatever it holds: broken answers are made with this."""
    stats.by_status[status] += 1
    return web.Response(body=body, status=status, content_type="application/json")


def drop(stats: Stats, request: web.Request) -> web.Response:
    """Abort the socket; the response aiohttp then fails to write is discarded."""
    stats.dropped += 1
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=204)
