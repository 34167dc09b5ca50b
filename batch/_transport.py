"""The HTTP seam: ``httpx`` is the API, the connection pool under it is a measured choice.

The client posts through a ``Poster``: for any ``httpx.AsyncBaseTransport`` it builds
``httpx.Request`` objects and hands them to the transport, so tests can inject
``httpx.MockTransport``. Production uses ``AiohttpTransport``, because httpx's own pool
spends milliseconds of CPU per request once dozens are in flight, and for it the
poster skips the httpx objects altogether: building a request and a response costs
about a third of the client's CPU per request (see ``benchmarks/client_transport.py``).
Over ``AiohttpTransport`` both ways end in one exchange, so they send the same request and raise
the same httpx errors. A plain ``http://`` POST without a proxy is written and read by ``_PlainPool``, a
keep-alive HTTP/1.1 pool on asyncio protocols that writes what aiohttp writes for it (the same request
line and headers, in the same order; ``Accept-Encoding`` the encodings httpx decodes with nothing else
installed) at about a third of aiohttp's CPU per request; ``https://``, proxies and anything else unusual go
through aiohttp, imported only then.
Retries are never done here: the one retry loop is in ``batch._client``.

Proxies come from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``, in either case)
as httpx, requests and the openai client read them, because clusters often reach the internet only through
one. They are read once per URL, not per request: aiohttp's own ``trust_env`` reads them (and ``.netrc``) in a
thread on every request, and it ignores ``ALL_PROXY``, ``https://`` proxies and networks in ``NO_PROXY``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from collections.abc import Awaitable, Mapping

import httpx
import yarl
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import ConfigError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["AiohttpTransport", "Poster", "Proxy", "Reply", "Timeout", "make_transport", "poster", "proxy_for",
           "TRANSPORTS"]

TRANSPORTS = ("aiohttp", "httpx")

# aiohttp sets these from the URL and the body itself.
_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})

Reply = tuple[int, Mapping[str, str], bytes]
"""What a post gives back: the status, the headers (case-insensitive) and the decoded body."""


@dataclass(frozen=True, slots=True)
class Timeout:
    """Seconds to open a connection and to wait for the next bytes of an answer once the request is written
    (aiohttp's ``connect`` and ``sock_read``); None: no limit."""

    connect: float | None
    sock_read: float | None


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
    # proxy_bypass_environment is urllib's own NO_PROXY matching; typeshed leaves it out as undocumented
    if urllib.request.proxy_bypass_environment(  # type: ignore[attr-defined]
            f"{host}:{port}" if port else host, {"no": no_proxy}):
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


# ---------------------------------------------------------------- plain HTTP/1.1, without aiohttp's machinery

#: What aiohttp adds to every request that does not set it (its ``ClientRequest.DEFAULT_HEADERS`` where no
#: brotli package is installed), written out so that a plain POST needs no aiohttp: importing it costs a Python
#: worker about 0.15 s of its start. httpx decodes both encodings with nothing else installed.
_DEFAULT_HEADERS = (("Accept", "*/*"), ("Accept-Encoding", "gzip, deflate"))
_MAX_HEAD = 1 << 16  # bytes of status line and headers an answer may have
_NO_BODY = frozenset({204, 304})
#: Seconds an idle connection is kept for the next request (aiohttp's ``keepalive_timeout``): a server or a
#: load balancer may drop an idle connection without a word, and a request sent on it would wait its timeout.
KEEPALIVE_S = 15.0


class _Dropped(Exception):
    """The connection ended before the whole answer came."""


class _Answer:
    """What ``_exchange`` hands back, as aiohttp's response would: status, headers, raw header pairs."""

    __slots__ = ("status", "headers", "raw_headers")

    def __init__(self, status: int, raw: list[tuple[bytes, bytes]]) -> None:
        self.status = status
        self.raw_headers = raw
        self.headers = CIMultiDictProxy(CIMultiDict([(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]))


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one exchange at a time, its answer read whole.

    The read timeout is aiohttp's ``sock_read``: the longest wait for the next bytes of the answer once
    the request is written. It is one timer per exchange, moved on only when it fires early."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = False
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[_Answer, bytes]] | None = None
        self._answer: _Answer | None = None
        self._length = -1       # body bytes still expected; -1: not known yet (head not read, or chunked / to close)
        self._chunked = False
        self._to_close = False  # the body ends when the server closes the connection
        self._body = bytearray()
        self._timer: asyncio.TimerHandle | None = None
        self._read_timeout: float | None = None
        self._last = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def exchange(self, request: bytes, read_timeout: float | None) -> asyncio.Future[tuple[_Answer, bytes]]:
        loop = self._loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        self._answer, self._length, self._chunked, self._to_close = None, -1, False, False
        self._body = bytearray()
        self.reusable = False
        self._read_timeout = read_timeout
        if self.closed or self.transport is None:  # closed before its first request: nothing would answer
            self._fail(_Dropped("the server closed the connection before the request"))
            return waiter
        self.transport.write(request)
        if read_timeout is not None:
            self._last = loop.time()
            self._timer = loop.call_at(self._last + read_timeout, self._check_timeout)
        return waiter

    def _check_timeout(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done() or self._loop is None or self._read_timeout is None:
            return
        due = self._last + self._read_timeout
        if self._loop.time() < due:  # bytes came since: wait the rest
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        self._fail(TimeoutError(f"no bytes of the answer within {self._read_timeout:g}s"))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():  # bytes nobody asked for: the connection is not sound
            self._close()
            return
        if self._timer is not None and self._loop is not None:
            self._last = self._loop.time()
        self._buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed answer: {exc}"))

    def _parse(self) -> None:
        buf = self._buf
        while self._answer is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ValueError("headers too long")
                return
            lines = bytes(buf[:end]).split(b"\r\n")
            del buf[:end + 4]
            version, status_text = lines[0].split(b" ", 2)[:2]
            if not version.startswith(b"HTTP/1."):
                raise ValueError(f"status line {lines[0][:40]!r}")
            status = int(status_text)
            if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the real one follows
                continue
            raw = []
            for line in lines[1:]:
                name, colon, value = line.partition(b":")
                if not colon:
                    raise ValueError(f"header line {line[:40]!r}")
                raw.append((name.strip(), value.strip()))
            answer = self._answer = _Answer(status, raw)
            headers = answer.headers
            connection = headers.get("Connection", "").lower()
            keep = "close" not in connection and (version == b"HTTP/1.1" or "keep-alive" in connection)
            if status in _NO_BODY:
                self._length = 0
            elif "chunked" in headers.get("Transfer-Encoding", "").lower():
                self._chunked = True
            elif "Content-Length" in headers:
                self._length = int(headers["Content-Length"])
                if self._length < 0:
                    raise ValueError("negative Content-Length")
            else:
                self._to_close, keep = True, False
            self.reusable = keep
        if self._chunked:
            self._parse_chunks()
        elif self._length >= 0 and len(buf) >= self._length:
            self._body += buf[:self._length]
            rest = len(buf) - self._length
            del buf[:self._length]
            if rest:
                self.reusable = False
            self._finish()

    def _parse_chunks(self) -> None:
        buf = self._buf
        while True:
            if self._length > 0:  # inside a chunk: its bytes, then its CRLF
                if len(buf) < self._length + 2:
                    return
                self._body += buf[:self._length]
                del buf[:self._length + 2]
                self._length = -1
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                return
            size = int(bytes(buf[:line_end]).split(b";", 1)[0].strip(), 16)
            if size == 0:  # the last chunk, then trailers up to an empty line
                trailer_end = 0 if buf[line_end + 2:line_end + 4] == b"\r\n" else buf.find(b"\r\n\r\n", line_end)
                if trailer_end < 0:
                    return
                del buf[:(line_end + 4) if trailer_end == 0 else trailer_end + 4]
                if buf:
                    self.reusable = False
                self._finish()
                return
            del buf[:line_end + 2]
            self._length = size

    def _finish(self) -> None:
        waiter, self._waiter = self._waiter, None
        self._stop_timer()
        if waiter is not None and not waiter.done() and self._answer is not None:
            waiter.set_result((self._answer, bytes(self._body)))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self._stop_timer()
        self._close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close(self) -> None:
        self.closed, self.reusable = True, False
        if self.transport is not None:
            self.transport.close()

    def eof_received(self) -> bool | None:
        return False  # the transport closes; ``connection_lost`` ends the exchange

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed, self.reusable = True, False
        if self._waiter is None or self._waiter.done():
            self._stop_timer()
            return
        if self._to_close and self._answer is not None:  # a body delimited by the end of the connection
            self._body += self._buf
            self._buf.clear()
            self._finish()
            return
        what = "before the answer" if self._answer is None else "in the middle of the answer"
        self._fail(_Dropped(f"the server closed the connection {what}" + (f" ({exc})" if exc else "")))


class _PlainPool:
    """Keep-alive connections to plain ``http://`` origins, as many as there are requests in flight."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[tuple[float, _Connection]]] = {}
        self._heads: dict[str, tuple[Any, bytes]] = {}  # url: (the headers object, the request head made of it)
        self._origins: dict[str, tuple[str, int]] = {}  # url: (host, port), read with its first head

    def head(self, url: str, headers: Mapping[str, str]) -> bytes | None:
        """The request line and headers for ``url``, as aiohttp writes them; None when only aiohttp should send
        these (a header a raw write would not carry safely)."""
        cached = self._heads.get(url)
        if cached is not None and cached[0] is headers:
            return cached[1]
        parsed = yarl.URL(url)
        if parsed.user is not None or parsed.password is not None:  # aiohttp turns these into Basic auth
            return None
        host = parsed.raw_host or ""
        netloc = f"[{host}]" if ":" in host else host
        if not parsed.is_default_port():
            netloc += f":{parsed.port}"
        lines = [f"POST {parsed.raw_path_qs} HTTP/1.1", f"Host: {netloc}"]
        names = set()
        for name, value in headers.items():
            lowered = name.lower()
            if lowered in _SKIP_HEADERS or lowered == "connection":
                continue
            if any(c in name or c in value for c in "\r\n") or ":" in name:
                return None
            names.add(lowered)
            lines.append(f"{name}: {value}")
        lines.extend(f"{name}: {value}" for name, value in _DEFAULT_HEADERS if name.lower() not in names)
        if "content-type" not in names:  # what aiohttp labels a body of bytes with
            lines.append("Content-Type: application/octet-stream")
        head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("utf-8")
        if len(self._heads) > 64:
            self._heads.clear()
            self._origins.clear()
        self._heads[url] = (headers, head)
        self._origins[url] = (parsed.raw_host or "", parsed.port or 80)
        return head

    async def post(self, url: str, head: bytes, body: bytes, timeout: Timeout) -> tuple[_Answer, bytes]:
        """``head`` is what ``head(url, ...)`` gave, so the URL was parsed there, once."""
        origin = self._origins[url]
        idle = self._idle.get(origin)
        found: _Connection | None = None
        now = asyncio.get_running_loop().time()
        while idle:
            since, candidate = idle.pop()
            if now - since > KEEPALIVE_S:
                candidate._close()
            elif not candidate.closed and candidate.transport is not None and not candidate.transport.is_closing():
                found = candidate
                break
        connection = found if found is not None else await self._connect(origin, timeout.connect)
        request = head + b"%d\r\n\r\n" % len(body) + body
        try:
            answer = await connection.exchange(request, timeout.sock_read)
        except BaseException:
            connection._close()
            raise
        if connection.reusable and not connection.closed:
            self._idle.setdefault(origin, []).append((asyncio.get_running_loop().time(), connection))
        else:
            connection._close()
        return answer

    @staticmethod
    async def _connect(origin: tuple[str, int], timeout: float | None) -> _Connection:
        opening = asyncio.get_running_loop().create_connection(_Connection, origin[0], origin[1])
        _, connection = await (asyncio.wait_for(opening, timeout) if timeout is not None else opening)
        return connection

    def close(self) -> None:
        for idle in self._idle.values():
            for _, connection in idle:
                connection._close()
        self._idle.clear()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one ``aiohttp.ClientSession``, opened lazily in the running loop.

    Bodies are read whole (answers are small JSON documents) and left compressed by aiohttp;
    httpx decodes them, so a body reads exactly as with httpx's own transport. aiohttp itself is
    imported with the session: a plain ``http://`` endpoint never needs it.
    """

    def __init__(self, *, verify: bool = True, limit: int = 0) -> None:
        self._verify = verify
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[tuple[float | None, float | None], Timeout] = {}
        self._aiohttp_timeouts: dict[Timeout, aiohttp.ClientTimeout] = {}
        self._proxies: dict[str, Proxy | None] = {}
        self._plain = _PlainPool()

    def _open(self) -> aiohttp.ClientSession:
        import aiohttp
        ssl_arg: ssl.SSLContext | bool = True if self._verify else False
        connector = aiohttp.TCPConnector(limit=self._limit, ssl=ssl_arg, enable_cleanup_closed=True)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              skip_auto_headers=("User-Agent",), cookie_jar=aiohttp.DummyCookieJar())
        return self._session

    def timeout(self, timeouts: Mapping[str, float | None]) -> Timeout:
        """httpx's ``timeout`` extension as this transport reads it: one object per distinct setting, not one per
        request."""
        key = (timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = Timeout(*key)
        return timeout

    def _aiohttp_timeout(self, timeout: Timeout) -> aiohttp.ClientTimeout:
        found = self._aiohttp_timeouts.get(timeout)
        if found is None:
            import aiohttp
            found = self._aiohttp_timeouts[timeout] = aiohttp.ClientTimeout(
                total=None, connect=timeout.connect, sock_read=timeout.sock_read)
        return found

    def proxy(self, url: str) -> Proxy | None:
        """The environment's proxy for ``url``, read once per origin."""
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        if key not in self._proxies:
            self._proxies[key] = proxy_for(url)
        return self._proxies[key]

    async def _exchange(self, method: str, url: str, headers: dict[str, str], body: bytes,
                        timeout: Timeout, proxy: Proxy | None,
                        request: httpx.Request | None = None) -> tuple[Any, bytes]:
        """One request and its whole (still encoded) body; aiohttp's failures raised as httpx's.
        ``request`` is only there to be named by those errors.

        A plain ``http://`` POST with no proxy goes over ``_PlainPool`` (what aiohttp would write, at a third of
        its CPU per request); TLS and proxies go through aiohttp."""
        if proxy is None and method == "POST" and url[:7] == "http://":
            head = self._plain.head(url, headers)
            if head is not None:
                return await self._plain_exchange(url, head, body, timeout, request)
        import aiohttp
        session = self._session or self._open()
        if proxy is not None and proxy.headers and url[:5] == "http:":  # sent to the proxy with the request itself;
            headers = {**headers, **proxy.headers}                      # aiohttp sends proxy_headers on CONNECT only
        try:
            async with session.request(method, url, data=body, headers=headers, timeout=self._aiohttp_timeout(timeout),
                                       allow_redirects=False, proxy=proxy.url if proxy else None,
                                       proxy_headers=proxy.headers if proxy else None) as resp:
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

    async def _plain_exchange(self, url: str, head: bytes, body: bytes, timeout: Timeout,
                              request: httpx.Request | None) -> Any:
        try:
            return await self._plain.post(url, head, body, timeout)
        except TimeoutError as exc:
            raise httpx.ReadTimeout(f"timed out: {exc}", request=request) from None
        except _Dropped as exc:
            raise httpx.RemoteProtocolError(f"connection dropped: {exc}", request=request) from None
        except OSError as exc:
            raise httpx.ConnectError(f"cannot connect: {exc}", request=request) from None

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: Timeout,
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
        self._plain.close()
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
