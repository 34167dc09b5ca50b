"""The simulator behind the local endpoint: deterministic answers, no I/O.

Everything here is a pure function of its arguments so that tests can compute
the exact answer the server gives for any prompt, in any process, on any
machine. Hashes come from hashlib, never from Python's salted ``hash()``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import uuid
from typing import Any

PREFIX = "[simulated] "
FAIL_RE = re.compile(r"\[\[fail:(\d{3})\]\]")
FLAKY_RE = re.compile(r"\[\[flaky:(\d+):([A-Za-z0-9-]+)\]\]")
NONCONFORMING = "[[nonconforming]]"
BADJSON = "[[badjson]]"
MAX_DEPTH = 8
SHAPE_RE = re.compile(r"\[\[shape:([a-z0-9-]+)\]\]")
FAULT_RE = re.compile(r"\[\[fault:([A-Za-z0-9-]+)\]\]")
# Answers in the shapes real endpoints send besides plain text, each as its provider documents it:
#   tool-call   content null, tool_calls naming get_weather, finish_reason "tool_calls" (OpenAI)
#   refusal     content null, refusal with a sentence (OpenAI structured outputs)
#   cut         the answer cut at the output-token limit, JSON cut inside a string, finish_reason "length"
#   reasoning   content "", reasoning_content, reasoning_tokens in usage, finish_reason "length" (DeepSeek, vLLM,
#               llama.cpp)
#   thinking    content null, reasoning (Ollama, newer vLLM), no token details, finish_reason "length"
#   parts       content as typed parts: a reasoning part and two text parts (Databricks, Mistral)
#   filtered    content null, finish_reason "content_filter" (Azure OpenAI)
#   no-usage    no usage object (Ollama, llama.cpp and proxies may leave it out)
#   no-choices  an empty choices list
#   badutf8     the text ends in "café" with the last byte of "é" cut off: the body is not valid UTF-8
SHAPES = frozenset("tool-call refusal cut reasoning thinking parts filtered no-usage no-choices badutf8".split())
REFUSAL = "I'm sorry, but I can't help with that request."
REASONING = "Let me think about this step by step before I answer."
TOOL_NAME, TOOL_ARGUMENTS = "get_weather", '{"city": "Paris"}'
BADUTF8_TAIL = " café"
DEFAULT_MAX_TOKENS = 256


def count_tokens(text: str) -> int:
    """Whitespace words stand in for tokens so usage is predictable in tests."""
    if not text:
        return 0
    return len(text.split()) or 1


def message_text(content: Any) -> str:
    """Chat content may be a string or a list of typed parts; only text counts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return "" if content is None else str(content)


def chat_prompt(messages: list[dict]) -> str:
    """The answer follows the last user turn; system and assistant turns only count as tokens."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message.get("content"))
    return ""


def chat_prompt_tokens(messages: list[dict]) -> int:
    return sum(count_tokens(message_text(m.get("content"))) for m in messages)


def simulated_answer(prompt: str, max_tokens: int | None = None) -> tuple[str, str]:
    """Echo the prompt behind a visible marker so nobody mistakes it for a model."""
    text = PREFIX + prompt
    if max_tokens is not None and count_tokens(text) > max_tokens:
        return " ".join(text.split()[: max(0, max_tokens)]), "length"
    return text, "stop"


def simulated_reply(
    prompt: str, max_tokens: int | None = None, response_format: dict | None = None
) -> tuple[str, str]:
    """The text and finish reason the server answers for one prompt.

    JSON answers are never cut by ``max_tokens``: they would stop being JSON.
    """
    kind = (response_format or {}).get("type", "text")
    if kind in ("json_object", "json_schema"):
        return simulated_json(prompt, response_format), "stop"
    return simulated_answer(prompt, max_tokens)


def simulated_json(prompt: str, response_format: dict | None) -> str:
    """A document fitting the requested format, unless a directive asks for a broken one.

    ``[[badjson]]`` and ``[[nonconforming]]`` let tests script the rows whose
    structured output a client must reject.
    """
    kind = (response_format or {}).get("type", "text")
    if kind not in ("json_object", "json_schema"):
        return simulated_answer(prompt)[0]
    if BADJSON in prompt:
        return "this is not JSON: " + prompt
    if NONCONFORMING in prompt:
        return json.dumps({"unexpected": True})
    spec = (response_format or {}).get("json_schema")
    schema = spec.get("schema") if kind == "json_schema" and isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        return json.dumps({"answer": simulated_answer(prompt)[0]})
    return json.dumps(_value(schema, schema, prompt, "", 0))


def simulated_embedding(text: str, dim: int) -> list[float]:
    """A unit vector from sha256 blocks, identical across processes and machines."""
    raw: list[float] = []
    block = 0
    while len(raw) < dim:
        digest = hashlib.sha256(f"{text}\x00{block}".encode()).digest()
        raw.extend(u / 2147483648.0 - 1.0 for u in struct.unpack(">8I", digest))
        block += 1
    raw = raw[:dim]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [v / norm for v in raw]


def simulated_prediction(record: dict) -> float:
    """Numbers add up, strings add their length; anything else adds nothing."""
    total = 0.0
    for value in record.values():
        if isinstance(value, (int, float)):
            total += float(value)
        elif isinstance(value, str):
            total += len(value)
    return total


def answer_shape(prompt: str) -> str | None:
    """The ``[[shape:NAME]]`` a prompt asks for (see ``SHAPES``), if any."""
    match = SHAPE_RE.search(prompt) if "[[" in prompt else None
    return match.group(1) if match and match.group(1) in SHAPES else None


def fault_directive(prompt: str) -> str | None:
    """``[[fault:KIND]]``: every call for the prompt gets that fault."""
    match = FAULT_RE.search(prompt)
    return match.group(1) if match else None


def shaped_message(shape: str, prompt: str, text: str, finish: str, response_format: dict | None,
                   max_tokens: int | None) -> tuple[dict, str, int, dict | None]:
    """The message, finish reason, completion tokens and ``completion_tokens_details`` of a shaped chat answer."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    budget = max_tokens or DEFAULT_MAX_TOKENS
    if shape == "tool-call":
        message.update(content=None, refusal=None, tool_calls=[{
            "id": f"call_{stable_int(prompt, 'call') % 10**12:012d}", "type": "function",
            "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS}}])
        return message, "tool_calls", count_tokens(TOOL_ARGUMENTS), None
    if shape == "refusal":
        message.update(content=None, refusal=REFUSAL)
        return message, "stop", count_tokens(REFUSAL), None
    if shape == "cut":
        message["content"] = cut_answer(text, response_format, max_tokens)
        return message, "length", budget, None
    if shape == "reasoning":
        message.update(content="", reasoning_content=REASONING)
        return message, "length", budget, {"reasoning_tokens": budget}
    if shape == "thinking":
        message.update(content=None, reasoning=REASONING)
        return message, "length", budget, None
    if shape == "parts":
        middle = len(text) // 2
        message["content"] = [{"type": "reasoning", "summary": [{"type": "summary_text", "text": REASONING}]},
                              {"type": "text", "text": text[:middle]}, {"type": "text", "text": text[middle:]}]
        return message, finish, count_tokens(text), None
    if shape == "filtered":
        message["content"] = None
        return message, "content_filter", 0, None
    if shape == "badutf8":
        message["content"] = text + BADUTF8_TAIL
        return message, finish, count_tokens(message["content"]), None
    return message, finish, count_tokens(text), None


def cut_answer(text: str, response_format: dict | None, max_tokens: int | None) -> str:
    """An answer stopped at the output-token limit: JSON three characters into its first string value, text at
    ``max_tokens`` words (or half its words)."""
    if (response_format or {}).get("type") in ("json_object", "json_schema"):
        start = text.find('": "')
        return text[: start + 7] if start >= 0 else text[: len(text) // 2]
    words = text.split()
    return " ".join(words[: max_tokens if max_tokens else max(1, len(words) // 2)])


def failure_status(prompt: str) -> int | None:
    match = FAIL_RE.search(prompt)
    return int(match.group(1)) if match else None


def flaky_directive(prompt: str) -> tuple[int, str] | None:
    match = FLAKY_RE.search(prompt)
    return (int(match.group(1)), match.group(2)) if match else None


def stable_int(*parts: str) -> int:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _value(schema: Any, root: dict, prompt: str, path: str, depth: int) -> Any:
    """A deterministic instance of ``schema``; depth-capped so recursive schemas end."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return _string({}, prompt, path)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        options = schema["enum"]
        return options[stable_int(prompt, path, "enum") % len(options)]
    branches = schema.get("anyOf") or schema.get("oneOf")
    if branches:
        return _value(_first_non_null(branches, root), root, prompt, path, depth)
    if schema.get("allOf"):
        return _value(_merge_all_of(schema, root), root, prompt, path, depth)
    return _typed(schema, _type_of(schema), root, prompt, path, depth)


def _typed(schema: dict, kind: str, root: dict, prompt: str, path: str, depth: int) -> Any:
    if kind == "object":
        return _object(schema, root, prompt, path, depth)
    if kind == "array":
        return _array(schema, root, prompt, path, depth)
    if kind == "integer":
        return _integer(schema, prompt, path)
    if kind == "number":
        return _number(schema, prompt, path)
    if kind == "boolean":
        return stable_int(prompt, path, "bool") % 2 == 0
    if kind == "null":
        return None
    return _string(schema, prompt, path)


def _resolve(schema: Any, root: dict) -> Any:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 32:
        target: Any = root
        for part in schema["$ref"].lstrip("#").strip("/").split("/"):
            if part:
                target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
        rest = {k: v for k, v in schema.items() if k != "$ref"}
        schema = {**target, **rest} if isinstance(target, dict) else target
        seen += 1
    return schema


def _first_non_null(branches: list, root: dict) -> Any:
    for branch in branches:
        resolved = _resolve(branch, root)
        if not (isinstance(resolved, dict) and resolved.get("type") == "null"):
            return resolved
    return branches[0]


def _merge_all_of(schema: dict, root: dict) -> dict:
    merged: dict = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        part = _resolve(part, root)
        if not isinstance(part, dict):
            continue
        props = {**merged.get("properties", {}), **part.get("properties", {})}
        required = list(dict.fromkeys(merged.get("required", []) + part.get("required", [])))
        merged = {**part, **merged, "properties": props, "required": required}
    if not merged.get("properties"):
        merged.pop("properties", None)
    return merged


def _type_of(schema: dict) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind:
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema:
        return "array"
    return "string"


def _object(schema: dict, root: dict, prompt: str, path: str, depth: int) -> dict:
    props = schema.get("properties") or {}
    if depth >= MAX_DEPTH:
        props = {k: v for k, v in props.items() if k in schema.get("required", [])}
    return {name: _value(sub, root, prompt, f"{path}/{name}", depth + 1) for name, sub in props.items()}


def _array(schema: dict, root: dict, prompt: str, path: str, depth: int) -> list:
    count = max(2, schema.get("minItems", 0))
    if "maxItems" in schema:
        count = min(count, schema["maxItems"])
    if depth >= MAX_DEPTH:
        count = schema.get("minItems", 0)
    items = schema.get("items", {})
    return [_value(items, root, prompt, f"{path}/{i}", depth + 1) for i in range(count)]


def _bounds(schema: dict) -> tuple[float, float]:
    low = schema.get("exclusiveMinimum", schema.get("minimum"))
    high = schema.get("exclusiveMaximum", schema.get("maximum"))
    if low is None:
        low = 0 if high is None or high > 0 else high - 100
    if high is None:
        high = low + 100
    return low, high


def _integer(schema: dict, prompt: str, path: str) -> int:
    low, high = _bounds(schema)
    low = math.floor(low) + 1 if "exclusiveMinimum" in schema else math.ceil(low)
    high = math.ceil(high) - 1 if "exclusiveMaximum" in schema else math.floor(high)
    if high < low:
        return low
    return low + stable_int(prompt, path, "int") % (high - low + 1)


def _number(schema: dict, prompt: str, path: str) -> float:
    """Strictly inside the range, so exclusive bounds hold too."""
    low, high = _bounds(schema)
    value = low + (high - low) * ((stable_int(prompt, path, "num") % 9999 + 1) / 10000)
    rounded = round(value, 4)
    return rounded if low < rounded < high else value


def _string(schema: dict, prompt: str, path: str) -> str:
    fmt = schema.get("format")
    day = 1 + stable_int(prompt, path, "day") % 28
    if fmt == "date":
        return f"2024-01-{day:02d}"
    if fmt == "date-time":
        return f"2024-01-{day:02d}T12:00:00Z"
    if fmt == "email":
        return f"user{day}@example.com"
    if fmt == "uuid":
        return str(uuid.UUID(int=stable_int(prompt, path, "uuid") << 64 | stable_int(path, prompt)))
    name = path.rsplit("/", 1)[-1] or "value"
    text = f"{name}: " + " ".join(prompt.split()[:6])
    return _fit_length(text.strip(), schema)


def _fit_length(text: str, schema: dict) -> str:
    minimum = schema.get("minLength", 0)
    if len(text) < minimum:
        text = text + "." * (minimum - len(text))
    if "maxLength" in schema:
        text = text[: schema["maxLength"]]
    return text
