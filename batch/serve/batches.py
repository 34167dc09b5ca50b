"""OpenAI's Files and Batches endpoints, simulated: JSONL in, answers after a delay, some lines failed.

``POST /v1/files`` (multipart, ``purpose=batch``) keeps an input file; ``POST /v1/batches``
starts a batch over it; ``GET /v1/batches/{id}`` reports it, and completes it once
``delay_s`` has passed since it was created: each line is answered by the same simulator
as a synchronous call (so answers and tokens equal the synchronous ones), a line whose
prompt carries ``[[fail:NNN]]`` goes to the error file with that status, and
``GET /v1/files/{id}/content`` returns the output and error files. Object shapes follow
OpenAI's API reference (file, batch, request_counts, per-line output objects).
``/_admin/batches`` shows what was submitted (``requests_submitted`` counts every line of
every batch created) and sets ``delay_s``.
"""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from aiohttp import BodyPartReader, web

from . import simulate as sim
from .answers import ANSWERS
from .parse import BadRequest, ParsedRequest
from .replies import error_payload
from .state import STATE

__all__ = ["add_routes", "BatchStore"]

URL_TASKS = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
             "/v1/responses": "responses"}
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


class BatchStore:
    """Files and batches of one server, and the counts a test checks."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.delay_s = 0.0
        self.reset()

    def reset(self) -> None:
        self.stats = {"files_uploaded": 0, "batches_created": 0, "requests_submitted": 0, "lines_answered": 0,
                      "lines_failed": 0, "prompt_tokens": 0, "completion_tokens": 0, "batches_completed": 0}

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):06d}"

    def keep_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = self.new_id("file")
        self.contents[file_id] = content
        self.files[file_id] = {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                               "filename": filename, "purpose": purpose, "status": "processed",
                               "expires_at": None, "status_details": None}
        return self.files[file_id]


BATCHES = web.AppKey("batches", BatchStore)


def _store(request: web.Request) -> BatchStore:
    return request.app[BATCHES]


def _fail(status: int, message: str) -> web.Response:
    return web.json_response(error_payload(status, message, False), status=status)


async def upload_file(request: web.Request) -> web.Response:
    store = _store(request)
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError):
        return _fail(400, "a file upload is multipart/form-data with 'purpose' and 'file'")
    purpose, filename, content = None, "upload.jsonl", None
    async for part in reader:
        if not isinstance(part, BodyPartReader):  # a nested multipart carries neither field
            continue
        if part.name == "purpose":
            purpose = (await part.text()).strip()
        elif part.name == "file":
            filename = part.filename or filename
            content = bytes(await part.read(decode=False))
    if content is None or purpose is None:
        return _fail(400, "the upload needs both 'purpose' and 'file'")
    if purpose == "batch":
        lines = [line for line in content.splitlines() if line.strip()]
        if len(content) > MAX_BYTES or len(lines) > MAX_REQUESTS:
            return _fail(400, f"a batch input file holds at most {MAX_REQUESTS} requests and {MAX_BYTES} bytes "
                              f"(got {len(lines)} requests, {len(content)} bytes)")
    store.stats["files_uploaded"] += 1
    return web.json_response(store.keep_file(content, filename, purpose))


async def get_file(request: web.Request) -> web.Response:
    found = _store(request).files.get(request.match_info["file_id"])
    return web.json_response(found) if found else _fail(404, "no such file")


async def file_content(request: web.Request) -> web.Response:
    content = _store(request).contents.get(request.match_info["file_id"])
    if content is None:
        return _fail(404, "no such file")
    return web.Response(body=content, content_type="application/octet-stream")


async def create_batch(request: web.Request) -> web.Response:
    store = _store(request)
    try:
        body = await request.json()
    except ValueError:
        return _fail(400, "request body is not valid JSON")
    file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
    if file_id not in store.contents:
        return _fail(400, f"no such input file: {file_id!r}")
    if endpoint not in URL_TASKS:
        return _fail(400, f"endpoint must be one of {sorted(URL_TASKS)}, got {endpoint!r}")
    lines = [line for line in store.contents[file_id].splitlines() if line.strip()]
    now = int(time.time())
    batch_id = store.new_id("batch")
    store.batches[batch_id] = {
        "id": batch_id, "object": "batch", "endpoint": endpoint, "errors": None, "input_file_id": file_id,
        "completion_window": body.get("completion_window", "24h"), "status": "in_progress",
        "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": now,
        "expires_at": now + 24 * 3600, "finalizing_at": None, "completed_at": None, "failed_at": None,
        "expired_at": None, "cancelling_at": None, "cancelled_at": None,
        "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
        "metadata": body.get("metadata") or None, "_created": time.monotonic()}
    store.stats["batches_created"] += 1
    store.stats["requests_submitted"] += len(lines)
    return web.json_response(_shown(store.batches[batch_id]))


def _shown(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _complete(request: web.Request, store: BatchStore, batch: dict[str, Any]) -> None:
    """Answer every line as a synchronous call would be answered, then publish the output and error files."""
    state = request.app[STATE]
    outputs, errors = [], []
    for number, raw in enumerate(store.contents[batch["input_file_id"]].splitlines()):
        if not raw.strip():
            continue
        line_id = f"batch_req_{batch['id']}_{number}"
        try:
            item = json.loads(raw)
            task = URL_TASKS.get(item.get("url"))
            if task is None:
                raise BadRequest(f"url must be one of {sorted(URL_TASKS)}")
            parsed = ParsedRequest(task, item["body"])
        except (ValueError, KeyError, TypeError, AttributeError, BadRequest) as exc:
            errors.append({"id": line_id, "custom_id": item.get("custom_id") if isinstance(item, dict) else None,
                           "response": None, "error": {"code": "invalid_request", "message": str(exc)}})
            continue
        status = next((s for s in map(sim.failure_status, parsed.texts) if s), None)
        response: dict[str, Any] = {"request_id": f"req_{batch['id']}_{number}"}
        if status:
            response.update(status_code=status, body=error_payload(status, f"simulated failure {status}", False))
            errors.append({"id": line_id, "custom_id": item.get("custom_id"), "response": response, "error": None})
            continue
        model = str(parsed.body.get("model") or "simulated")
        payload, prompt_tokens, completion_tokens = ANSWERS[task](parsed, model, state)
        store.stats["prompt_tokens"] += prompt_tokens
        store.stats["completion_tokens"] += completion_tokens
        response.update(status_code=200, body=payload)
        outputs.append({"id": line_id, "custom_id": item.get("custom_id"), "response": response, "error": None})
    store.stats["lines_answered"] += len(outputs)
    store.stats["lines_failed"] += len(errors)
    store.stats["batches_completed"] += 1
    encode = lambda lines: "".join(json.dumps(line) + "\n" for line in lines).encode()  # noqa: E731
    if outputs:
        batch["output_file_id"] = store.keep_file(encode(outputs), f"{batch['id']}_output.jsonl",
                                                  "batch_output")["id"]
    if errors:
        batch["error_file_id"] = store.keep_file(encode(errors), f"{batch['id']}_error.jsonl", "batch_output")["id"]
    now = int(time.time())
    batch.update(status="completed", finalizing_at=now, completed_at=now,
                 request_counts={"total": len(outputs) + len(errors), "completed": len(outputs),
                                 "failed": len(errors)})


async def get_batch(request: web.Request) -> web.Response:
    store = _store(request)
    batch = store.batches.get(request.match_info["batch_id"])
    if batch is None:
        return _fail(404, "no such batch")
    # judged by the delay now in force, so a test can hold batches and then release them
    if batch["status"] == "in_progress" and time.monotonic() >= batch["_created"] + store.delay_s:
        _complete(request, store, batch)
    return web.json_response(_shown(batch))


async def list_batches(request: web.Request) -> web.Response:
    """Newest first, ``limit`` (1-100, default 20) after the id ``after``, as OpenAI pages them."""
    store = _store(request)
    try:
        limit = max(1, min(100, int(request.query.get("limit", 20))))
    except ValueError:
        return _fail(400, "limit must be a whole number")
    ordered = sorted(store.batches.values(), key=lambda b: b["id"], reverse=True)
    after = request.query.get("after")
    if after:
        ordered = [b for b in ordered if b["id"] < after]
    page = [_shown(b) for b in ordered[:limit]]
    return web.json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                              "last_id": page[-1]["id"] if page else None, "has_more": len(ordered) > limit})


async def cancel_batch(request: web.Request) -> web.Response:
    batch = _store(request).batches.get(request.match_info["batch_id"])
    if batch is None:
        return _fail(404, "no such batch")
    if batch["status"] not in TERMINAL:
        now = int(time.time())
        batch.update(status="cancelled", cancelling_at=now, cancelled_at=now)
    return web.json_response(_shown(batch))


async def admin_batches(request: web.Request) -> web.Response:
    store = _store(request)
    if request.method == "POST":
        changes = await request.json()
        if "delay_s" in changes:
            store.delay_s = float(changes["delay_s"])
        if changes.get("reset"):
            store.reset()
    return web.json_response({**store.stats, "delay_s": store.delay_s, "batches": len(store.batches)})


def add_routes(app: web.Application) -> None:
    app[BATCHES] = BatchStore()
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_get("/v1/files/{file_id}/content", file_content)
    app.router.add_post("/v1/batches", create_batch)
    app.router.add_get("/v1/batches", list_batches)
    app.router.add_get("/v1/batches/{batch_id}", get_batch)
    app.router.add_post("/v1/batches/{batch_id}/cancel", cancel_batch)
    app.router.add_route("*", "/_admin/batches", admin_batches)
