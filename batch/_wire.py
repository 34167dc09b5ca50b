"""Wire formats: request bodies and answers for the OpenAI and Databricks serving APIs.

Pure functions over plain data. The Databricks bodies are the ones its documentation
shows (``messages`` / ``prompt`` / ``input`` / ``dataframe_records`` posted to
``/serving-endpoints/{name}/invocations``); OpenAI bodies add ``model``. OpenAI's Responses
API (``POST /v1/responses``, api ``responses``) takes the prompt as ``input``, the output
limit as ``max_output_tokens`` and structured output as ``text.format``, and answers with
``output[].content[]`` parts and ``usage.input_tokens`` / ``output_tokens``.
"""

from __future__ import annotations

import array
import base64
import binascii
import html
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import EndpointConfig
from .errors import QUOTA_KINDS

__all__ = ["Usage", "request_body", "parse_answer", "error_text", "error_info", "embedded_error", "ErrorInfo",
           "AnswerShapeError", "NoAnswer", "MULTI_INPUT_TASKS", "inputs_per_request"]

# Tasks whose requests carry many rows at once.
MULTI_INPUT_TASKS = frozenset({"embeddings", "custom"})


def inputs_per_request(config: EndpointConfig) -> int:
    """Rows one request carries: ``batch_size`` for the tasks that pack inputs, else one."""
    return config.batch_size if config.task in MULTI_INPUT_TASKS else 1


class AnswerShapeError(ValueError):
    """The body parsed as JSON but is not the answer the task expects."""


class NoAnswer(AnswerShapeError):
    """A well-formed answer with no usable text (tool call, refusal, output limit); the message says which."""


@dataclass(slots=True)
class Usage:
    """Tokens as the endpoint billed them. ``reasoning_tokens`` is part of ``completion_tokens`` and
    ``cached_tokens`` part of ``prompt_tokens`` (as OpenAI documents both): subsets, never to be added again."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Usage:
        raw = body.get("usage")
        if raw.__class__ is dict and len(raw) == 3:  # the common usage, read at once (a third of the full way)
            prompt, completion, total = raw.get("prompt_tokens"), raw.get("completion_tokens"), raw.get("total_tokens")
            if (prompt.__class__ is int and completion.__class__ is int and total.__class__ is int
                    and prompt and completion and total):
                return cls(prompt, completion, total)
        if not isinstance(raw, Mapping):
            return cls()
        prompt = _int(raw.get("prompt_tokens")) or _int(raw.get("input_tokens"))  # the Responses API's names
        completion = _int(raw.get("completion_tokens")) or _int(raw.get("output_tokens"))
        total = _int(raw.get("total_tokens")) or prompt + completion
        reasoning = _detail(raw, "completion_tokens_details", "output_tokens_details", "reasoning_tokens")
        cached = _detail(raw, "prompt_tokens_details", "input_tokens_details", "cached_tokens")
        return cls(prompt, completion, total, min(reasoning, completion) if completion else reasoning,
                   min(cached, prompt) if prompt else cached)

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.total_tokens += other.total_tokens
        self.reasoning_tokens += other.reasoning_tokens
        self.cached_tokens += other.cached_tokens


def _detail(raw: Mapping[str, Any], chat: str, responses: str, name: str) -> int:
    """A token detail under the Chat Completions name or the Responses API's; 0 when neither says."""
    for key in (chat, responses):
        details = raw.get(key)
        if isinstance(details, Mapping):
            return _int(details.get(name))
    return 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def request_body(config: EndpointConfig, inputs: Sequence[Any], params: Mapping[str, Any] | None = None,
                 response_format: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One request for ``inputs`` (exactly one for chat and completions)."""
    task = config.task
    if task == "custom":
        return {"dataframe_records": list(inputs)}
    if config.api == "responses":
        return _responses_request(config, inputs[0], params, response_format)
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


def parse_answer(config: EndpointConfig, body: Any, count: int, *, structured: bool = False,
                 max_tokens: int | None = None) -> list[Any]:
    """The per-input results of one answer, in input order.

    ``structured``: the request asked for JSON (json_object, json_schema), so an answer cut at the output-token
    limit is no answer; ``max_tokens`` is the limit the request set, named when it was reached.
    """
    if not isinstance(body, Mapping):
        raise AnswerShapeError(f"expected a JSON object, got {type(body).__name__}")
    task = config.task
    if config.api == "responses":
        return [_responses_answer(body, structured, max_tokens)]
    if task == "chat":
        return [_chat(body, structured, max_tokens)]
    if task == "completions":
        return [_first_choice(body, lambda c: c.get("text"), "text")]
    if task == "embeddings":
        return _embeddings(body, count)
    return _predictions(body, count)


def _chat(body: Mapping[str, Any], structured: bool, max_tokens: int | None) -> str:
    """The common answer (text that ended on its own) is taken at once; any other shape is read by
    ``_chat_in_full``, so reading it costs the common answer nothing."""
    try:
        choice = body["choices"][0]
        content = choice["message"]["content"]
        if content.__class__ is str and content and choice.get("finish_reason") == "stop":
            return content
    except (KeyError, IndexError, TypeError, AttributeError):
        pass
    return _chat_in_full(body, structured, max_tokens)


def _chat_in_full(body: Mapping[str, Any], structured: bool, max_tokens: int | None) -> str:
    choices = body.get("choices")
    if isinstance(choices, list) and not choices:
        raise AnswerShapeError("the answer has an empty 'choices' list: the endpoint generated nothing for "
                               "this prompt")
    if not isinstance(choices, list) or not isinstance(choices[0], Mapping):
        raise AnswerShapeError("no 'choices' in the answer")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise AnswerShapeError("choices[0].message.content is missing or not text")
    text = _text(message.get("content"))
    _refuse_no_answer(body, message, choice.get("finish_reason"), text, structured, max_tokens)
    if text is None:
        raise AnswerShapeError("choices[0].message.content is missing or not text")
    return text


# Part types that carry the answer's text (OpenAI, Mistral, Databricks); reasoning parts are not the answer.
_TEXT_PARTS = frozenset({"text", "output_text"})
_REASONING_PARTS = frozenset({"reasoning", "thinking", "reasoning_text"})
_TOOL_FINISH = frozenset({"tool_calls", "function_call"})
PARTIAL_CHARS = 1000


def _text(content: Any) -> str | None:
    """Content as a string, or a list of typed parts whose text parts are joined; None when it is neither."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, Mapping) for p in content):
        texts = [p["text"] for p in content if p.get("type", "text") in _TEXT_PARTS and isinstance(p.get("text"), str)]
        return "".join(texts) if texts or not content else None  # parts, none of them text: no text at all
    return None


def _refuse_no_answer(body: Mapping[str, Any], message: Mapping[str, Any], finish: Any, text: str | None,
                      structured: bool, max_tokens: int | None) -> None:
    """Raise ``NoAnswer`` when the model gave no usable text, saying why, so a user can act on it."""
    calls = _tool_names(message)
    if calls and (not text or finish in _TOOL_FINISH):
        raise NoAnswer(f"the model answered with a tool call ({', '.join(calls)}) instead of text (finish_reason "
                       f"{finish!r}); ai_query runs no tools, so ask for a text answer")
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        raise NoAnswer(f"the model refused to answer: {refusal}")
    if finish == "content_filter":
        partial = f"; partial answer: {_clip(text)!r}" if text else ""
        raise NoAnswer(f"the endpoint's content filter withheld the answer (finish_reason 'content_filter'){partial}")
    if finish != "length":
        return
    limit = (f"max_tokens={max_tokens} from modelParameters" if max_tokens
             else "the endpoint's default, as modelParameters set no max_tokens")
    if not text or text.isspace():  # reasoning models often leave a newline or two and nothing else
        reasoning = _reasoning_tokens(body)
        if reasoning or _has_reasoning(message):
            count = f" ({reasoning} reasoning tokens)" if reasoning else ""
            raise NoAnswer(f"the model spent the whole output-token limit ({limit}) on reasoning{count} and gave no "
                           "answer (finish_reason 'length'); raise max_tokens or lower the reasoning effort")
        raise NoAnswer(f"the answer is empty: the output-token limit ({limit}) was reached before any text "
                       "(finish_reason 'length'); raise max_tokens")
    if structured and not _whole_json(text):
        raise NoAnswer(f"the answer was cut at the output-token limit ({limit}) before the requested JSON was "
                       f"complete (finish_reason 'length'); raise max_tokens. Partial answer: {_clip(text)!r}")


def _responses_request(config: EndpointConfig, prompt: Any, params: Mapping[str, Any] | None,
                       response_format: Mapping[str, Any] | None) -> dict[str, Any]:
    """``max_tokens`` is ``max_output_tokens`` there, and the format moves from ``response_format`` (with the
    schema under ``json_schema``) to ``text.format`` (with it beside ``type``)."""
    body: dict[str, Any] = {"model": config.model_name, "input": prompt}
    for key, value in (params or {}).items():
        body["max_output_tokens" if key == "max_tokens" else key] = value
    if response_format is not None:
        kind = response_format.get("type")
        details = response_format.get(kind) if kind == "json_schema" else None
        body["text"] = {"format": {"type": kind, **details} if isinstance(details, Mapping) else {"type": kind}}
    return body


def _responses_answer(body: Mapping[str, Any], structured: bool, max_tokens: int | None) -> str:
    """The text parts of the ``message`` items in ``output``; reasoning items are not the answer. An answer
    that is ``incomplete`` or has no text is refused as a chat answer with the same cause would be."""
    output = body.get("output")
    if not isinstance(output, list):
        raise AnswerShapeError("no 'output' list in the answer")
    texts, refusals, calls = [], [], []
    for item in output:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "function_call":
            calls.append({"function": {"name": item.get("name")}})
        elif item.get("type") == "message" and isinstance(item.get("content"), list):
            for part in item["content"]:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "output_text" and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
    text = "".join(texts) if texts else None
    incomplete = body.get("incomplete_details")
    reason = incomplete.get("reason") if isinstance(incomplete, Mapping) else None
    finish = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(str(reason), "stop")
    if text and finish == "stop" and body.get("status", "completed") == "completed" and not refusals:
        return text
    message = {"content": text, "refusal": " ".join(refusals) or None, "tool_calls": calls or None,
               "reasoning": "yes" if any(isinstance(i, Mapping) and i.get("type") == "reasoning" for i in output)
               else None}
    usage = body.get("usage")
    details = usage.get("output_tokens_details") if isinstance(usage, Mapping) else None
    chat_like = {"usage": {"completion_tokens_details": details}} if isinstance(details, Mapping) else {}
    _refuse_no_answer(chat_like, message, "tool_calls" if calls else finish, text, structured, max_tokens)
    if text is None:
        status = body.get("status")
        raise AnswerShapeError(f"the answer has no output_text (status {status!r})")
    return text


def _whole_json(text: str) -> bool:
    """A grammar-constrained server (llama.cpp) may finish the JSON and then spend the rest of the limit on
    whitespace or a closing code fence it strips itself, and still say "length": a document that parses
    whole was not cut."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


def _tool_names(message: Mapping[str, Any]) -> list[str]:
    """The functions a tool-call answer names: ``tool_calls`` (current) or ``function_call`` (legacy)."""
    calls = message.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        legacy = message.get("function_call")
        calls = [{"function": legacy}] if isinstance(legacy, Mapping) else []
    names = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        name = function.get("name") if isinstance(function, Mapping) else None
        names.append(name if isinstance(name, str) and name else "unnamed")
    return names


def _has_reasoning(message: Mapping[str, Any]) -> bool:
    """Servers name the model's thinking ``reasoning_content`` (DeepSeek, llama.cpp, vLLM), ``reasoning`` (Ollama,
    newer vLLM, OpenRouter) or put it in typed content parts (Databricks, Anthropic-style gateways)."""
    if any(isinstance(message.get(k), str) and message.get(k) for k in ("reasoning_content", "reasoning")):
        return True
    content = message.get("content")
    return isinstance(content, list) and any(isinstance(p, Mapping) and p.get("type") in _REASONING_PARTS
                                             for p in content)


def _reasoning_tokens(body: Mapping[str, Any]) -> int:
    usage = body.get("usage")
    details = usage.get("completion_tokens_details") if isinstance(usage, Mapping) else None
    return _int(details.get("reasoning_tokens")) if isinstance(details, Mapping) else 0


def _clip(text: str, limit: int = PARTIAL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


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
        try:
            vector, index = item["embedding"], item.get("index", position)
        except (KeyError, TypeError, AttributeError):
            vector = index = None
        if vector.__class__ is not list:
            vector = _from_base64(vector, position)
        if (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < count
                or ordered[index] is not None):
            raise AnswerShapeError(f"data[{position}] has a bad index {index!r}")
        ordered[index] = vector
    return ordered


def _from_base64(vector: Any, position: int) -> list[float]:
    """``encoding_format: "base64"`` (OpenAI, vLLM): the vector's little-endian float32 bytes in base64."""
    if not isinstance(vector, str):
        raise AnswerShapeError(f"data[{position}] has no 'embedding' list")
    try:
        raw = base64.b64decode(vector, validate=True)
    except (binascii.Error, ValueError):
        raise AnswerShapeError(f"data[{position}].embedding is text but not base64") from None
    if len(raw) % 4:
        raise AnswerShapeError(f"data[{position}].embedding decodes to {len(raw)} bytes, not float32 values")
    floats = array.array("f", raw)
    if sys.byteorder == "big":
        floats.byteswap()
    return floats.tolist()


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


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """What an error body says: the endpoint's own words, its error code or type (``insufficient_quota``,
    ``REQUEST_LIMIT_EXCEEDED``), and the HTTP status that code stands for, when it names one."""

    text: str
    kind: str | None = None
    status: int | None = None


def error_text(content: bytes, limit: int = 1000) -> str:
    """The endpoint's own words from an error body: OpenAI ``error.message``, Databricks ``error_code: message``."""
    return error_info(content, limit).text


def error_info(content: bytes, limit: int = 1000) -> ErrorInfo:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return ErrorInfo(_plain_text(content.decode("utf-8", "replace"), limit))
    info = _described_error(body) if isinstance(body, Mapping) else None
    if info is not None:
        return info
    text = json.dumps(body)
    return ErrorInfo((text[:limit] + "...") if len(text) > limit else text)


def embedded_error(body: Any) -> ErrorInfo | None:
    """The error some routers and gateways send inside an HTTP 200 body, with no answer beside it."""
    if not isinstance(body, Mapping) or any(key in body for key in ("choices", "data", "predictions")):
        return None
    return _described_error(body)


def _described_error(body: Mapping[str, Any]) -> ErrorInfo | None:
    error = body.get("error")
    if isinstance(error, Mapping) and error.get("message"):
        code, kind = error.get("code"), error.get("type")
        named = _status_of(code)
        word = code if isinstance(code, str) and named is None and code else kind if isinstance(kind, str) else None
        text = f"{word}: {error['message']}" if word else str(error["message"])
        # either may say it, and it must not be lost
        quota = next((k for k in (code, kind) if isinstance(k, str) and k in QUOTA_KINDS), None)
        return ErrorInfo(text, quota or word, named or _kind_status(code) or _kind_status(kind))
    if isinstance(error, str) and error:  # OAuth (RFC 6749) puts the words in error_description
        description = body.get("error_description")
        return ErrorInfo(f"{error}: {description}" if description else error, error, _kind_status(error))
    if body.get("error_code") or body.get("message"):
        code = body.get("error_code")
        text = ": ".join(str(body[k]) for k in ("error_code", "message") if body.get(k))
        return ErrorInfo(text, code if isinstance(code, str) else None, _kind_status(code))
    return None


def _status_of(code: Any) -> int | None:
    """A numeric error code that is an HTTP status (OpenRouter and LiteLLM send ``"code": 429``)."""
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    return code if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599 else None


def _kind_status(kind: Any) -> int | None:
    return _KIND_STATUS.get(kind) if isinstance(kind, str) else None


# Error codes and types of OpenAI, Anthropic-style gateways and Databricks, as the HTTP status each stands for.
_KIND_STATUS = {
    "rate_limit_exceeded": 429, "rate_limit_error": 429, "insufficient_quota": 429, "REQUEST_LIMIT_EXCEEDED": 429,
    "RESOURCE_EXHAUSTED": 429, "server_error": 500, "internal_error": 500, "api_error": 500, "INTERNAL_ERROR": 500,
    "overloaded_error": 503, "service_unavailable": 503, "TEMPORARILY_UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
    "timeout": 504, "invalid_request_error": 400, "BAD_REQUEST": 400, "INVALID_PARAMETER_VALUE": 400,
    "context_length_exceeded": 400, "authentication_error": 401, "invalid_api_key": 401, "UNAUTHENTICATED": 401,
    "permission_error": 403, "PERMISSION_DENIED": 403, "not_found_error": 404, "model_not_found": 404,
    "RESOURCE_DOES_NOT_EXIST": 404, "ENDPOINT_NOT_FOUND": 404,
}

_TAGS = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.S | re.I)
_TITLE = re.compile(r"<title[^>]*>(.*?)</title\s*>", re.S | re.I)


def _plain_text(text: str, limit: int) -> str:
    """A body that is not JSON, shown as a person would read it: an HTML page from a proxy by its title (or its
    text without tags), anything else as it came."""
    text = text.strip()
    if text[:1] == "<" and re.match(r"<(!doctype\s+html|html|head|body)\b", text, re.I):
        title = _TITLE.search(text)
        words = " ".join(html.unescape(_TAGS.sub(" ", title.group(1) if title else text)).split())
        text = f"an HTML page: {words}" if words else "an HTML page"
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")
