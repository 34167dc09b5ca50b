"""Flow control: sending as fast as an endpoint allows, and no faster.

One idea per module:

==================  ===================================================================================
``rate``            the rate limiter: a budget of units per second as reserved start times (GCRA)
``concurrency``     the concurrency limiter: requests in flight, grown by slow start and Little's law
``headers``         what the endpoint says: ``Retry-After``, ``retry-after-ms``, ``x-ratelimit-*``
``law``             the control law: pure functions from observations to the next rate, limit, pause
``pace``            the learned rate's state (shared by a host's workers) and the law's steps on it
``shared``          the host-wide cells that state lives in (a small mapped file per endpoint)
``control``         ``FlowControl``: all of the above applied to each request of one endpoint
==================  ===================================================================================

``docs/flow-control.md`` tells the whole story with the reasons for every constant.
"""

from .concurrency import ConcurrencyLimit
from .control import FlowControl
from .headers import Budget, budget_from, parse_duration, parse_retry_after
from .pace import LearnedRate
from .rate import RateBudget

__all__ = ["FlowControl", "ConcurrencyLimit", "LearnedRate", "RateBudget", "Budget", "budget_from",
           "parse_duration", "parse_retry_after"]
