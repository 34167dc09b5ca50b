"""The simulator's URL map: both wire formats' model-serving routes, OAuth, admin, and Files and Batches.

OpenAI's paths live under ``/v1`` (and, for the same bodies, under ``/serving-endpoints``, as Databricks'
OpenAI-compatible routes); Databricks' own is ``/serving-endpoints/{name}/invocations``.
"""

from __future__ import annotations

from aiohttp import web

from . import admin, batches, oauth
from .dataplane import data_handler, list_models
from .settings import Settings
from .state import STATE, State

__all__ = ["build_app"]

MAX_BODY_BYTES = 256 * 1024 * 1024  # a whole batch input file is one upload


def build_app(settings: Settings) -> web.Application:
    """An application serving with ``settings``; raises ValueError when the rate-limit profile lacks its cap."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE] = State(settings)
    post, get = app.router.add_post, app.router.add_get
    for prefix in ("/v1", "/serving-endpoints"):
        post(prefix + "/chat/completions", data_handler("chat", False))
        post(prefix + "/completions", data_handler("completions", False))
        post(prefix + "/embeddings", data_handler("embeddings", False))
    post("/v1/responses", data_handler("responses", False))
    post("/serving-endpoints/{name}/invocations", data_handler(None, True))
    get("/v1/models", list_models)
    get("/oidc/.well-known/oauth-authorization-server", oauth.oauth_metadata)
    get("/.well-known/databricks-config", oauth.host_metadata)
    post("/oidc/v1/token", oauth.oauth_token)
    get("/_admin/stats", admin.admin_stats)
    get("/_admin/prompts", admin.admin_prompts)
    get("/_admin/bodies", admin.admin_bodies)
    app.router.add_route("*", "/_admin/config", admin.admin_config)
    post("/_admin/reset", admin.admin_reset)
    batches.add_routes(app)
    return app
