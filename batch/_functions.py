"""Column functions for notebooks: ``ai_query`` and the task functions built on it.

Each call checks its arguments at once (an unknown endpoint or a bad modelParameters
fails here, not in a task) and returns a Column backed by one iterator pandas UDF.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import Column
from pyspark.sql import functions as F

from ._arguments import QuerySpec, build_spec
from ._cluster import rate_share
from .config import EndpointConfig
from ._udf import Answering, make_udf, one_column

__all__ = ["ai_query", "query_column"]


def _column(request: Column | str) -> Column:
    return F.col(request) if isinstance(request, str) else request


def query_column(spec: QuerySpec, *requests: Column | str, with_metadata: bool = False, name: str = "ai_query",
                 answering: Answering | None = None) -> Column:
    """The Column answering ``spec`` for every row of ``requests`` (columns or column names).

    By default one request column and ``output_type(spec, with_metadata)`` per row (``one_column``);
    ``answering`` for UDFs that take other columns or give another result. Each task's budget share is
    ``rate_share`` of the active session, worked out now.
    """
    answering = answering or one_column(spec, with_metadata)
    udf = make_udf(spec, rate_share=rate_share(spec.endpoint), name=name, answering=answering)
    return answering.result_column(udf(*(_column(request) for request in requests)))


def ai_query(endpoint: str | EndpointConfig, request: Column | str, returnType: Any = None,
             failOnError: bool = True, modelParameters: dict[str, Any] | None = None,
             responseFormat: Any = None) -> Column:
    """Ask a model serving endpoint about every row, as Databricks' ``ai_query`` does.

    Parameters
    ----------
    endpoint : str
        A name in the endpoint registry (``conf/endpoints.yaml``, ``$BATCH_ENDPOINTS`` or
        ``batch.add_endpoint``).
    request : Column or str
        The prompt (STRING) for chat and completions, the text to embed for embeddings, a
        STRUCT of the model's inputs for custom models.
    returnType : str, optional
        A DDL type. Custom models need one (unless their entry has ``return_type``); for chat
        and completions the answer is parsed as JSON into it, like ``from_json``.
    failOnError : bool, default True
        True fails the query on the first row that cannot be answered after retries. False
        gives ``STRUCT<result: T, errorMessage: STRING>`` and never fails for a row.
    modelParameters : dict, optional
        Constants passed into the request body: ``max_tokens``, ``temperature``, ``top_p``,
        ``top_k``, ``stop``, ``n`` and any extra key the endpoint accepts.
    responseFormat : str or dict, optional
        ``'text'``, ``'json_object'``, an OpenAI ``json_schema`` document, or a DDL struct
        (``'STRUCT<label: STRING>'``). The answer stays a JSON string unless returnType is given.

    Returns
    -------
    Column
        STRING for chat and completions, ``ARRAY<FLOAT>`` for embeddings, ``returnType`` when given;
        with ``failOnError=False``, ``STRUCT<result: <that type>, errorMessage: STRING>``. A NULL
        request gives NULL, and no call.

    Raises
    ------
    ConfigError
        When the column is built, on the driver: ``UnknownEndpointError``, ``InvalidModelParametersError``,
        ``UnsupportedResponseFormatError``, ``InvalidRequestTypeError``, or a returnType that is not DDL.
    EndpointError
        When the query runs, with ``failOnError=True``: the first row that could not be answered (after
        retries, for the kinds that are retried) fails its task with its kind (``RateLimitError``,
        ``QuotaExceededError``, ``ServerError``, ``TransportError``, ``HTTPRequestError``,
        ``InvalidResponseError``, ``ParseCastError``, or ``EmptyRequestError`` for a blank request). The
        driver sees Spark's exception; ``batch.failure_class(exc)`` names the kind.

    Examples
    --------
    >>> df.withColumn("answer", ai_query("my-chat", "prompt", modelParameters={"max_tokens": 64}))
    >>> df.select(ai_query("my-chat", F.col("review"), failOnError=False,
    ...                    responseFormat="STRUCT<sentiment: STRING>").alias("out"))
    """
    spec = build_spec(endpoint, returnType=returnType, failOnError=failOnError,
                      modelParameters=modelParameters, responseFormat=responseFormat)
    return query_column(spec, request)
