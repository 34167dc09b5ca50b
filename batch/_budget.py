"""An endpoint's per-minute budgets, split between the Spark tasks that spend them at the same time.

A registry entry's ``requests_per_minute`` and ``tokens_per_minute`` are the endpoint's whole
budget. Every running task has its own Python worker and so its own client, and no client sees
the others: each may spend only its share of the budget, or together they overshoot it. The share
is worked out here, and only here, whether the slot count comes from the session on the driver or
from the task's local properties (``batch._cluster``); the client turns it into per-second rates.
No PySpark here: the client imports this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import EndpointConfig

__all__ = ["has_budget", "budget_share", "per_second_budgets"]


def has_budget(config: EndpointConfig) -> bool:
    """Whether the entry states a per-minute budget; without one there is nothing to split (nor to count slots for)."""
    return bool(config.requests_per_minute or config.tokens_per_minute)


def budget_share(config: EndpointConfig, slots: int | None) -> float:
    """The fraction (0, 1] of ``config``'s per-minute budgets that one of ``slots`` concurrent tasks may spend.

    ``1 / slots`` when the entry states a budget; 1.0 when it states none (there is nothing to split,
    and a client then keys its pool by the same share whatever the slot count) or when ``slots`` is
    unknown (None or below 1), which leaves each task the whole budget. Raises nothing.
    """
    if not has_budget(config):
        return 1.0
    return 1.0 / slots if slots is not None and slots > 0 else 1.0


def per_second_budgets(config: EndpointConfig, share: float) -> tuple[float | None, float | None]:
    """(requests, tokens) per second that a client holding ``share`` of ``config``'s budgets may spend.

    Each is None where the entry sets no such budget (or 0): that dimension is not rate limited.
    """
    def rate(per_minute: float | None) -> float | None:
        return per_minute * share / 60.0 if per_minute else None

    return rate(config.requests_per_minute), rate(config.tokens_per_minute)
