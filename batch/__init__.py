"""ai_query for any Spark: answers, embeddings and structured fields from model serving endpoints, as columns.

Three ways in: ``ai_query`` and the task functions on a DataFrame, ``register(spark)`` /
``sql(spark, ...)`` for SQL, and the job runner (``python -m jobs run conf/jobs/<job>.yaml``).

The names below are the public API; modules whose names start with an underscore are internal.
Names load on first use, so ``python -m batch.serve`` and the job spec validator never import
PySpark or pandas.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_HOMES = {
    "ai_query": "._functions",
    "register": "._sql", "sql": "._sql", "local_session": "._session",
    **{name: "._tasks" for name in (
        "ai_analyze_sentiment", "ai_classify", "ai_extract", "ai_fix_grammar", "ai_gen", "ai_mask", "ai_similarity",
        "ai_summarize", "ai_translate")},
    **{name: ".config" for name in ("EndpointConfig", "Registry", "registry", "add_endpoint", "get_endpoint")},
    **{name: ".errors" for name in (
        "BatchError", "ConfigError", "UnknownEndpointError", "CredentialError", "InvalidModelParametersError",
        "UnsupportedResponseFormatError", "InvalidRequestTypeError", "EndpointError", "HTTPRequestError",
        "RateLimitError", "QuotaExceededError", "ServerError", "TransportError", "InvalidResponseError",
        "NoAnswerError", "ParseCastError", "EmptyRequestError", "failure_class")},
}

__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'batch' has no attribute {name!r}")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from ._functions import ai_query
    from ._session import local_session
    from ._sql import register, sql
    from ._tasks import (ai_analyze_sentiment, ai_classify, ai_extract, ai_fix_grammar, ai_gen, ai_mask,
                         ai_similarity, ai_summarize, ai_translate)
    from .config import EndpointConfig, Registry, add_endpoint, get_endpoint, registry
    from .errors import (BatchError, ConfigError, CredentialError, EmptyRequestError, EndpointError,
                         HTTPRequestError, InvalidModelParametersError, InvalidRequestTypeError, InvalidResponseError,
                         NoAnswerError, ParseCastError, QuotaExceededError, RateLimitError, ServerError,
                         TransportError, UnknownEndpointError, UnsupportedResponseFormatError, failure_class)
