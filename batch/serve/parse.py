"""A request body read into what it asks for, whatever its wire format."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from . import simulate as sim
from .replies import encode

__all__ = ["BadRequest", "ParsedRequest", "detect_task", "parse_request"]

# the keys of MLflow's custom-model (pyfunc) scoring formats, as Databricks Model Serving accepts them
CUSTOM_KEYS = ("dataframe_records", "dataframe_split", "instances", "inputs")


class BadRequest(Exception):
    """The body cannot be answered; its message becomes a 400's."""


class ParsedRequest:
    """What one request asks for: its task, body, the prompt texts directives are read from, its number of
    inputs, custom-model records and prompt lengths in characters.

    Raises BadRequest when the body lacks what its task needs.
    """

    __slots__ = ("task", "body", "texts", "inputs", "records", "chars")

    def __init__(self, task: str, body: dict):
        self.task, self.body = task, body
        self.texts: list[str] = []
        self.records: list[dict] = []
        self.chars: list[int] = []
        self.inputs = 1
        getattr(self, "_" + task)(body)

    def _chat(self, body: dict) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("request body is missing 'messages' (a non-empty list of {role, content})")
        self.texts = [sim.chat_prompt(messages)]
        self.chars = [sum(len(sim.message_text(m.get("content"))) for m in messages)]

    def _responses(self, body: dict) -> None:
        """OpenAI's Responses API: ``input`` is the prompt text or a list of role/content items."""
        given = body.get("input")
        items = [{"role": "user", "content": given}] if isinstance(given, str) else given
        if not isinstance(items, list) or not items or not all(isinstance(m, dict) for m in items):
            raise BadRequest("request body is missing 'input' (text, or a non-empty list of {role, content})")
        self.texts = [sim.chat_prompt(items)]
        self.chars = [sum(len(sim.message_text(m.get("content"))) for m in items)]

    def _completions(self, body: dict) -> None:
        self.texts = _strings(body.get("prompt"), "prompt")
        self.chars, self.inputs = [len(t) for t in self.texts], len(self.texts)

    def _embeddings(self, body: dict) -> None:
        self.texts = _strings(body.get("input"), "input")
        self.chars, self.inputs = [len(t) for t in self.texts], len(self.texts)

    def _custom(self, body: dict) -> None:
        self.records = _records(body)
        self.inputs = len(self.records)
        self.texts = [v for r in self.records for v in r.values() if isinstance(v, str) and "[[" in v]


def _strings(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        return [v if isinstance(v, str) else encode(v) for v in value]
    raise BadRequest(f"request body is missing '{key}' (a string or a non-empty list)")


def _records(body: dict) -> list[dict]:
    if "dataframe_split" in body:
        split = body["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("data"), list):
            raise BadRequest("'dataframe_split' needs 'columns' and 'data'")
        columns = split.get("columns") or [str(i) for i in range(len(split["data"][0]) if split["data"] else 0)]
        return [dict(zip(columns, row)) for row in split["data"]]
    key = next(k for k in CUSTOM_KEYS if k in body)
    rows = body[key]
    if isinstance(rows, dict) and all(isinstance(v, list) for v in rows.values()):
        return [dict(zip(rows, values)) for values in zip(*rows.values())]
    if not isinstance(rows, list):
        raise BadRequest(f"'{key}' must be a list of records")
    return [r if isinstance(r, dict) else {"input": r} for r in rows]


def detect_task(body: dict) -> str | None:
    """The task of a Databricks ``invocations`` body, which does not say it: chat, completions, embeddings or
    custom, by the key it carries; None when it carries none of them."""
    if "messages" in body:
        return "chat"
    if "prompt" in body:
        return "completions"
    if "input" in body:
        return "embeddings"
    if any(k in body for k in CUSTOM_KEYS):
        return "custom"
    return None


async def parse_request(request: web.Request, task: str | None) -> ParsedRequest:
    """The request's JSON object body, for ``task`` (None: detected from the body). Raises BadRequest."""
    body = await _read_body(request)
    task = task or detect_task(body)
    if task is None:
        raise BadRequest("request body needs one of messages, prompt, input, "
                         "dataframe_records, dataframe_split, instances or inputs")
    return ParsedRequest(task, body)


async def _read_body(request: web.Request) -> dict:
    raw = await request.read()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body
