"""Bearer-token checks and the OAuth machine-to-machine token endpoint, as a Databricks workspace offers them.

``/.well-known/databricks-config`` names the OIDC endpoint (as a workspace answers it),
``/oidc/.well-known/oauth-authorization-server`` its RFC 8414 metadata, and ``POST /oidc/v1/token`` issues
access tokens for the ``client_credentials`` grant (RFC 6749 section 4.4), the client authenticated by HTTP
Basic or by form fields. Errors follow RFC 6749 section 5.2 (``invalid_client``, ``unsupported_grant_type``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import secrets
import time
from typing import Any

from aiohttp import web

from .state import STATE, State

__all__ = ["authorized", "host_metadata", "issue_token", "oauth_metadata", "oauth_token"]


def authorized(state: State, header: str | None) -> bool:
    """Whether an ``Authorization`` header carries the configured token or an unexpired issued one."""
    if not header or header[:7].lower() != "bearer ":
        return False
    given = header[7:].strip()
    token = state.settings.token
    if token and _same(given, token):
        return True
    expiry = state.issued.get(given)
    return expiry is not None and expiry > time.monotonic()


def issue_token(state: State) -> str:
    """A new access token valid for ``oauth_ttl`` seconds; expired ones are forgotten first."""
    now = time.monotonic()
    for stale in [t for t, expiry in state.issued.items() if expiry <= now]:
        del state.issued[stale]
    token = secrets.token_urlsafe(32)
    state.issued[token] = now + state.settings.oauth_ttl
    state.stats.oauth_tokens_issued += 1
    return token


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


async def oauth_metadata(request: web.Request) -> web.Response:
    """RFC 8414 authorization-server metadata: issuer, authorize and token endpoints, the one grant."""
    base = _base_url(request) + "/oidc"
    return web.json_response({"issuer": base, "authorization_endpoint": base + "/v1/authorize",
                              "token_endpoint": base + "/v1/token",
                              "grant_types_supported": ["client_credentials"]})


async def host_metadata(request: web.Request) -> web.Response:
    """``{"oidc_endpoint": ...}``, what a Databricks workspace answers so its SDK can find the token endpoint."""
    return web.json_response({"oidc_endpoint": _base_url(request) + "/oidc"})


def _client_credentials(request: web.Request, form: Any) -> tuple[str, str]:
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            cid, _, secret = base64.b64decode(header[6:].strip()).decode().partition(":")
            return cid, secret
        except (binascii.Error, UnicodeDecodeError):
            return "", ""
    return str(form.get("client_id", "")), str(form.get("client_secret", ""))


async def oauth_token(request: web.Request) -> web.Response:
    """A token for the configured client: 404 while OAuth is off, 400 for another grant, 401 for a wrong client."""
    state = request.app[STATE]
    settings = state.settings
    if not settings.oauth_client_id:
        return web.json_response({"error": "invalid_request",
                                  "error_description": "OAuth is not enabled on this server"}, status=404)
    form = await request.post()
    if form.get("grant_type") != "client_credentials":
        return web.json_response({"error": "unsupported_grant_type"}, status=400)
    cid, secret = _client_credentials(request, form)
    if not (_same(cid, settings.oauth_client_id) and _same(secret, settings.oauth_client_secret or "")):
        state.stats.auth_failures += 1
        return web.json_response({"error": "invalid_client",
                                  "error_description": "client authentication failed"}, status=401)
    ttl = settings.oauth_ttl
    return web.json_response({"access_token": issue_token(state), "token_type": "Bearer",
                              "expires_in": int(ttl) if float(ttl).is_integer() else ttl,
                              "scope": form.get("scope", "all-apis")})


def _same(given: str, expected: str) -> bool:
    """Compared in constant time, so response timing does not reveal a secret."""
    return hmac.compare_digest(given.encode(), expected.encode())
