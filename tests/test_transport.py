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
