"""How many Spark tasks can run at once, and so how much of an endpoint's budget each may spend.

A per-minute budget is split evenly between the tasks that can run together (``batch._budget``).
On the driver the count comes from the session (``task_slots``); inside a task no session can
say, so ``pin_task_slots`` writes the count into the session conf, which Spark hands every task
as a local property, for ``worker_share`` to read there. Finding the count leans on two private
PySpark calls (``sc._jsc.sc()`` and a range's ``_explain_string``); both are kept here, and every
probe that fails only leaves the figure unknown.
"""

from __future__ import annotations

import re
from typing import Any

from pyspark import TaskContext
from pyspark.sql import SparkSession

from ._budget import budget_share, has_budget
from .config import EndpointConfig

__all__ = ["SLOTS_CONF", "task_slots", "rate_share", "pin_task_slots", "worker_share"]

SLOTS_CONF = "spark.aiquery.taskSlots"


def task_slots(spark: SparkSession | None = None) -> int:
    """How many tasks (at least 1) can run at once across the cluster of ``spark`` (default: the active session).

    A share is held per running task (each has its own Python worker), so a per-minute budget stays
    whole when split by the most tasks that can ever run together. A figure too high only leaves
    budget unused; one too low overshoots the endpoint, so the largest known figure wins. The session
    setting ``spark.aiquery.taskSlots`` is trusted as given. Otherwise: what the configuration promises
    (``local[N]``, ``spark.cores.max``, executor instances or the dynamic-allocation maximum times
    ``spark.executor.cores``) and what the scheduler reports now (registered executor cores). Spark
    Connect has no SparkContext, so there the configuration is read over ``spark.conf`` and the
    scheduler speaks through the number of splits it gives a range. With none of these known,
    ``spark.default.parallelism``, else 1 (also with no session at all). Raises nothing.
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


def rate_share(config: EndpointConfig, spark: SparkSession | None = None) -> float:
    """On the driver: the fraction (0, 1] of ``config``'s per-minute budgets one task of ``spark`` may spend.

    ``budget_share`` of ``task_slots(spark)``; 1.0 for an endpoint without a budget (the cluster is
    then not asked).
    """
    if not has_budget(config):
        return 1.0
    return budget_share(config, task_slots(spark))


def pin_task_slots(spark: SparkSession) -> None:
    """Record ``task_slots(spark)`` in the session conf (``SLOTS_CONF``), unless it is set already. Raises nothing.

    A function registered for raw ``spark.sql`` meets its endpoint only inside a task, where no
    session can say how many tasks share a budget. Spark hands every task the session's ``spark.*``
    settings as local properties, so the count pinned here is what ``worker_share`` reads there.
    """
    try:
        if spark.conf.get(SLOTS_CONF, None) is None:
            spark.conf.set(SLOTS_CONF, str(task_slots(spark)))
    except Exception:  # noqa: BLE001 - Classic and Connect refuse a setting with different errors
        pass  # refused: each task keeps the whole budget, as before the count was pinned


def worker_share(config: EndpointConfig) -> float:
    """Inside a task: the fraction (0, 1] of ``config``'s per-minute budgets this task may spend.

    ``budget_share`` of the count ``pin_task_slots`` left in the task's local properties; 1.0 outside
    a task or where no count was pinned.
    """
    context = TaskContext.get()
    value = context.getLocalProperty(SLOTS_CONF) if context is not None else None
    return budget_share(config, int(value) if value and value.isdigit() else None)


# ---------------------------------------------------------------- what the session tells

def _conf(spark: SparkSession, key: str) -> str | None:
    try:
        value = spark.conf.get(key, None)
    except Exception:  # noqa: BLE001 - each Spark flavour refuses a key its own way: then we do not know it
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
    except Exception:  # noqa: BLE001 - Connect has no SparkContext; its error differs by version
        sc = None
    if sc is not None:
        try:
            jsc = sc._jsc.sc()
            slots = int(jsc.maxNumConcurrentTasks(jsc.resourceProfileManager().defaultResourceProfile()))
        except Exception:  # noqa: BLE001 - a private JVM call: any failure means no figure
            slots = 0
        if slots > 0:
            return slots
        if _conf(spark, "spark.default.parallelism") is None:  # otherwise a partition count, not cores
            try:
                return int(sc.defaultParallelism)
            except Exception:  # noqa: BLE001 - py4j fails in its own ways: no figure
                return None
        return None
    if _conf(spark, "spark.default.parallelism") is not None or _conf(spark, "spark.sql.leafNodeDefaultParallelism"):
        return None
    try:
        frame: Any = spark.range(1)  # _explain_string is private: the stubs do not know it
        plan = frame._explain_string(extended=False)
    except Exception:  # noqa: BLE001 - a private call over gRPC: any failure means no figure
        return None
    found = re.search(r"splits=(\d+)", plan)
    return int(found.group(1)) if found else None
