"""What one server instance remembers between requests: its settings, counters, limiter and random draws."""

from __future__ import annotations

import collections
import itertools
import random
import time
from typing import Any

from aiohttp import web

from . import limits
from .settings import FIXED, Settings

__all__ = ["STATE", "State", "Stats"]

REPORTED_TASKS = ("chat", "completions", "embeddings", "custom")  # listed in the stats even when 0


class Stats:
    """Plain counters; a snapshot is built only when asked for."""

    def __init__(self) -> None:
        self.requests = self.answered = self.inputs = self.inputs_received = 0
        self.in_flight = self.max_in_flight = self.rate_limited = self.dropped = 0
        self.auth_failures = self.oauth_tokens_issued = 0
        self.prompt_tokens = self.completion_tokens = 0
        self.by_status: collections.Counter = collections.Counter()
        self.by_task: collections.Counter = collections.Counter({t: 0 for t in REPORTED_TASKS})
        self.faults: collections.Counter = collections.Counter()
        self.per_second: list[int] = []
        self.started_at = time.time()
        self.origin = time.monotonic()

    def accept(self) -> None:
        """Count an admitted request in ``per_second`` (whole seconds since the start or the last reset)."""
        second = int(time.monotonic() - self.origin)
        counts = self.per_second
        if second >= len(counts):
            counts.extend([0] * (second + 1 - len(counts)))
        counts[second] += 1

    def snapshot(self, in_flight: int) -> dict[str, Any]:
        """What ``/_admin/stats`` shows: every counter, statuses by code as strings, ``elapsed_s`` in seconds."""
        return {
            "requests": self.requests, "answered": self.answered,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_task": dict(self.by_task), "inputs": self.inputs,
            "inputs_received": self.inputs_received, "in_flight": in_flight,
            "max_in_flight": self.max_in_flight, "rate_limited": self.rate_limited,
            "faults": dict(self.faults), "dropped": self.dropped,
            "auth_failures": self.auth_failures, "oauth_tokens_issued": self.oauth_tokens_issued,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "per_second": list(self.per_second), "started_at": self.started_at,
            "elapsed_s": time.monotonic() - self.origin,
        }


class State:
    """Everything one server instance remembers between requests."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.issued: dict[str, float] = {}  # OAuth access token -> monotonic expiry
        self.ids = itertools.count(1)
        self.in_flight = 0
        self.configure({})
        self.reset()

    def configure(self, changes: dict[str, Any]) -> None:
        """Apply ``/_admin/config`` changes; the limiter and the random draws start over only when their
        settings change. Raises ValueError for a bad setting or a change to ``host`` or ``port``."""
        fixed = [k for k in FIXED if k in changes and changes[k] != getattr(self.settings, k)]
        if fixed:
            raise ValueError(f"{fixed} cannot change while the server runs")
        self.settings = settings = self.settings.changed(changes)
        if not changes or any(name in changes for name in limits.RATE_OPTIONS):
            self.limiter = limits.build(settings.as_dict())
        self.auth_required = bool(settings.token or settings.oauth_client_id)
        if not changes or "seed" in changes:
            self.rng = random.Random(settings.seed)
            self.jitter = random.Random(settings.seed + 1)

    def reset(self) -> None:
        self.stats = Stats()
        self.stats.max_in_flight = self.in_flight
        self.flaky: dict[str, int] = {}
        self.calls: collections.Counter = collections.Counter()
        self.answers: collections.Counter = collections.Counter()
        self.bodies: collections.deque = collections.deque(maxlen=200)


STATE = web.AppKey("state", State)
