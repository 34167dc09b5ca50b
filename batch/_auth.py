"""Credentials: read where requests are sent, from variables named in the config, never stored in it.

A bearer token comes from one environment variable. Databricks OAuth machine-to-machine
exchanges a client id and secret for a short-lived token at ``<host>/oidc/v1/token`` and
refreshes it before it expires. No object here shows a secret in its ``repr``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable

import httpx

from .config import EndpointConfig
from .errors import CredentialError, HTTPRequestError, TransportError, status_error
from ._retry import parse_retry_after
from ._wire import error_text

__all__ = ["Credentials", "NoCredentials", "BearerToken", "DatabricksOAuth", "credentials_for"]


class Credentials:
    async def headers(self) -> dict[str, str]:
        raise NotImplementedError


_NO_HEADERS: dict[str, str] = {}


class NoCredentials(Credentials):
    async def headers(self) -> dict[str, str]:
        return _NO_HEADERS  # the same object each time, so callers can cache what they build from it

    def __repr__(self) -> str:
        return "NoCredentials()"


def _read_env(variable: str, endpoint: str, what: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise CredentialError(f"endpoint '{endpoint}' needs {what} in the environment variable {variable}, "
                              "which is not set (on a cluster, set it for the executors too)")
    return value


class BearerToken(Credentials):
    def __init__(self, variable: str, endpoint: str) -> None:
        self.variable, self.endpoint = variable, endpoint
        self._headers: dict[str, str] | None = None

    async def headers(self) -> dict[str, str]:
        if self._headers is None:
            self._headers = {"authorization": "Bearer " + _read_env(self.variable, self.endpoint, "a token")}
        return self._headers

    def __repr__(self) -> str:
        return f"BearerToken(variable={self.variable!r})"


class DatabricksOAuth(Credentials):
    """OAuth M2M (client credentials). Refreshes when less than ``margin`` of the token's life is left."""

    def __init__(self, config: EndpointConfig, transport: httpx.AsyncBaseTransport, *,
                 clock: Callable[[], float] = time.monotonic, margin: float = 0.2) -> None:
        self.config, self._transport, self._clock, self._margin = config, transport, clock, margin
        self._headers: dict[str, str] = {}
        self._refresh_at = float("-inf")
        self._lock = asyncio.Lock()

    async def headers(self) -> dict[str, str]:
        if self._clock() >= self._refresh_at:
            async with self._lock:
                if self._clock() >= self._refresh_at:
                    await self._fetch()
        return self._headers

    async def _fetch(self) -> None:
        cfg = self.config
        client_id = _read_env(cfg.client_id_env or "", cfg.name, "an OAuth client id")
        secret = _read_env(cfg.client_secret_env or "", cfg.name, "an OAuth client secret")
        basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        url = cfg.resolved_host().rstrip("/") + "/oidc/v1/token"
        request = httpx.Request("POST", url, content=b"grant_type=client_credentials&scope=all-apis",
                                headers={"authorization": "Basic " + basic,
                                         "content-type": "application/x-www-form-urlencoded"},
                                extensions={"timeout": {"connect": cfg.connect_timeout, "read": cfg.timeout,
                                                        "write": cfg.timeout, "pool": cfg.timeout}})
        started = self._clock()
        try:
            response = await self._transport.handle_async_request(request)
            await response.aread()
        except httpx.HTTPError as exc:
            raise TransportError(cfg.name, f"OAuth token request to {url} failed: {exc}") from None
        status = response.status_code
        if status != 200:
            # 429 and 5xx from the token endpoint are as transient as from the model; 400 and 401 are not.
            hint = f" (check {cfg.client_id_env} / {cfg.client_secret_env})" if status in (400, 401, 403) else ""
            raise status_error(cfg.name, status, f"OAuth token request to {url} was refused: "
                               f"{error_text(response.content, 300)}{hint}",
                               parse_retry_after(response.headers))
        try:
            body = response.json()
            token, ttl = body["access_token"], float(body.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise HTTPRequestError(cfg.name, f"OAuth token endpoint {url} answered without access_token",
                                   status=response.status_code) from None
        self._headers = {"authorization": "Bearer " + token}
        self._refresh_at = started + ttl * (1.0 - self._margin)

    def __repr__(self) -> str:
        return f"DatabricksOAuth(client_id_env={self.config.client_id_env!r})"


def credentials_for(config: EndpointConfig, transport: httpx.AsyncBaseTransport, *,
                    clock: Callable[[], float] = time.monotonic) -> Credentials:
    if config.client_id_env:
        return DatabricksOAuth(config, transport, clock=clock)
    if config.token_env:
        return BearerToken(config.token_env, config.name)
    return NoCredentials()
