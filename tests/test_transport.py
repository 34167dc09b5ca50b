"""The two ways to post: ``AiohttpTransport``'s fast path and httpx requests through any transport.

Each test runs one small aiohttp server in the test's own event loop and compares what the
fast path, the httpx path over the same ``AiohttpTransport`` and httpx's own transport send
and get back: they must not differ in anything the client reads.
"""

from __future__ import annotations

import asyncio
import gzip
import json

import aiohttp
import httpx
import pytest
from aiohttp import web

from batch._client import EndpointClient
from batch.config import EndpointConfig
from batch.errors import ConfigError
from batch._transport import AiohttpTransport, Proxy, make_transport, poster, proxy_for

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


# ---------------------------------------------------------------- proxies from the environment

PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


@pytest.fixture
def environ(monkeypatch):
    """A clean proxy environment for one test: set only what it names."""
    for name in PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)

    def put(**variables):
        for name, value in variables.items():
            monkeypatch.setenv(name, value)
    return put


@pytest.mark.parametrize("variables,url,expected", [
    ({}, "https://api.openai.com/v1", None),
    ({"HTTPS_PROXY": "http://proxy:3128"}, "https://api.openai.com/v1", Proxy("http://proxy:3128")),
    ({"HTTPS_PROXY": "http://proxy:3128"}, "http://plain.example/v1", None),
    ({"HTTP_PROXY": "http://proxy:3128"}, "http://plain.example/v1", Proxy("http://proxy:3128")),
    ({"https_proxy": "https://secure-proxy:8443"}, "https://h/v1", Proxy("https://secure-proxy:8443")),
    ({"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"}, "https://h/v1", Proxy("http://lower:2")),
    ({"ALL_PROXY": "http://all:3128"}, "https://h/v1", Proxy("http://all:3128")),
    ({"ALL_PROXY": "http://all:1", "HTTPS_PROXY": "http://https:2"}, "https://h/v1", Proxy("http://https:2")),
    ({"HTTPS_PROXY": "proxy.corp:8080"}, "https://h/v1", Proxy("http://proxy.corp:8080")),
    ({"HTTPS_PROXY": "http://[::1]:3128"}, "https://h/v1", Proxy("http://[::1]:3128")),
    ({"HTTPS_PROXY": "http://user:p%40ss@proxy:3128"}, "https://h/v1",
     Proxy("http://proxy:3128", {"Proxy-Authorization": "Basic dXNlcjpwQHNz"})),
    # NO_PROXY: hosts, domain suffixes, ports, networks, everything
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "h"}, "https://h/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other, .example.com"}, "https://api.example.com/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://api.example.com/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "example.com"}, "https://notexample.com/v1", Proxy("http://p:1")),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "h:8443"}, "https://h:8443/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, "https://10.1.2.3/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, "https://11.1.2.3/v1", Proxy("http://p:1")),
    ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://anything/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "no_proxy": "h", "NO_PROXY": ""}, "https://h/v1", None),
    ({"HTTPS_PROXY": "http://p:1", "https_proxy": ""}, "https://h/v1", None),  # an empty lowercase name unsets
])
def test_proxy_for_reads_the_environment_as_httpx_and_requests_do(environ, variables, url, expected):
    environ(**variables)
    assert proxy_for(url) == expected


def test_a_socks_proxy_is_refused_clearly_without_its_credentials(environ):
    environ(ALL_PROXY="socks5://user:secret@proxy:1080")
    with pytest.raises(ConfigError) as caught:
        proxy_for("https://api.openai.com/v1/chat/completions")
    assert "socks5:// proxy for https requests to api.openai.com" in str(caught.value)
    assert "secret" not in str(caught.value) and "user" not in str(caught.value)


async def _forward_proxy() -> tuple[web.AppRunner, str, list]:
    """A forward HTTP proxy that records the target and the Proxy-Authorization of each request."""
    seen: list = []

    async def forward(request: web.Request) -> web.Response:
        seen.append((request.raw_path, request.headers.get("Proxy-Authorization")))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "proxy-authorization")}
        async with aiohttp.ClientSession() as session:
            async with session.post(request.raw_path, data=await request.read(), headers=headers) as reply:
                return web.Response(body=await reply.read(), status=reply.status, content_type=reply.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}", seen  # type: ignore[union-attr]


@pytest.mark.parametrize("name", ["fast", "httpx-over-aiohttp"])
def test_requests_go_through_the_proxy_with_its_credentials(environ, name):
    async def go():
        runner, url, _ = await _serve()
        proxy_runner, proxy, seen = await _forward_proxy()
        environ(HTTP_PROXY=f"http://team:s3cret@{proxy}")
        transport = TRANSPORTS[name]()
        try:
            post = poster(transport, f"{url}/plain", TIMEOUTS)
            status, _, body = await post.send(post.prepare(httpx.Headers({"content-type": "application/json"})),
                                              b'{"q": 1}')
        finally:
            await transport.aclose()
            await proxy_runner.cleanup()
            await runner.cleanup()
        return status, body, seen, url
    status, body, seen, url = asyncio.run(go())
    assert status == 200 and json.loads(body) == ANSWER
    assert seen == [(f"{url}/plain", "Basic dGVhbTpzM2NyZXQ=")]


# ---------------------------------------------------------------- plain HTTP/1.1 answers of every framing

def _raw_server(replies: list[bytes], seen: list[bytes], close_after: bool = False):
    """A server that answers each request on a connection with the next of ``replies``, as raw bytes."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while replies:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            seen.append(head + await reader.readexactly(length))
            reply = replies.pop(0)
            if reply == b"hang":
                await asyncio.sleep(5)
                return
            writer.write(reply)
            await writer.drain()
            if close_after or reply.endswith(b"cut"):
                break
        writer.close()
    return asyncio.start_server(handle, "127.0.0.1", 0)


def _exchange_all(replies: list[bytes], count: int, *, close_after: bool = False, read: float = 5.0):
    """Post ``count`` times in a row through the fast path; each reply as (status, headers, body) or the error."""
    async def go():
        seen: list[bytes] = []
        server = await _raw_server(list(replies), seen, close_after)
        port = server.sockets[0].getsockname()[1]
        transport = AiohttpTransport()
        post = poster(transport, f"http://127.0.0.1:{port}/v1/x", {**TIMEOUTS, "read": read})
        sent = post.prepare(httpx.Headers({"content-type": "application/json"}))
        out = []
        try:
            for _ in range(count):
                try:
                    out.append(await post.send(sent, b'{"q": 1}'))
                except httpx.HTTPError as exc:
                    out.append(exc)
        finally:
            await transport.aclose()
            server.close()
        return out, seen
    return asyncio.run(go())


def test_answers_of_every_framing_are_read_whole_and_the_connection_kept():
    length = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\nX-Ratelimit-Limit-Requests: 60\r\n\r\n{\"a\": 1}\n"
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n5\r\n: 2}\n\r\n"
               b"0\r\nX-Trailer: t\r\n\r\n")
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nretry-after: 7\r\nContent-Length: 2\r\n\r\n{}"
    empty = b"HTTP/1.1 204 No Content\r\n\r\n"
    out, seen = _exchange_all([length, chunked, interim, empty], 4)
    assert [(status, body) for status, _, body in out] == [(200, b'{"a": 1}\n'), (200, b'{"a": 2}\n'),
                                                           (429, b"{}"), (204, b"")]
    assert out[0][1]["x-ratelimit-limit-requests"] == "60" and out[2][1]["Retry-After"] == "7"
    assert len(seen) == 4 and all(s.startswith(b"POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1:") for s in seen)


def test_an_answer_that_ends_with_the_connection_is_read_and_a_new_one_opened():
    until_close = b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{\"whole\": true}"
    out, seen = _exchange_all([until_close, until_close], 2, close_after=True)
    assert [body for _, _, body in out] == [b'{"whole": true}'] * 2 and len(seen) == 2


def test_a_dropped_answer_and_a_silent_server_read_as_transport_errors():
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"cut"
    out, _ = _exchange_all([cut], 1)
    assert isinstance(out[0], httpx.RemoteProtocolError) and "connection dropped" in str(out[0])
    out, _ = _exchange_all([b"hang"], 1, read=0.2)
    assert isinstance(out[0], httpx.ReadTimeout) and "timed out" in str(out[0])
    out, _ = _exchange_all([b"NOT HTTP\r\n\r\n"], 1)
    assert isinstance(out[0], httpx.RemoteProtocolError) and "malformed answer" in str(out[0])


def test_credentials_in_the_url_and_unsafe_headers_go_through_aiohttp():
    pool = AiohttpTransport()._plain
    assert pool.head("http://user:pw@127.0.0.1:9/v1", {}) is None  # aiohttp makes Basic auth of them
    assert pool.head("http://127.0.0.1:9/v1", {"x-bad": "a\r\nInjected: 1"}) is None
    assert pool.head("http://[::1]:80/v1?q=1", {}).startswith(b"POST /v1?q=1 HTTP/1.1\r\nHost: [::1]\r\n")


_WITHOUT_AIOHTTP = r'''
import asyncio, json, sys
import batch._udf  # what a Python worker imports with an ai_query column
from batch._client import EndpointClient
from batch._engine import answer_rows
from batch.config import EndpointConfig
assert "aiohttp" not in sys.modules, "imported with the worker's modules"
BODY = json.dumps({"choices": [{"message": {"role": "assistant", "content": "ok"}}]}).encode()

async def main():
    async def answer(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        sizes = [line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
        await reader.readexactly(int(sizes[0]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = EndpointClient(EndpointConfig(name="plain", base_url=f"http://127.0.0.1:{port}/v1"))
    try:
        outcomes = await answer_rows(client, ["hello"])
    finally:
        await client.aclose()
        server.close()
    assert outcomes[0].value == "ok", outcomes[0]
asyncio.run(main())
assert "aiohttp" not in sys.modules, "imported to answer a plain http:// endpoint"
print("answered without aiohttp")
'''


def test_a_plain_http_endpoint_is_answered_without_importing_aiohttp():
    # Importing aiohttp is about 0.15 s of every Python worker's start; only TLS and proxies need it.
    import subprocess
    import sys
    import os
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}  # a proxy goes through aiohttp
    done = subprocess.run([sys.executable, "-c", _WITHOUT_AIOHTTP], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0 and "answered without aiohttp" in done.stdout, done.stderr[-2000:]


def test_a_plain_post_asks_for_what_aiohttp_asks_for():
    from aiohttp.client_reqrep import ClientRequest
    from batch._transport import _DEFAULT_HEADERS
    ours = dict(_DEFAULT_HEADERS)
    assert ours["Accept"] == ClientRequest.DEFAULT_HEADERS["Accept"]
    # aiohttp adds br (and zstd) where their packages are installed; what httpx decodes alone is a subset.
    assert set(ours["Accept-Encoding"].split(", ")) <= set(ClientRequest.DEFAULT_HEADERS["Accept-Encoding"].split(", "))
