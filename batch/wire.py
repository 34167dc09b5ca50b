"""Wire formats: request bodies and answers for the OpenAI and Databricks serving APIs.

Pure functions over plain data. The Databricks bodies are the ones its documentation
shows (``messages`` / ``prompt`` / ``input`` / ``dataframe_records`` posted to
``/serving-endpoints/{name}/invocations``); OpenAI bodies add ``model``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import EndpointConfig

__all__ = ["Usage", "request_body", "parse_answer", "error_text", "AnswerShapeError", "MULTI_INPUT_TASKS"]

# Tasks whose requests carry many rows at once.
MULTI_INPUT_TASKS = frozenset({"embeddings", "custom"})


class AnswerShapeError(ValueError):
    """The body parsed as JSON but is not the answer the task expects."""


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> "Usage":
        raw = body.get("usage")
        if not isinstance(raw, Mapping):
            return cls()
        prompt = _int(raw.get("prompt_tokens"))
        completion = _int(raw.get("completion_tokens"))
        total = _int(raw.get("total_tokens")) or prompt + completion
        return cls(prompt, completion, total)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def request_body(config: EndpointConfig, inputs: Sequence[Any], params: Mapping[str, Any] | None = None,
                 response_format: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One request for ``inputs`` (exactly one for chat and completions)."""
    task = config.task
    if task == "custom":
        return {"dataframe_records": list(inputs)}
    body: dict[str, Any] = {}
    if config.api == "openai":
        body["model"] = config.model_name
    if task == "chat":
        body["messages"] = [{"role": "user", "content": inputs[0]}]
    elif task == "completions":
        body["prompt"] = inputs[0]
    else:
        body["input"] = list(inputs)
    if params:
        body.update(params)
    if response_format is not None:
        body["response_format"] = dict(response_format)
    return body


def parse_answer(config: EndpointConfig, body: Any, count: int) -> list[Any]:
    """The per-input results of one answer, in input order."""
    if not isinstance(body, Mapping):
        raise AnswerShapeError(f"expected a JSON object, got {type(body).__name__}")
    task = config.task
    if task == "chat":
        return [_first_choice(body, _message_content, "message.content")]
    if task == "completions":
        return [_first_choice(body, lambda c: c.get("text"), "text")]
    if task == "embeddings":
        return _embeddings(body, count)
    return _predictions(body, count)


def _message_content(choice: Mapping[str, Any]) -> Any:
    message = choice.get("message")
    return message.get("content") if isinstance(message, Mapping) else None


def _first_choice(body: Mapping[str, Any], pick: Any, what: str) -> str:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise AnswerShapeError("no 'choices' in the answer")
    value = pick(choices[0])
    if not isinstance(value, str):
        raise AnswerShapeError(f"choices[0].{what} is missing or not text")
    return value


def _embeddings(body: Mapping[str, Any], count: int) -> list[list[float]]:
    data = body.get("data")
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else "no"
        raise AnswerShapeError(f"expected {count} embeddings in 'data', got {got}")
    ordered: list[Any] = [None] * count
    for position, item in enumerate(data):
        if not isinstance(item, Mapping) or not isinstance(item.get("embedding"), list):
            raise AnswerShapeError(f"data[{position}] has no 'embedding' list")
        index = item.get("index", position)
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count or ordered[index] is not None:
            raise AnswerShapeError(f"data[{position}] has a bad index {index!r}")
        ordered[index] = item["embedding"]
    return ordered


def _predictions(body: Mapping[str, Any], count: int) -> list[Any]:
    predictions = body.get("predictions")
    if isinstance(predictions, Mapping):  # column-oriented answer: {"col": [..], ...}
        columns = {k: v for k, v in predictions.items() if isinstance(v, list)}
        if len(columns) == len(predictions) and all(len(v) == count for v in columns.values()):
            return [{k: v[i] for k, v in columns.items()} for i in range(count)]
    if not isinstance(predictions, list) or len(predictions) != count:
        got = len(predictions) if isinstance(predictions, list) else "no"
        raise AnswerShapeError(f"expected {count} values in 'predictions', got {got}")
    return predictions


def error_text(content: bytes, limit: int = 1000) -> str:
    """The endpoint's own words from an error body: OpenAI ``error.message``, Databricks ``error_code: message``."""
    try:
        body = json.loads(content)
    except ValueError:
        text = content.decode("utf-8", "replace").strip()
        return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            code = error.get("code") or error.get("type")
            return f"{code}: {error['message']}" if code else str(error["message"])
        if isinstance(error, str):  # OAuth (RFC 6749) puts the words in error_description
            description = body.get("error_description")
            return f"{error}: {description}" if description else error
        if body.get("error_code") or body.get("message"):
            return ": ".join(str(body[k]) for k in ("error_code", "message") if body.get(k))
    text = json.dumps(body)
    return (text[:limit] + "...") if len(text) > limit else text
