"""What one simulator instance is told: every setting, its default, its check and its help text.

The command line (``cli.py``) builds a :class:`Settings` from argv, ``POST /_admin/config`` derives a
new one from a JSON object, and ``GET /_admin/config`` shows one with its secrets masked. Each
setting name is its command-line flag with dashes for underscores.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from . import limits
from .faults import DEFAULT_FAULTS, FAULT_KINDS

__all__ = ["FIXED", "SECRETS", "SECRET_ENV", "Settings", "default_options"]

# where a secret is read from when the command line does not give it (ServerProcess sets these)
SECRET_ENV = {"token": "BATCH_SERVE_TOKEN", "oauth_client_secret": "BATCH_SERVE_OAUTH_CLIENT_SECRET"}
SECRETS = tuple(SECRET_ENV)  # shown masked
FIXED = ("host", "port")  # the listening socket is bound once


def _optional_float(value: Any) -> float | None:
    return None if value in (None, "", "auto") else float(value)


def _retry_after(value: Any) -> str | float:
    if isinstance(value, str) and value.lower() in ("auto", "none"):
        return value.lower()
    seconds = float(value)
    if seconds < 0:
        raise ValueError("retry_after must be auto, none or a number of seconds >= 0")
    return seconds


def _secret(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _fault_list(value: Any) -> tuple[str, ...]:
    kinds = value.split(",") if isinstance(value, str) else list(value)
    kinds = [str(k).strip() for k in kinds if str(k).strip()]
    unknown = [k for k in kinds if k not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {sorted(FAULT_KINDS)}")
    return tuple(kinds)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _profile(value: Any) -> str:
    value = str(value).strip().lower()
    if value not in limits.PROFILES:
        raise ValueError(f"limit_profile must be one of {', '.join(limits.PROFILES)}")
    return value


def _positive(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be a positive number")
    return number


def _setting(default: Any, convert: Callable[[Any], Any], text: str) -> Any:
    return dataclasses.field(default=default, metadata={"convert": convert, "help": text})


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """One server's settings; a change makes a new instance (:meth:`changed`), so a bad change changes nothing."""

    host: str = _setting("127.0.0.1", str, "interface to listen on")
    port: int = _setting(0, int, "port; 0 picks a free one")
    latency_ms: float = _setting(0.0, float, "fixed latency added to every data-plane answer")
    latency_jitter_ms: float = _setting(0.0, float, "uniform random extra latency, 0..this")
    rate_limit: float = _setting(0.0, float, "requests per second cap; 0 means none")
    burst: float | None = _setting(None, _optional_float, "token bucket size; default max(1, rate/10)")
    retry_after: str | float = _setting("auto", _retry_after, "auto, none or seconds for 429 Retry-After headers")
    token: str | None = _setting(None, _secret, "bearer token data-plane requests must carry "
                                 f"(or ${SECRET_ENV['token']})")
    oauth_client_id: str | None = _setting(None, _secret, "enables the OAuth client_credentials token endpoint")
    oauth_client_secret: str | None = _setting(None, _secret,
                                               f"OAuth client secret (or ${SECRET_ENV['oauth_client_secret']})")
    oauth_ttl: float = _setting(3600.0, float, "lifetime of issued OAuth tokens, seconds")
    fault_rate: float = _setting(0.0, float, "share of data-plane requests that get a random fault")
    faults: tuple[str, ...] = _setting(_fault_list(DEFAULT_FAULTS), _fault_list,
                                       "comma list of fault kinds to draw from")
    stall_seconds: float = _setting(30.0, float, "how long a stall fault waits before answering")
    max_prompt_chars: int = _setting(0, int, "longer prompts get a 400 context-length error; 0 = unlimited")
    embedding_dim: int = _setting(16, int, "embedding vector size")
    seed: int = _setting(0, int, "seed for fault and jitter draws")
    record: bool = _setting(False, _flag, "record per-prompt call counts and the last 200 bodies")
    limit_profile: str = _setting(limits.DEFAULT_PROFILE, _profile, "how the endpoint refuses traffic above its "
                                  "limit: " + ", ".join(limits.PROFILES))
    window_s: float = _setting(limits.DEFAULT_WINDOW_S, _positive, "window length in seconds for the window profile")
    tokens_per_minute: float = _setting(0.0, float, "token cap for the tpm profile (prompt + max_tokens per request)")
    max_concurrent: int = _setting(0, int, "requests in flight for the concurrency profile; the rest get a 429")

    def changed(self, changes: Mapping[str, Any]) -> Settings:
        """These settings with ``changes`` (setting name to value; None means the default) applied.

        Raises ValueError naming an unknown setting or a value its check refuses.
        """
        known = {f.name: f for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(f"unknown options {unknown}")
        converted: dict[str, Any] = {}
        for name, value in changes.items():
            spec = known[name]
            try:
                converted[name] = spec.default if value is None else spec.metadata["convert"](value)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bad value for {name}: {exc}") from None
        return dataclasses.replace(self, **converted)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def public(self) -> dict[str, Any]:
        """What ``/_admin/config`` shows: every setting, a secret as ``***`` when set."""
        shown = self.as_dict()
        for name in SECRETS:
            shown[name] = "***" if shown[name] else None
        return shown


def default_options() -> dict[str, Any]:
    """The default settings by name, as the rate limiters in ``limits.py`` read them."""
    return Settings().as_dict()
