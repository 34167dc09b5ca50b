"""A local Spark session for laptops, tests and the job runner's embedded default.

``local[*]`` with a warehouse directory and Spark's Hive support (embedded Derby
metastore, Parquet tables), all from PySpark's own jars. Workers run this same
Python, so a virtualenv works without setting ``PYSPARK_PYTHON`` by hand, and on a local master
start from ``batch._daemon``, which imports a pip-installed PySpark from its files, not its zip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from collections.abc import Mapping

from pyspark.sql import SparkSession

from .errors import ConfigError

__all__ = ["local_session", "settings"]

#: The module Spark runs to start its Python workers (``spark.python.daemon.module``): see ``batch._daemon``.
DAEMON_MODULE = "batch._daemon"


def _daemon_start() -> tuple[str, dict[str, str]]:
    """The directory and environment a local session's Python daemon starts in: the JVM's, which are this
    process's when it is not running yet, and where it is (a session stopped and made again, perhaps after a
    change of directory) those it started with."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return os.getcwd(), dict(os.environ)
    system = gateway.jvm.java.lang.System
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    path = system.getenv("PYTHONPATH")
    if path:
        env["PYTHONPATH"] = path
    return system.getProperty("user.dir"), env


def importable(python: str, module: str) -> bool:
    """Whether ``python``, started as Spark starts a local session's daemon (its JVM's directory and
    ``PYTHONPATH``), finds ``module``. A session whose workers could not import it keeps PySpark's own
    daemon, so that its other Python UDFs still run."""
    check = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
    try:
        cwd, env = _daemon_start()
        return subprocess.run([python, "-c", check], cwd=cwd, env=env, capture_output=True,
                              timeout=60).returncode == 0
    except Exception:  # noqa: BLE001 - no answer (no such Python, a JVM that stopped answering) is a no
        return False


def settings(master: str, warehouse: Path, extra: Mapping[str, str], python: str) -> dict[str, str]:
    """``extra`` with what ``local_session`` adds to it: Derby's home in ``warehouse``, before any driver Java
    options ``extra`` gives; and, for a ``local`` or ``local[N]`` master whose workers' ``python`` finds it,
    ``batch._daemon`` as the daemon module, unless ``extra`` names one or turns the daemon off. Executors
    of other masters (``local-cluster`` too) start in directories of their own, and a cluster's nodes decide
    what their Python can import (a ``--py-files`` zip is added only after a worker starts), so it is left
    to ``--conf`` there (``docs/cluster.md``)."""
    out = dict(extra)
    out["spark.driver.extraJavaOptions"] = " ".join(
        filter(None, (f"-Dderby.system.home={warehouse}", extra.get("spark.driver.extraJavaOptions"))))
    if ((master == "local" or master.startswith("local[")) and "spark.python.daemon.module" not in extra
            and str(extra.get("spark.python.use.daemon", "true")).strip().lower() != "false"
            and importable(python, DAEMON_MODULE)):
        out["spark.python.daemon.module"] = DAEMON_MODULE
    return out


def local_session(master: str = "local[*]", warehouse: str | Path = "spark-warehouse", *,
                  app_name: str = "ai-query", hive: bool = True, extra: dict[str, str] | None = None) -> SparkSession:
    """A classic Spark session for a laptop: ``master`` (``local[*]``), a Hive warehouse of Parquet tables in
    ``warehouse`` (made if missing), Spark's UI off, ``extra`` Spark settings on top (see ``settings``).
    Workers run this Python and, for a ``local`` master, start from ``batch._daemon`` where it can import it.

    Raises ConfigError in a Spark Connect client (``sc://`` master, ``$SPARK_REMOTE``): use
    ``SparkSession.builder.remote(...)`` there.
    """
    if master.startswith("sc://") or "SPARK_CONNECT_MODE_ENABLED" in os.environ or "SPARK_REMOTE" in os.environ:
        # PySpark would hand back a Connect session (or fail on its missing SparkContext) instead.
        raise ConfigError("local_session starts a classic Spark with its own JVM, but this process is a Spark "
                          "Connect client: use SparkSession.builder.remote('sc://host:port').getOrCreate() "
                          "(one Python process holds either a classic or a Connect session)")
    warehouse = Path(warehouse).resolve()
    warehouse.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.sql.warehouse.dir", str(warehouse)))
    if hive:
        metastore = warehouse / "metastore_db"
        builder = (builder.enableHiveSupport()
                   .config("spark.hadoop.javax.jdo.option.ConnectionURL",
                           f"jdbc:derby:;databaseName={metastore};create=true"))
    extra = extra or {}
    python = extra.get("spark.pyspark.python") or os.environ["PYSPARK_PYTHON"]
    for key, value in settings(master, warehouse, extra, python).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
