"""ai_query for any Spark: answers, embeddings and structured fields from model serving endpoints, as columns.

Three ways in: ``ai_query`` and the task functions on a DataFrame, ``register(spark)`` /
``sql(spark, ...)`` for SQL, and the job runner (``python -m jobs run conf/jobs/<job>.yaml``).
"""

from .config import EndpointConfig, Registry, add_endpoint, get_endpoint, registry
from .errors import (BatchError, ConfigError, CredentialError, EndpointError, HTTPRequestError,
                     InvalidModelParametersError, InvalidRequestTypeError, InvalidResponseError, ParseCastError,
                     RateLimitError, ServerError, TransportError, UnknownEndpointError,
                     UnsupportedResponseFormatError)
from ._functions import ai_query
from ._sql import register, sql
from ._tasks import (ai_analyze_sentiment, ai_classify, ai_extract, ai_fix_grammar, ai_gen, ai_mask, ai_similarity,
                    ai_summarize, ai_translate)

__all__ = [
    "ai_query", "register", "sql",
    "ai_analyze_sentiment", "ai_classify", "ai_extract", "ai_fix_grammar", "ai_gen", "ai_mask", "ai_similarity",
    "ai_summarize", "ai_translate",
    "EndpointConfig", "Registry", "registry", "add_endpoint", "get_endpoint",
    "BatchError", "ConfigError", "UnknownEndpointError", "CredentialError", "InvalidModelParametersError",
    "UnsupportedResponseFormatError", "InvalidRequestTypeError", "EndpointError", "HTTPRequestError",
    "RateLimitError", "ServerError", "TransportError", "InvalidResponseError", "ParseCastError",
]
