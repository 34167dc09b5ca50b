"""The two ways to post: ``AiohttpTransport``'s fast path and httpx requests through any transport.

Each test runs one small aiohttp server in the test's own event loop and compares what the
fast path, the httpx path over the same ``AiohttpTransport`` and httpx's own transport send
and get back: they must not differ in anything the client reads.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx
import pytest
from aiohttp import web

from batch.client import EndpointClient
from batch.config import EndpointConfig
from batch.transport import AiohttpTransport, make_transport, poster

ANSWER = {"choices": [{"message": {"role": "assistant", "content": "é ok"}}],
          "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}}
TIMEOUTS = {"connect": 5.0, "read": 5.0, "write": 5.0, "pool": 5.0}
SEEN = web.AppKey("seen", list)


async def _handler(request: web.Request) -> web.Response:
    request.app[SEEN].append((request.headers.copy(), await request.read()))
    mode = request.path.rsplit("/", 1)[-1]
    if mode == "gzip":
        return web.Response(body=gzip.compress(json.dumps(ANSWER).encode()),
                            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    if mode == "limited":
        return web.json_response({"error": {"message": "slow down"}}, status=429, headers={"Retry-After": "7"})
    return web.json_response(ANSWER)


async def _serve() -> tuple[web.AppRunner, str, list]:
    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/{mode}", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", app[SEEN]


class _Generic(httpx.AsyncBaseTransport):
    """An AiohttpTransport seen only as an httpx transport, so the client takes its httpx path."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


TRANSPORTS = {"fast": AiohttpTransport, "httpx-over-aiohttp": _Generic, "httpx": lambda: make_transport("httpx")}


def _post_everywhere(mode: str, headers: dict[str, str] | None = None) -> tuple[dict, list]:
    """(status, lower-cased headers, body) per way of posting, and what the server saw from each."""
    async def go():
        runner, url, seen = await _serve()
        out = {}
        try:
            for name, make in TRANSPORTS.items():
                transport = make()
                post = poster(transport, f"{url}/{mode}", TIMEOUTS)
                try:
                    sent = post.prepare(httpx.Headers({"Host": url.split("//")[1], "content-type": "application/json",
                                                       **(headers or {})}))
                    status, got, body = await post.send(sent, b'{"q": 1}')
                finally:
                    await transport.aclose()
                out[name] = (status, {k.lower(): v for k, v in got.items()}, body)
        finally:
            await runner.cleanup()
        return out, seen
    return asyncio.run(go())


def test_the_fast_path_is_taken_only_for_our_aiohttp_transport():
    assert type(poster(AiohttpTransport(), "http://h/x", TIMEOUTS)).__name__ == "_AiohttpPoster"
    assert type(poster(_Generic(), "http://h/x", TIMEOUTS)).__name__ == "_HttpxPoster"


def test_answers_read_the_same_every_way():
    out, _ = _post_everywhere("plain")
    bodies = {name: json.loads(body) for name, (_, _, body) in out.items()}
    assert all(status == 200 for status, _, _ in out.values())
    assert all(body == ANSWER for body in bodies.values())


def test_compressed_answers_are_decoded_every_way():
    out, seen = _post_everywhere("gzip")
    assert {name: json.loads(body) for name, (_, _, body) in out.items()} == {name: ANSWER for name in TRANSPORTS}
    assert all("gzip" in headers.get("Accept-Encoding", "") for headers, _ in seen[:2])  # aiohttp asks for it


def test_refusals_carry_status_and_headers_every_way():
    out, _ = _post_everywhere("limited")
    for status, headers, body in out.values():
        assert status == 429 and headers["retry-after"] == "7"
        assert json.loads(body) == {"error": {"message": "slow down"}}


def test_the_same_request_goes_out_every_way():
    _, seen = _post_everywhere("plain", {"Authorization": "Bearer t0k", "X-Team": "data"})
    fast, generic, own = seen
    for headers, body in seen:
        assert body == b'{"q": 1}'
        assert headers["Content-Length"] == "8" and headers["Content-Type"] == "application/json"
        assert headers["Authorization"] == "Bearer t0k" and headers["X-Team"] == "data"
        assert headers["Host"].startswith("127.0.0.1:")
    assert fast[0] == generic[0]  # over aiohttp the two paths send byte-for-byte the same headers


@pytest.mark.parametrize("name", list(TRANSPORTS))
def test_connection_refused_reads_the_same_every_way(name):
    config = EndpointConfig(name="nowhere", base_url="http://127.0.0.1:9/v1", max_retries=0, connect_timeout=2.0)

    async def go():
        client = EndpointClient(config, transport=TRANSPORTS[name]())
        try:
            return await client.call(["anyone?"])
        finally:
            await client.aclose()
    error = asyncio.run(go()).error
    assert error is not None and "connection failed" in str(error)
    if name != "httpx":  # httpx's own pool words it its own way
        assert "cannot connect: [Errno 111]" in str(error)
