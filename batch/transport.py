"""The HTTP seam: ``httpx`` is the API, the connection pool under it is a measured choice.

The toolkit builds ``httpx.Request`` objects and hands them to an
``httpx.AsyncBaseTransport``. Tests inject ``httpx.MockTransport``; production uses
``AiohttpTransport``, because httpx's own pool spends milliseconds of CPU per request
once dozens are in flight (see ``benchmarks/client_transport.py`` for the figures).
Retries are never done here: the one retry loop is in ``batch.client``.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import httpx

__all__ = ["AiohttpTransport", "make_transport", "TRANSPORTS"]

TRANSPORTS = ("aiohttp", "httpx")

_SKIP_HEADERS = frozenset({"host", "content-length", "transfer-encoding"})


class AiohttpTransport(httpx.AsyncBaseTransport):
    """An httpx transport over one ``aiohttp.ClientSession``, opened lazily in the running loop.

    Bodies are read whole (answers are small JSON documents); compression is left to
    httpx so ``response.json()`` behaves exactly as with httpx's own transport.
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

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session or self._open()
        timeouts = request.extensions.get("timeout", {})
        key = (timeouts.get("connect"), timeouts.get("read"))
        timeout = self._timeouts.get(key)
        if timeout is None:  # one per distinct setting, not one per request
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(total=None, connect=key[0], sock_read=key[1])
        headers = {k: v for k, v in request.headers.items() if k not in _SKIP_HEADERS}
        try:
            async with session.request(request.method, str(request.url), data=request.content,
                                       headers=headers, timeout=timeout, allow_redirects=False) as resp:
                body = await resp.read()
                return httpx.Response(resp.status, headers=list(resp.raw_headers), content=body,
                                      request=request)
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

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def make_transport(kind: str = "aiohttp", *, verify: bool = True) -> httpx.AsyncBaseTransport:
    """``aiohttp`` (default, fast) or ``httpx`` (httpx's own pool, for comparison)."""
    if kind == "aiohttp":
        return AiohttpTransport(verify=verify)
    if kind == "httpx":
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        return httpx.AsyncHTTPTransport(verify=verify, limits=limits, retries=0)
    raise ValueError(f"unknown transport {kind!r}; choose one of {', '.join(TRANSPORTS)}")
