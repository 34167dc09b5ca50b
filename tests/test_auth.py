"""Credentials: bearer tokens and OAuth M2M are sent, refreshed, and never shown."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from urllib.parse import parse_qs

import httpx
import pytest

from batch._auth import BearerToken, DatabricksOAuth, NoCredentials, credentials_for
from batch._client import EndpointClient
from batch.config import EndpointConfig
from batch.errors import CredentialError, HTTPRequestError, RateLimitError, ServerError, TransportError
from batch.serve import simulated_answer
from batch._transport import TRANSPORTS, make_transport
import support
from support import Clock, run

TOKEN = "tok-7f3a9c-never-show-me"
CLIENT_ID = "sp-4471-client"
SECRET = "sp-secret-d81e-never-show-me"
TOKEN_ENV, ID_ENV, SECRET_ENV = "BATCH_TEST_TOKEN", "BATCH_TEST_CLIENT_ID", "BATCH_TEST_CLIENT_SECRET"
FAST = {**support.FAST, "max_retries": 3, "max_backoff": 0.02}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in (TOKEN_ENV, ID_ENV, SECRET_ENV):
        monkeypatch.delenv(name, raising=False)


async def no_sleep(seconds: float) -> None:
    await asyncio.sleep(0)


def chat_answer(text: str = "ok") -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}


# ================================================================ scripted transport

def test_bearer_token_from_the_named_variable(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=chat_answer())

    config = EndpointConfig(name="e", base_url="http://mock/v1", token_env=TOKEN_ENV)
    client = EndpointClient(config, transport=httpx.MockTransport(handler))
    assert isinstance(client.credentials, BearerToken)
    assert run(client.call(["hi"])).results == ["ok"]
    assert run(client.call(["again"])).results == ["ok"]
    assert seen == ["Bearer " + TOKEN] * 2


def test_missing_token_variable_names_it_and_sends_nothing():
    requests = []
    config = EndpointConfig(name="my-chat", base_url="http://mock/v1", token_env=TOKEN_ENV)
    client = EndpointClient(config, transport=httpx.MockTransport(lambda r: requests.append(r)))
    with pytest.raises(CredentialError) as info:
        run(client.call(["hi"]))
    message = str(info.value)
    assert TOKEN_ENV in message and "'my-chat'" in message and "not set" in message
    assert requests == [] and client.flow.limit.in_flight == 0


def test_no_credentials_sends_no_authorization():
    seen = []

    def handler(request):
        seen.append("authorization" in request.headers)
        return httpx.Response(200, json=chat_answer())

    client = EndpointClient(EndpointConfig(name="e", base_url="http://mock/v1"), transport=httpx.MockTransport(handler))
    assert isinstance(client.credentials, NoCredentials) and repr(client.credentials) == "NoCredentials()"
    run(client.call(["hi"]))
    assert seen == [False]


class OAuthServer:
    """The token endpoint and the model endpoint behind one MockTransport."""

    def __init__(self, ttl: float = 100.0, token_failures: list[int] | None = None) -> None:
        self.ttl = ttl
        self.issued: list[str] = []
        self.token_requests: list[httpx.Request] = []
        self.used: list[str] = []
        self.token_failures = list(token_failures or [])

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oidc/v1/token":
            self.token_requests.append(request)
            if self.token_failures:
                code = self.token_failures.pop(0)
                return httpx.Response(code, json={"error": "invalid_client" if code == 401 else "busy",
                                                  "error_description": f"token endpoint said {code}"})
            token = f"oauth-token-{len(self.issued)}"
            self.issued.append(token)
            return httpx.Response(200, json={"access_token": token, "token_type": "Bearer", "expires_in": self.ttl})
        self.used.append(request.headers["authorization"])
        return httpx.Response(200, json=chat_answer())


def oauth_client(server: OAuthServer, clock: Clock | None = None, **keys) -> EndpointClient:
    config = EndpointConfig(name="dbx-chat", api="databricks", host="https://ws.example", task="chat",
                            client_id_env=ID_ENV, client_secret_env=SECRET_ENV, **{**FAST, **keys})
    extra = {"clock": clock} if clock is not None else {}
    return EndpointClient(config, transport=httpx.MockTransport(server), sleep=no_sleep, rand=lambda: 0.0, **extra)


def test_oauth_fetches_uses_and_refreshes_before_expiry(monkeypatch):
    monkeypatch.setenv(ID_ENV, CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    server, clock = OAuthServer(ttl=100.0), Clock()
    client = oauth_client(server, clock)
    assert isinstance(client.credentials, DatabricksOAuth)

    async def go():
        await asyncio.gather(*(client.call([f"p{i}"]) for i in range(20)))  # one fetch for all of them
        clock.now += 79.0  # 79% of the token's life: keep it
        await client.call(["still fresh"])
        clock.now += 2.0  # past 80%: refresh while the old token is still valid
        await client.call(["refreshed"])
        await client.call(["reused"])
    run(go())
    assert server.issued == ["oauth-token-0", "oauth-token-1"]
    assert server.used == ["Bearer oauth-token-0"] * 21 + ["Bearer oauth-token-1"] * 2
    request = server.token_requests[0]
    assert str(request.url) == "https://ws.example/oidc/v1/token"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
    assert parse_qs(request.content.decode()) == {"grant_type": ["client_credentials"], "scope": ["all-apis"]}


def test_oauth_token_endpoint_hiccups_are_retried(monkeypatch):
    monkeypatch.setenv(ID_ENV, CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    server = OAuthServer(token_failures=[503, 429])
    result = run(oauth_client(server).call(["hi"]))
    assert result.error is None and result.attempts == 3
    assert server.used == ["Bearer oauth-token-0"]


def test_oauth_refusal_names_the_variables_not_the_secret(monkeypatch):
    monkeypatch.setenv(ID_ENV, CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    server = OAuthServer(token_failures=[401] * 10)
    result = run(oauth_client(server).call(["hi"]))
    error = result.error
    assert isinstance(error, HTTPRequestError) and not error.retryable and error.status == 401
    assert result.attempts == 1 and server.used == []
    message = str(error)
    assert ID_ENV in message and SECRET_ENV in message and "token endpoint said 401" in message
    assert SECRET not in message


@pytest.mark.parametrize("code,cls", [(429, RateLimitError), (500, ServerError), (503, ServerError)])
def test_oauth_transient_failures_are_retryable_errors(monkeypatch, code, cls):
    monkeypatch.setenv(ID_ENV, CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    server = OAuthServer(token_failures=[code] * 10)
    result = run(oauth_client(server, max_retries=2).call(["hi"]))
    assert isinstance(result.error, cls) and result.error.retryable and result.attempts == 3


def test_oauth_unreachable_token_endpoint(monkeypatch):
    monkeypatch.setenv(ID_ENV, CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, SECRET)

    def handler(request):
        raise httpx.ConnectError("connection refused")

    config = EndpointConfig(name="dbx-chat", api="databricks", host="https://ws.example",
                            client_id_env=ID_ENV, client_secret_env=SECRET_ENV, **FAST)
    client = EndpointClient(config, transport=httpx.MockTransport(handler), sleep=no_sleep)
    result = run(client.call(["hi"]))
    assert isinstance(result.error, TransportError) and "oidc/v1/token" in str(result.error)
    assert result.attempts == FAST["max_retries"] + 1


@pytest.mark.parametrize("missing", [ID_ENV, SECRET_ENV])
def test_oauth_missing_variable(monkeypatch, missing):
    for name, value in ((ID_ENV, CLIENT_ID), (SECRET_ENV, SECRET)):
        if name != missing:
            monkeypatch.setenv(name, value)
    with pytest.raises(CredentialError, match=missing):
        run(oauth_client(OAuthServer()).call(["hi"]))


def test_credentials_for_picks_the_kind():
    transport = httpx.MockTransport(lambda r: httpx.Response(200))
    base = dict(name="e", api="databricks", host="h")
    assert isinstance(credentials_for(EndpointConfig(**base), transport), NoCredentials)
    assert isinstance(credentials_for(EndpointConfig(**base, token_env=TOKEN_ENV), transport), BearerToken)
    oauth = EndpointConfig(**base, token_env=TOKEN_ENV, client_id_env=ID_ENV, client_secret_env=SECRET_ENV)
    assert isinstance(credentials_for(oauth, transport), DatabricksOAuth)


# ================================================================ real HTTP

# The suite's simulator (conftest's ``srv``: every option back to its default for each test).

def bearer_client(srv, transport="aiohttp", **keys) -> EndpointClient:
    config = EndpointConfig(name="secured", api="openai", base_url=srv.url + "/v1", **{**FAST, **keys})
    return EndpointClient(config, transport=make_transport(transport))


async def calls(client, prompts):
    try:
        return await asyncio.gather(*(client.call([p]) for p in prompts))
    finally:
        await client.aclose()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bearer_token_over_http(srv, monkeypatch, transport):
    srv.configure(token=TOKEN)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    [ok] = run(calls(bearer_client(srv, transport, token_env=TOKEN_ENV), ["let me in"]))
    assert ok.error is None and ok.results == [simulated_answer("let me in")[0]]
    [refused] = run(calls(bearer_client(srv, transport), ["no token"]))
    assert isinstance(refused.error, HTTPRequestError) and refused.error.status == 401
    assert "missing or invalid bearer token" in str(refused.error) and refused.attempts == 1
    monkeypatch.setenv(TOKEN_ENV, "a-wrong-token")
    [wrong] = run(calls(bearer_client(srv, transport, token_env=TOKEN_ENV), ["wrong token"]))
    assert wrong.error.status == 401
    assert srv.stats()["auth_failures"] == 2


def test_missing_variable_over_http(srv):
    srv.configure(token=TOKEN)
    with pytest.raises(CredentialError) as info:
        run(calls(bearer_client(srv, token_env=TOKEN_ENV), ["hi"]))
    assert TOKEN_ENV in str(info.value) and TOKEN not in str(info.value)
    assert srv.stats()["requests"] == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_secrets_never_in_logs_errors_or_reprs(srv, monkeypatch, caplog, transport):
    caplog.set_level(logging.DEBUG)  # every logger, the HTTP libraries' too
    srv.configure(token=TOKEN)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    client = bearer_client(srv, transport, token_env=TOKEN_ENV)

    async def go():
        try:
            results = await asyncio.gather(
                client.call(["[[flaky:2:500]] retried twice"]), client.call(["[[flaky:1:429-bare]] limited"]),
                client.call(["[[fail:400]] refused"]), client.call(["plain"]))
            texts = [repr(client), repr(client.credentials), repr(client.config), repr(client.flow),
                     repr(client.transport), str(client.stats)]
            return results, texts
        finally:
            await client.aclose()
    results, texts = run(go())
    assert [r.attempts for r in results] == [3, 2, 1, 1]
    assert any("retrying secured" in r.getMessage() for r in caplog.records)  # the retry logs were captured
    texts += [str(r.error) for r in results] + [repr(r.error) for r in results]
    texts += [caplog.text] + [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
    for text in texts:
        assert TOKEN not in text

    monkeypatch.setenv(TOKEN_ENV, "a-wrong-token-also-secret")
    [refused] = run(calls(bearer_client(srv, transport, token_env=TOKEN_ENV), ["wrong"]))
    assert refused.error.status == 401 and "a-wrong-token-also-secret" not in str(refused.error)


def oauth_http_client(srv, transport="aiohttp") -> EndpointClient:
    config = EndpointConfig(name="dbx-oauth", api="databricks", host=srv.url, task="chat",
                            client_id_env=ID_ENV, client_secret_env=SECRET_ENV, **FAST)
    return EndpointClient(config, transport=make_transport(transport))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oauth_m2m_over_http(srv, monkeypatch, caplog, transport):
    caplog.set_level(logging.DEBUG)
    srv.configure(oauth_client_id=CLIENT_ID, oauth_client_secret=SECRET, oauth_ttl=1.0)
    monkeypatch.setenv(ID_ENV, CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, SECRET)
    client = oauth_http_client(srv, transport)

    async def go():
        try:
            first = await asyncio.gather(*(client.call([f"first {i}"]) for i in range(10)))
            issued_first = srv.stats()["oauth_tokens_issued"]
            results, deadline = list(first), time.monotonic() + 10.0
            # keep calling past the first token's refresh point; a token used after its expiry would be a 401
            while srv.stats()["oauth_tokens_issued"] < 2 and time.monotonic() < deadline:
                results += await asyncio.gather(*(client.call([f"later {len(results) + i}"]) for i in range(5)))
                await asyncio.sleep(0.02)
            results += await asyncio.gather(*(client.call([f"after {i}"]) for i in range(5)))
            return issued_first, results
        finally:
            await client.aclose()
    issued_first, results = run(go())
    assert issued_first == 1  # ten concurrent first calls share one token request
    assert all(r.error is None for r in results), [str(r.error) for r in results if r.error][:3]
    stats = srv.stats()
    assert stats["oauth_tokens_issued"] >= 2 and stats["auth_failures"] == 0
    assert stats["answered"] == len(results)
    for text in [caplog.text, repr(client), repr(client.credentials), repr(client.config)]:
        assert SECRET not in text


def test_oauth_wrong_secret_over_http(srv, monkeypatch):
    srv.configure(oauth_client_id=CLIENT_ID, oauth_client_secret=SECRET)
    monkeypatch.setenv(ID_ENV, CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, "not-the-secret")
    [result] = run(calls(oauth_http_client(srv), ["hi"]))
    assert isinstance(result.error, HTTPRequestError) and result.error.status == 401
    assert "client authentication failed" in str(result.error) and SECRET_ENV in str(result.error)
    assert "not-the-secret" not in str(result.error)
    assert srv.stats()["requests"] == 0  # no model request without a token
