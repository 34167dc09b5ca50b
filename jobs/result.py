"""What a run did: its rows, spend, usage, and whether it finished, stopped at a limit or failed."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from .usage import EndpointUsage

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """One run's outcome; ``status`` is ``succeeded``, ``stopped`` (by ``max_spend``, resumable) or ``failed``."""

    run_id: str
    status: str = "succeeded"
    rows_pending: int = 0
    rows_in: int = 0
    rows_failed: int = 0
    skipped_null_keys: int = 0
    rows_by_category: dict[str, int] = field(default_factory=dict)
    rows_removed: int = 0
    spend: float = 0.0
    estimate: object | None = None  # jobs.estimate.Estimate, when max_spend asked for one
    reasons: list[str] = field(default_factory=list)
    usage: list[EndpointUsage] = field(default_factory=list)
    started: dt.datetime = field(default_factory=lambda: dt.datetime.now())
    ended: dt.datetime | None = None
    report: str | None = None      # the run report's path (HTML, beside the usage table)

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"

    @property
    def stopped(self) -> bool:
        """Stopped cleanly at a chunk boundary by ``max_spend``: resumable, nothing half written."""
        return self.status == "stopped"
