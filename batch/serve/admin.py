"""The ``/_admin`` endpoints tests and benchmarks drive the server with: counters, recorded prompts and bodies,
settings, reset. ``ServerProcess`` has a method for each."""

from __future__ import annotations

from aiohttp import web

from .state import STATE

__all__ = ["admin_bodies", "admin_config", "admin_prompts", "admin_reset", "admin_stats"]


async def admin_stats(request: web.Request) -> web.Response:
    """``GET /_admin/stats``: the counters (``Stats.snapshot``) and the limiter's own, or ``limit: null``."""
    state = request.app[STATE]
    return web.json_response({**state.stats.snapshot(state.in_flight),
                              "limit": state.limiter.snapshot() if state.limiter else None})


async def admin_prompts(request: web.Request) -> web.Response:
    """``GET /_admin/prompts``: calls and answers per prompt text, counted while ``record`` is on."""
    state = request.app[STATE]
    return web.json_response({"calls": dict(state.calls), "answered": dict(state.answers)})


async def admin_bodies(request: web.Request) -> web.Response:
    """``GET /_admin/bodies``: the last 200 request bodies, oldest first, kept while ``record`` is on."""
    return web.json_response(list(request.app[STATE].bodies))


async def admin_config(request: web.Request) -> web.Response:
    """``GET`` shows the settings (secrets masked); ``POST`` a JSON object of changes first (400 with
    ``{"error": ...}`` when one is refused)."""
    state = request.app[STATE]
    if request.method == "POST":
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("config must be a JSON object")
            state.configure(changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(state.settings.public())


async def admin_reset(request: web.Request) -> web.Response:
    """``POST /_admin/reset``: counters, recordings and flaky-prompt counts start over; settings stay."""
    request.app[STATE].reset()
    return web.json_response({"reset": True})
