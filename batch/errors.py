"""The toolkit's exceptions, one tree so callers can catch at the depth they care about.

Messages carry the Databricks error class where one fits, so that users who know
``ai_query`` recognise them, and never carry a credential value::

    BatchError
    ├── ConfigError                    bad registry / job file / argument (file, key, line)
    │   ├── UnknownEndpointError       a name not in the endpoint registry
    │   ├── CredentialError            a credential variable is missing (names it, never its value)
    │   ├── InvalidModelParametersError   AI_FUNCTION_INVALID_MODEL_PARAMETERS
    │   ├── UnsupportedResponseFormatError AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT
    │   └── InvalidRequestTypeError    the request column has the wrong type
    └── EndpointError                  a row could not be answered (endpoint, status, text)
        ├── HTTPRequestError           AI_FUNCTION_HTTP_REQUEST_ERROR: the endpoint said no
        │   ├── RateLimitError         429
        │   ├── QuotaExceededError     429 insufficient_quota: no credit left, not retried
        │   └── ServerError            408, 500, 502, 503, 504: transient, retried
        ├── TransportError             timeouts, refused or dropped connections
        ├── InvalidResponseError       AI_FUNCTION_INVALID_HTTP_RESPONSE: 200 with a body we cannot read
        │   └── NoAnswerError          a well-formed answer without text: tool call, refusal, output limit
        ├── ParseCastError             AI_FUNCTION_HTTP_PARSE_CAST_ERROR: answer does not fit returnType
        └── EmptyRequestError          a blank request, refused before any call
"""

from __future__ import annotations

import re

__all__ = [
    "BatchError",
    "ConfigError",
    "UnknownEndpointError",
    "CredentialError",
    "InvalidModelParametersError",
    "UnsupportedResponseFormatError",
    "InvalidRequestTypeError",
    "EndpointError",
    "HTTPRequestError",
    "RateLimitError",
    "QuotaExceededError",
    "ServerError",
    "TransportError",
    "InvalidResponseError",
    "NoAnswerError",
    "ParseCastError",
    "EmptyRequestError",
    "status_error",
    "failure_class",
]


class BatchError(Exception):
    """Root of every error the toolkit raises on purpose."""


class ConfigError(BatchError, ValueError):
    """Something the user wrote is wrong; the message says where, so it can be fixed without guessing."""

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None,
                 line: int | None = None) -> None:
        where = []
        if source:
            where.append(source + (f":{line}" if line else ""))
        if key:
            where.append(f"key '{key}'")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.reason, self.source, self.key, self.line = message, source, key, line


class UnknownEndpointError(ConfigError):
    """An endpoint name that neither the registry file nor code defines; the message lists the known ones."""


class CredentialError(ConfigError):
    """A credential the endpoint needs is not set: names the environment variable, never a value."""


class InvalidModelParametersError(ConfigError):
    """``modelParameters`` the endpoint's api and task cannot take; ``subclass`` says which rule, as Databricks
    does (``AI_FUNCTION_INVALID_MODEL_PARAMETERS.<subclass>``)."""

    error_class = "AI_FUNCTION_INVALID_MODEL_PARAMETERS"

    def __init__(self, subclass: str, message: str) -> None:
        super().__init__(f"[{self.error_class}.{subclass}] {message}")
        self.subclass = subclass


class UnsupportedResponseFormatError(ConfigError):
    """A ``responseFormat`` that is not text, json_object, a JSON schema document or a DDL struct."""

    error_class = "AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT"

    def __init__(self, message: str) -> None:
        super().__init__(
            f"[{self.error_class}] {message}. Supported: 'text', 'json_object', an OpenAI "
            "json_schema document, or a DDL struct such as 'STRUCT<label: STRING>'"
        )


class InvalidRequestTypeError(ConfigError):
    """The request column's Spark type does not fit the endpoint's task (a struct for a chat endpoint, ...)."""


class EndpointError(BatchError):
    """A row could not be answered. Carries what a user needs to act: who, what status, what they said."""

    error_class = "AI_FUNCTION_HTTP_REQUEST_ERROR"
    retryable = False

    def __init__(self, endpoint: str, message: str, *, status: int | None = None,
                 retry_after: float | None = None, retryable: bool | None = None) -> None:
        self.endpoint, self.detail, self.status, self.retry_after = endpoint, message, status, retry_after
        if retryable is not None:
            self.retryable = retryable
        super().__init__(self.describe())

    def describe(self) -> str:
        """The message: ``[ERROR_CLASS] endpoint 'name' HTTP status: what the endpoint said``."""
        status = f" HTTP {self.status}" if self.status is not None else ""
        return f"[{self.error_class}] endpoint '{self.endpoint}'{status}: {self.detail}"


class HTTPRequestError(EndpointError):
    """The endpoint answered with an HTTP error status (or an error inside a 200 body); ``status`` holds it."""


class RateLimitError(HTTPRequestError):
    """429 that outlasted the retries; ``retry_after`` is the endpoint's last wait in seconds, if it sent one."""

    retryable = True


class QuotaExceededError(HTTPRequestError):
    """A 429 that means the account has no credit left: waiting does not bring it back, so it is neither
    retried nor taken as a sign to slow down."""


class ServerError(HTTPRequestError):
    """408, 500, 502, 503 or 504 that outlasted the retries."""

    retryable = True


class TransportError(EndpointError):
    """No HTTP answer: a timeout, a refused or dropped connection, a proxy that failed; retried."""

    retryable = True


class InvalidResponseError(EndpointError):
    """A 200 whose body cannot be read: a truncated stream is worth retrying, a wrong shape is not."""

    error_class = "AI_FUNCTION_INVALID_HTTP_RESPONSE"
    retryable = True


class NoAnswerError(InvalidResponseError):
    """The endpoint answered well-formed JSON but gave no usable text (a tool call, a refusal, an answer cut at
    the output-token limit, one withheld by a content filter). Asking again would pay for the same again."""

    retryable = False


class ParseCastError(EndpointError):
    """An answer that does not fit ``returnType`` (or the responseFormat struct); the message quotes it."""

    error_class = "AI_FUNCTION_HTTP_PARSE_CAST_ERROR"


class EmptyRequestError(EndpointError):
    """An empty or whitespace-only request would be paid for and answer nothing; NULL is the way to skip a row."""

    error_class = "EMPTY_REQUEST"


_TRANSIENT_STATUSES = frozenset({408, 500, 502, 503, 504})
# Codes or types that OpenAI-style endpoints put in a 429 when the account is out of credit, not over a rate.
QUOTA_KINDS = frozenset({"insufficient_quota", "billing_hard_limit_reached"})


def status_error(endpoint: str, status: int, text: str, retry_after: float | None = None,
                 kind: str | None = None) -> EndpointError:
    """Map an HTTP status to its error class. Other 4xx and 5xx (501, 505...) will not change on retry.
    ``kind`` is the body's error code or type, when it has one: it tells a spent quota from a rate limit."""
    if status == 429:
        if kind in QUOTA_KINDS:
            return QuotaExceededError(endpoint, f"{text} (the account has no quota left, so the request is not "
                                      "retried: add credit or raise the quota, then run again)", status=status)
        return RateLimitError(endpoint, text, status=status, retry_after=retry_after)
    if status in _TRANSIENT_STATUSES:
        return ServerError(endpoint, text, status=status, retry_after=retry_after)
    return HTTPRequestError(endpoint, text, status=status)


_RAISED = re.compile(r"\bbatch\.errors\.([A-Z][A-Za-z]*Error)\b")


def failure_class(exc: BaseException) -> type[BatchError] | None:
    """The toolkit error class behind an exception a Spark action raised on the driver, or None.

    A row that fails an ``ai_query`` with ``failOnError => true`` raises its ``EndpointError`` subclass
    in a Python worker; the driver sees PySpark's ``PythonException`` (classic Spark) or a
    ``SparkConnectGrpcException`` subclass (Spark Connect), whose message holds the worker's traceback
    ending in ``batch.errors.<ClassName>: [<ERROR_CLASS>] ...``. This reads that name back, looking
    through ``__cause__`` / ``__context__`` too, so that callers can branch on the class::

        try:
            df.write.saveAsTable("answers")
        except Exception as exc:
            if batch.failure_class(exc) is batch.RateLimitError: ...  # or issubclass(..., batch.EndpointError)
            raise

    An exception that already is a ``BatchError`` (a ``ConfigError`` raised while the column is built)
    gives its own class. When a traceback names several, the last one (the error that ended the task)
    wins.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, BatchError):
            return type(current)
        found = _RAISED.findall(str(current))
        if found and isinstance(globals().get(found[-1]), type) and issubclass(globals()[found[-1]], BatchError):
            return globals()[found[-1]]
        current = current.__cause__ or current.__context__
    return None
