"""The Spark session a job runs in: the one spark-submit or Databricks made, Spark Connect, or a local one."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .spec import JobSpec

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["session_for"]


def session_for(spec: JobSpec, master: str | None = None) -> SparkSession:
    """Under spark-submit, the session it configured; a Spark Connect session for an ``sc://`` master
    (or ``$SPARK_REMOTE``); otherwise the embedded default (local warehouse)."""
    from pyspark.sql import SparkSession

    remote = master or (spec.master if spec.master.startswith("sc://") else os.environ.get("SPARK_REMOTE"))
    if remote and remote.startswith("sc://"):  # tables live in the server's catalog and warehouse
        spark = SparkSession.builder.remote(remote).getOrCreate()
        for key, value in spec.spark_conf.items():
            spark.conf.set(key, value)
        return spark
    if "PYSPARK_GATEWAY_PORT" in os.environ or "DATABRICKS_RUNTIME_VERSION" in os.environ:
        # launched by spark-submit or as a Databricks Python task: keep its master, catalog and settings
        spark = SparkSession.builder.appName(spec.name).getOrCreate()
        for key, value in spec.spark_conf.items():
            spark.conf.set(key, value)
        return spark
    from batch._session import local_session

    return local_session(master or spec.master, spec.warehouse, app_name=spec.name, extra=dict(spec.spark_conf))
