"""Column functions for notebooks: ``ai_query`` and the task functions built on it.

Each call checks its arguments at once (an unknown endpoint or a bad modelParameters
fails here, not in a task) and returns a Column backed by one iterator pandas UDF.
"""

from __future__ import annotations

import re
from typing import Any

from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F

from ._arguments import QuerySpec, build_spec
from .config import EndpointConfig
from ._udf import make_udf, result_column

__all__ = ["ai_query", "query_column", "rate_share", "task_slots", "SLOTS_CONF"]


SLOTS_CONF = "spark.aiquery.taskSlots"


def task_slots(spark: SparkSession | None = None) -> int:
    """How many tasks can run at once across the cluster: each running task gets an equal share of a budget.

    A share is held per running task (each has its own Python worker), so a per-minute budget stays
    whole when split by the most tasks that can ever run together. A figure too high only leaves
    budget unused; one too low overshoots the endpoint, so the largest known figure wins. The session
    setting ``spark.aiquery.taskSlots`` is trusted as given. Otherwise: what the configuration promises
    (``local[N]``, ``spark.cores.max``, executor instances or the dynamic-allocation maximum times
    ``spark.executor.cores``) and what the scheduler reports now (registered executor cores). Spark
    Connect has no SparkContext, so there the configuration is read over ``spark.conf`` and the
    scheduler speaks through the number of splits it gives a range. With none of these known,
    ``spark.default.parallelism``, else 1.
    """
    spark = spark or SparkSession.getActiveSession()
    if spark is None:
        return 1
    explicit = _conf_int(spark, SLOTS_CONF)
    if explicit:
        return explicit
    known = [f for f in (_configured_slots(spark), _scheduler_slots(spark)) if f]
    if known:
        return max(known)
    # Nothing says how many cores there are: a partition count is at least as many in practice.
    return _conf_int(spark, "spark.default.parallelism") or 1


def _conf(spark: SparkSession, key: str) -> str | None:
    try:
        value = spark.conf.get(key, None)
    except Exception:  # a key the server refuses to show is a key we do not know
        return None
    return None if value is None else str(value).strip()


def _conf_int(spark: SparkSession, key: str) -> int | None:
    value = _conf(spark, key)
    return int(value) if value and value.isdigit() and int(value) > 0 else None


def _configured_slots(spark: SparkSession) -> int | None:
    """What the master URL and the allocation settings promise, in tasks (``spark.task.cpus`` each)."""
    cpus = _conf_int(spark, "spark.task.cpus") or 1
    master = (_conf(spark, "spark.master") or "").replace(" ", "")
    local = re.fullmatch(r"local(?:\[(\d+)(?:,\d+)?\])?", master)
    if local:
        return max(1, int(local.group(1) or 1) // cpus)
    cluster = re.fullmatch(r"local-cluster\[(\d+),(\d+),\d+\]", master)
    if cluster:
        return max(1, int(cluster.group(1)) * int(cluster.group(2)) // cpus)
    cores = _conf_int(spark, "spark.executor.cores")
    candidates = [_conf_int(spark, "spark.cores.max")]
    if cores:
        dynamic = (_conf(spark, "spark.dynamicAllocation.enabled") or "").lower() == "true"
        executors = _conf_int(spark, "spark.dynamicAllocation.maxExecutors" if dynamic else "spark.executor.instances")
        candidates.append(executors * cores if executors and executors < 1 << 20 else None)
    known = [c // cpus for c in candidates if c]
    return max(1, max(known)) if known else None


def _scheduler_slots(spark: SparkSession) -> int | None:
    """Executor cores registered now, in tasks; under Connect, the default parallelism a range is split into."""
    try:
        sc = spark.sparkContext
    except Exception:
        sc = None
    if sc is not None:
        try:
            jsc = sc._jsc.sc()
            slots = int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
        except Exception:
            slots = 0
        if slots > 0:
            return slots
        if _conf(spark, "spark.default.parallelism") is None:  # otherwise a partition count, not cores
            try:
                return int(sc.defaultParallelism)
            except Exception:
                return None
        return None
    if _conf(spark, "spark.default.parallelism") is not None or _conf(spark, "spark.sql.leafNodeDefaultParallelism"):
        return None
    try:
        plan = spark.range(1)._explain_string(extended=False)
    except Exception:
        return None
    found = re.search(r"splits=(\d+)", plan)
    return int(found.group(1)) if found else None


def rate_share(config: EndpointConfig, spark: SparkSession | None = None) -> float:
    if not (config.requests_per_minute or config.tokens_per_minute):
        return 1.0
    return 1.0 / task_slots(spark)


def _column(request: Column | str) -> Column:
    return F.col(request) if isinstance(request, str) else request


def query_column(spec: QuerySpec, request: Column | str, *, with_metadata: bool = False,
                 name: str = "ai_query") -> Column:
    udf = make_udf(spec, with_metadata=with_metadata, rate_share=rate_share(spec.endpoint), name=name)
    column = udf(_column(request))
    return column if with_metadata else result_column(spec, column)


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

    Examples
    --------
    >>> df.withColumn("answer", ai_query("my-chat", "prompt", modelParameters={"max_tokens": 64}))
    >>> df.select(ai_query("my-chat", F.col("review"), failOnError=False,
    ...                    responseFormat="STRUCT<sentiment: STRING>").alias("out"))
    """
    spec = build_spec(endpoint, returnType=returnType, failOnError=failOnError,
                      modelParameters=modelParameters, responseFormat=responseFormat)
    return query_column(spec, request)
