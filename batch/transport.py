"""The HTTP seam: ``httpx`` is the API, the connection pool under it is a measured choice.

The client posts through a ``Poster``: for any ``httpx.AsyncBaseTransport`` it builds
``httpx.Request`` objects and hands them to the transport, so tests can inject
``httpx.MockTransport``. Production uses ``AiohttpTransport``, because httpx's own pool
spends milliseconds of CPU per request once dozens are in flight, and for it the
poster skips the httpx objects altogether: building a request and a response costs
about a third of the client's CPU per request (see ``benchmarks/client_transport.py``).
Over ``AiohttpTransport`` both ways end in one exchange, so they send the same request and raise
the same httpx errors.
Retries are never done here: the one retry loop is in ``batch.client``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, Awaitable, Mapping

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "Poster", "Reply", "make_transport", "poster", "TRANSPORTS"]

TRANSPORTS = ("aiohttp", "httpx")

# aiohttp sets these from the URL and the body itself.
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})

Reply = tuple[int, Mapping[str, str], bytes]
"""What a post gives back: the status, the headers (case-insensitive) and the decoded body."""


def _sendable_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in _SKIP_HEADERS}


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one ``aiohttp.ClientSession``, opened lazily in the running loop.

    Bodies are read whole (answers are small JSON documents) and left compressed by aiohttp;
    httpx decodes them, so a body reads exactly as with httpx's own transport.
    """

    def __init__(self, *, verify: bool = True, limit: int = 0) -> None:
        self._verify = verify
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _open(self) -> aiohttp.ClientSession:
        ssl_arg: ssl.SSLContext | bool = True if self._verify else False
        connector = aiohttp.TCPConnector(limit=self._limit, ssl=ssl_arg, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def timeout(self, timeouts: Mapping[str, float | None]) -> aiohttp.ClientTimeout:
        """aiohttp's form of httpx's ``timeout`` extension: one object per distinct setting, not one per request."""
        key = (timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=None, connect=key[0], sock_read=key[1])
        return timeout

    async def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes,
                        timeout: aiohttp.ClientTimeout,
                        request: httpx.Request | None = None) -> tuple[aiohttp.ClientResponse, bytes]:
        """One request and its whole (still encoded) body; aiohttp's failures raised as httpx's.
        ``request`` is only there to be named by those errors."""
        session = self._session or self._open()
        try:
            async with session.request(method, url, data=body, headers=headers, timeout=timeout,
                                       allow_redirects=False) as resp:
                return resp, await resp.read()
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout(f"timed out: {exc}", request=request) from None
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(f"cannot connect: {exc.os_error or exc}", request=request) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError) as exc:
            raise httpx.RemoteProtocolError(f"connection dropped: {type(exc).__name__}: {exc}",
                                            request=request) from None
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}", request=request) from None

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: aiohttp.ClientTimeout) -> Reply:
        """The fast path: a POST without httpx objects, unless the body is compressed (rare) and httpx decodes it."""
        resp, content = await self._exchange("POST", url, headers, body, timeout)
        if "Content-Encoding" in resp.headers:
            content = httpx.Response(resp.status, headers=list(resp.raw_headers), content=content).read()
        return resp.status, resp.headers, content

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        resp, content = await self._exchange(request.method, str(request.url), _sendable_headers(request.headers),
                                             request.content, self.timeout(request.extensions.get("timeout", {})),
                                             request)
        return httpx.Response(resp.status, headers=list(resp.raw_headers), content=content, request=request)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Poster:
    """Posts to one URL: ``prepare`` turns the request headers into what ``send`` takes, once per header change
    (a new token), and ``send`` posts a body with them."""

    def prepare(self, headers: httpx.Headers) -> Any:
        raise NotImplementedError

    def send(self, headers: Any, body: bytes) -> Awaitable[Reply]:
        raise NotImplementedError


class _HttpxPoster(Poster):
    """Through any httpx transport, as ``httpx.Request`` objects: the seam tests use with ``httpx.MockTransport``."""

    def __init__(self, transport: httpx.AsyncBaseTransport, url: str, timeouts: Mapping[str, float | None]) -> None:
        self._transport = transport
        self._url = httpx.URL(url)  # parsed once: parsing a URL costs more than building the request
        self._extensions = {"timeout": dict(timeouts)}

    def prepare(self, headers: httpx.Headers) -> httpx.Headers:
        return headers

    async def send(self, headers: httpx.Headers, body: bytes) -> Reply:
        # With a ready header set and a byte stream httpx skips its per-request encoding, which
        # halves the cost of building a request; it also stops adding Content-Length, so it is set here.
        headers = headers.copy()
        headers["Content-Length"] = str(len(body))
        request = httpx.Request("POST", self._url, headers=headers, stream=httpx.ByteStream(body),
                                extensions=self._extensions)
        request.read()
        response = await self._transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.headers, content


class _AiohttpPoster(Poster):
    """Straight through ``AiohttpTransport.post``, with no httpx objects."""

    def __init__(self, transport: AiohttpTransport, url: str, timeouts: Mapping[str, float | None]) -> None:
        self._transport = transport
        self._url = url
        self._timeout = transport.timeout(timeouts)

    def prepare(self, headers: httpx.Headers) -> dict[str, str]:
        return _sendable_headers(headers)

    def send(self, headers: dict[str, str], body: bytes) -> Awaitable[Reply]:
        # Not a coroutine of its own: the transport's is handed back, one frame less per request.
        return self._transport.post(self._url, headers, body, self._timeout)


def poster(transport: httpx.AsyncBaseTransport, url: str, timeouts: Mapping[str, float | None]) -> Poster:
    """The cheapest way to post to ``url`` through ``transport``; ``timeouts`` as httpx's ``timeout`` extension."""
    if isinstance(transport, AiohttpTransport):
        return _AiohttpPoster(transport, url, timeouts)
    return _HttpxPoster(transport, url, timeouts)


def make_transport(kind: str = "aiohttp", *, verify: bool = True) -> httpx.AsyncBaseTransport:
    """``aiohttp`` (default, fast) or ``httpx`` (httpx's own pool, for comparison)."""
    if kind == "aiohttp":
        return AiohttpTransport(verify=verify)
    if kind == "httpx":
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        return httpx.AsyncHTTPTransport(verify=verify, limits=limits, retries=0)
    raise ValueError(f"unknown transport {kind!r}; choose one of {', '.join(TRANSPORTS)}")
