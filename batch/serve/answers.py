"""The answer bodies of the data plane, one per task, each in its provider's documented shape.

Chat follows OpenAI's Chat Completions object (``chat.completion``, which Databricks Model Serving also
sends), completions OpenAI's legacy ``text_completion``, embeddings OpenAI's embedding ``list`` (float lists,
or base64 little-endian float32 when asked), responses OpenAI's Responses API ``response`` object, and custom
models Databricks' ``{"predictions": [...]}``. Text comes from ``simulate.py``; a ``[[shape:NAME]]``
directive in the prompt gives the chat and responses answers one of the shapes listed there.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable
from typing import Any

from . import simulate as sim
from .parse import ParsedRequest
from .state import State

__all__ = ["ANSWERS", "Answer"]

Answer = Callable[[ParsedRequest, str, State], tuple[dict, int, int]]
"""An answer body for a parsed request, the model name it reports and the server state (ids, embedding size),
with its prompt and completion token counts."""


def _max_tokens(body: dict) -> int | None:
    value = body.get("max_tokens", body.get("max_completion_tokens"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _n(body: dict) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and 1 <= n <= 128 else 1


def _format(body: dict) -> dict | None:
    fmt = body.get("response_format")
    return fmt if isinstance(fmt, dict) else None


def _chat(parsed: ParsedRequest, model: str, state: State) -> tuple[dict, int, int]:
    body = parsed.body
    prompt = parsed.texts[0]
    text, finish = sim.simulated_reply(prompt, _max_tokens(body), _format(body))
    n = _n(body)
    shape = sim.answer_shape(prompt)
    details = None
    if shape:
        message, finish, completion, details = sim.shaped_message(shape, prompt, text, finish, _format(body),
                                                                  _max_tokens(body))
        completion *= n
    else:
        message, completion = {"role": "assistant", "content": text}, sim.count_tokens(text) * n
    choices = [] if shape == "no-choices" else [{"index": i, "message": message, "finish_reason": finish}
                                                 for i in range(n)]
    prompt_tokens = sim.chat_prompt_tokens(body["messages"])
    usage = _usage(prompt_tokens, completion)
    if details:
        usage["completion_tokens_details"] = details
    return {"id": f"chatcmpl-{next(state.ids):x}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage}, prompt_tokens, completion


def _responses(parsed: ParsedRequest, model: str, state: State) -> tuple[dict, int, int]:
    """The chat answer for the same prompt (shapes included), as Responses API output items."""
    body, prompt = parsed.body, parsed.texts[0]
    text_options = body.get("text")
    given = text_options.get("format") if isinstance(text_options, dict) else None
    fmt = None
    if isinstance(given, dict):  # back to the Chat Completions form the simulator reads
        fmt = {"type": given.get("type"), "json_schema": {k: v for k, v in given.items() if k != "type"}}
    limit = body.get("max_output_tokens")
    limit = limit if isinstance(limit, int) and not isinstance(limit, bool) else None
    text, finish = sim.simulated_reply(prompt, limit, fmt)
    shape, details = sim.answer_shape(prompt), None
    if shape:
        message, finish, completion, details = sim.shaped_message(shape, prompt, text, finish, fmt, limit)
    else:
        message, completion = {"role": "assistant", "content": text}, sim.count_tokens(text)
    given_input = body["input"]
    items = [{"content": given_input}] if isinstance(given_input, str) else given_input
    prompt_tokens = sim.count_tokens(str(body.get("instructions") or "")) + sim.chat_prompt_tokens(items)
    output = [] if shape == "no-choices" else _output_items(message, next(state.ids))
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish)
    usage = {"input_tokens": prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": completion, "total_tokens": prompt_tokens + completion,
             "output_tokens_details": {"reasoning_tokens": (details or {}).get("reasoning_tokens", 0)}}
    return {"id": f"resp_{next(state.ids):x}", "object": "response", "created_at": int(time.time()),
            "status": "incomplete" if reason else "completed",
            "incomplete_details": {"reason": reason} if reason else None, "error": None, "model": model,
            "output": output, "usage": usage}, prompt_tokens, completion


def _output_items(message: dict, number: int) -> list[dict]:
    """A chat message as the Responses API's output: reasoning, function_call and message items."""
    items: list[dict] = []
    content = message.get("content")
    thinking = message.get("reasoning_content") or message.get("reasoning")
    if thinking or isinstance(content, list) and any(p.get("type") == "reasoning" for p in content):
        items.append({"type": "reasoning", "id": f"rs_{number:x}",
                      "summary": [{"type": "summary_text", "text": thinking or ""}]})
    for call in message.get("tool_calls") or []:
        items.append({"type": "function_call", "id": f"fc_{number:x}", "call_id": call["id"], "status": "completed",
                      "name": call["function"]["name"], "arguments": call["function"]["arguments"]})
    parts = [{"type": "output_text", "text": p["text"], "annotations": []} for p in content
             if p.get("type") == "text"] if isinstance(content, list) else \
        [{"type": "output_text", "text": content, "annotations": []}] if isinstance(content, str) and content else []
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts:
        items.append({"type": "message", "id": f"msg_{number:x}", "status": "completed", "role": "assistant",
                      "content": parts})
    return items


def _completions(parsed: ParsedRequest, model: str, state: State) -> tuple[dict, int, int]:
    limit, n, completion = _max_tokens(parsed.body), _n(parsed.body), 0
    choices: list[dict] = []
    for prompt in parsed.texts:
        text, finish = sim.simulated_answer(prompt, limit)
        completion += sim.count_tokens(text) * n
        choices.extend({"index": len(choices), "text": text, "finish_reason": finish, "logprobs": None}
                       for _ in range(n))
    prompt_tokens = sum(sim.count_tokens(t) for t in parsed.texts)
    return {"id": f"cmpl-{next(state.ids):x}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": _usage(prompt_tokens, completion)}, prompt_tokens, completion


def _embeddings(parsed: ParsedRequest, model: str, state: State) -> tuple[dict, int, int]:
    dim = parsed.body.get("dimensions")
    dim = dim if isinstance(dim, int) and dim > 0 else state.settings.embedding_dim
    as_base64 = parsed.body.get("encoding_format") == "base64"
    data = [{"object": "embedding", "index": i, "embedding": _vector(t, dim, as_base64)}
            for i, t in enumerate(parsed.texts)]
    tokens = sum(sim.count_tokens(t) for t in parsed.texts)
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, tokens, 0


def _custom(parsed: ParsedRequest, model: str, state: State) -> tuple[dict, int, int]:
    return {"predictions": [sim.simulated_prediction(r) for r in parsed.records]}, 0, 0


ANSWERS: dict[str, Answer] = {"chat": _chat, "responses": _responses, "completions": _completions,
                              "embeddings": _embeddings, "custom": _custom}


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _vector(text: str, dim: int, as_base64: bool) -> Any:
    vector = sim.simulated_embedding(text, dim)
    if not as_base64:
        return vector
    return base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode()
