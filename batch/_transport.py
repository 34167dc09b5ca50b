"""The HTTP seam: ``httpx`` is the API, the connection pool under it is a measured choice.

The client posts through a ``Poster``: for any ``httpx.AsyncBaseTransport`` it builds
``httpx.Request`` objects and hands them to the transport, so tests can inject
``httpx.MockTransport``. Production uses ``AiohttpTransport``, because httpx's own pool
spends milliseconds of CPU per request once dozens are in flight, and for it the
poster skips the httpx objects altogether: building a request and a response costs
about a third of the client's CPU per request (see ``benchmarks/client_transport.py``).
Over ``AiohttpTransport`` both ways end in one exchange, so they send the same request and raise
the same httpx errors.
Retries are never done here: the one retry loop is in ``batch._client``.

Proxies come from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, in either case)
as httpx, requests and the openai client read them, because clusters often reach the internet only through
one. They are read once per URL, not per request: aiohttp's own ``trust_env`` reads them (and ``.netrc``) in a
thread on every request, and it ignores ``ALL_PROXY``, ``https://`` proxies and networks in ``NO_PROXY``.
"""

from __future__ import annotations

import base64
import ipaddress
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any
from collections.abc import Awaitable, Mapping

import aiohttp
import httpx

from .errors import ConfigError

__all__ = ["AiohttpTransport", "Poster", "Proxy", "Reply", "make_transport", "poster", "proxy_for", "TRANSPORTS"]

TRANSPORTS = ("aiohttp", "httpx")

# aiohttp sets these from the URL and the body itself.
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})

Reply = tuple[int, Mapping[str, str], bytes]
"""What a post gives back: the status, the headers (case-insensitive) and the decoded body."""


def _sendable_headers(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in _SKIP_HEADERS}


@dataclass(frozen=True, slots=True)
class Proxy:
    """Where to send a request instead: the proxy's URL without credentials, which travel in ``headers`` only
    (``Proxy-Authorization``), so that no error message can show them."""

    url: str
    headers: Mapping[str, str] | None = None


def proxy_for(url: str) -> Proxy | None:
    """The proxy the environment names for ``url``: ``HTTPS_PROXY`` or ``HTTP_PROXY`` by the URL's scheme, else
    ``ALL_PROXY``; lowercase names win over uppercase; ``NO_PROXY`` lists hosts, domain suffixes, IP addresses,
    networks (``10.0.0.0/8``) or ``*``, which go direct."""
    proxies = urllib.request.getproxies_environment()
    if not proxies:
        return None
    target = urllib.parse.urlsplit(url)
    if _bypassed(target.hostname or "", target.port, proxies.get("no", "")):
        return None
    chosen = proxies.get(target.scheme) or proxies.get("all")
    if not chosen:
        return None
    proxy = urllib.parse.urlsplit(chosen if "://" in chosen else "http://" + chosen)  # httpx takes host:port too
    if proxy.scheme not in ("http", "https"):
        raise ConfigError(f"the environment names a {proxy.scheme}:// proxy for {target.scheme} requests to "
                          f"{target.hostname}; only http:// and https:// proxies are supported: set HTTPS_PROXY to "
                          "one, or list the host in NO_PROXY")
    netloc = proxy.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc
    netloc += f":{proxy.port}" if proxy.port else ""
    headers = None
    if proxy.username:
        pair = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
        headers = {"Proxy-Authorization": "Basic " + base64.b64encode(pair.encode()).decode("ascii")}
    return Proxy(f"{proxy.scheme}://{netloc}", headers)


def _bypassed(host: str, port: int | None, no_proxy: str) -> bool:
    if not no_proxy:
        return False
    if urllib.request.proxy_bypass_environment(f"{host}:{port}" if port else host, {"no": no_proxy}):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    for entry in no_proxy.split(","):
        try:
            if address in ipaddress.ip_network(entry.strip().strip("[]"), strict=False):
                return True
        except ValueError:
            continue
    return False


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
        self._proxies: dict[str, Proxy | None] = {}

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

    def proxy(self, url: str) -> Proxy | None:
        """The environment's proxy for ``url``, read once per origin."""
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        if key not in self._proxies:
            self._proxies[key] = proxy_for(url)
        return self._proxies[key]

    async def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes,
                        timeout: aiohttp.ClientTimeout, proxy: Proxy | None,
                        request: httpx.Request | None = None) -> tuple[aiohttp.ClientResponse, bytes]:
        """One request and its whole (still encoded) body; aiohttp's failures raised as httpx's.
        ``request`` is only there to be named by those errors."""
        session = self._session or self._open()
        if proxy is not None and proxy.headers and url[:5] == "http:":  # sent to the proxy with the request itself;
            headers = {**headers, **proxy.headers}                      # aiohttp sends proxy_headers on CONNECT only
        try:
            async with session.request(method, url, data=body, headers=headers, timeout=timeout,
                                       allow_redirects=False, proxy=proxy and proxy.url,
                                       proxy_headers=proxy and proxy.headers) as resp:
                return resp, await resp.read()
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"timed out: {exc}", request=request) from None
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(f"cannot connect: {exc.os_error or exc}", request=request) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError,
                aiohttp.ClientOSError) as exc:
            raise httpx.RemoteProtocolError(f"connection dropped: {type(exc).__name__}: {exc}",
                                            request=request) from None
        except aiohttp.ClientError as exc:
            raise httpx.TransportError(f"{type(exc).__name__}: {exc}", request=request) from None

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: aiohttp.ClientTimeout,
                   proxy: Proxy | None = None) -> Reply:
        """The fast path: a POST without httpx objects, unless the body is compressed (rare) and httpx decodes it."""
        resp, content = await self._exchange("POST", url, headers, body, timeout, proxy)
        if "Content-Encoding" in resp.headers:
            content = httpx.Response(resp.status, headers=list(resp.raw_headers), content=content).read()
        return resp.status, resp.headers, content

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = str(request.url)
        resp, content = await self._exchange(request.method, url, _sendable_headers(request.headers),
                                             request.content, self.timeout(request.extensions.get("timeout", {})),
                                             self.proxy(url), request)
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
        self._proxy = transport.proxy(url)

    def prepare(self, headers: httpx.Headers) -> dict[str, str]:
        return _sendable_headers(headers)

    def send(self, headers: dict[str, str], body: bytes) -> Awaitable[Reply]:
        # Not a coroutine of its own: the transport's is handed back, one frame less per request.
        return self._transport.post(self._url, headers, body, self._timeout, self._proxy)


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
