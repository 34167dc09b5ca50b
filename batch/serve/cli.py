"""A local model-serving endpoint that speaks the OpenAI and Databricks wire formats.

``python -m batch.serve`` (or ``ai-query-serve``): one flag per setting (``--latency-ms``, ``--fault-rate``,
...), secrets also from the environment so they stay out of the process list. It prints
``batch.serve listening on URL`` once bound and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
from collections.abc import Mapping

from aiohttp import web

from .app import build_app
from .settings import SECRET_ENV, Settings
from .state import STATE

__all__ = ["READY_PREFIX", "main", "parse_args", "serve"]

READY_PREFIX = "batch.serve listening on "  # ServerProcess waits for this line


def parse_args(argv: list[str] | None, environ: Mapping[str, str]) -> Settings:
    """The settings a command line asks for; a secret not given as a flag is read from ``environ``
    (``SECRET_ENV`` names the variables). A bad value exits 2 with the reason, as argparse does."""
    parser = argparse.ArgumentParser(prog="python -m batch.serve", description=__doc__.splitlines()[0])
    defaults = Settings()
    for spec in dataclasses.fields(defaults):
        flag, help_text = "--" + spec.name.replace("_", "-"), spec.metadata["help"]
        if spec.name == "record":
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            default = getattr(defaults, spec.name)
            shown = ",".join(default) if isinstance(default, tuple) else default
            parser.add_argument(flag, default=default, help=f"{help_text} (default: {shown})")
    args = vars(parser.parse_args(argv))
    for name, variable in SECRET_ENV.items():
        args[name] = args[name] or environ.get(variable)
    try:
        return defaults.changed(args)
    except ValueError as exc:
        parser.error(str(exc))
        raise


async def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT; ``port`` 0 binds a free port, which the settings then show."""
    runner = web.AppRunner(build_app(settings), access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=2048)
    await site.start()
    host, port = runner.addresses[0][:2]
    state = runner.app[STATE]
    state.settings = dataclasses.replace(state.settings, port=port)
    shown = f"[{host}]" if ":" in host else host
    print(f"{READY_PREFIX}http://{shown}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """The ``ai-query-serve`` entry point; returns 0 once stopped."""
    settings = parse_args(argv, os.environ)
    try:
        asyncio.run(serve(settings))
    except KeyboardInterrupt:
        pass
    return 0
