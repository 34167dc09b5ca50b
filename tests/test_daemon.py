"""``batch._daemon``: Python workers import a pip-installed PySpark from its files, not from the zip Spark adds."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

from batch._daemon import installed_copy
from batch._session import DAEMON_MODULE, importable, settings


def _pip_layout(site: Path, py4j: str = "0.10.9.9") -> tuple[str, str]:
    lib = site / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    (site / f"py4j-{py4j}.dist-info").mkdir()
    return str(lib / "pyspark.zip"), str(lib / "py4j-0.10.9.9-src.zip")


def test_the_zips_of_a_pip_installed_pyspark_are_its_own_copies(tmp_path):
    site = tmp_path / "site-packages"
    pyspark_zip, py4j_zip = _pip_layout(site)
    path = [pyspark_zip, py4j_zip, "/usr/lib/python311.zip", str(site)]
    assert [installed_copy(entry, path) for entry in path] == [True, True, False, False]


def test_other_zips_stay_on_the_path(tmp_path):
    site = tmp_path / "site-packages"
    pyspark_zip, py4j_zip = _pip_layout(site, py4j="0.10.9.7")  # another py4j release beside the zip
    assert installed_copy(pyspark_zip, [pyspark_zip, py4j_zip]) is False  # its unzipped twin is not on the path
    assert installed_copy(py4j_zip, [pyspark_zip, py4j_zip, str(site)]) is False
    distribution = tmp_path / "spark-4.0.0-bin-hadoop3" / "python" / "lib"  # SPARK_HOME of a Spark download
    distribution.mkdir(parents=True)
    for name in ("pyspark.zip", "py4j-0.10.9.9-src.zip"):
        assert installed_copy(str(distribution / name), [str(distribution / name), str(tmp_path)]) is False
    shipped = tmp_path / "work" / "deps.zip"  # --py-files
    assert installed_copy(str(shipped), [str(shipped), str(site)]) is False


def test_the_daemon_is_set_only_where_the_workers_python_finds_it():
    assert importable(sys.executable, DAEMON_MODULE)
    assert not importable(sys.executable, "batch._no_such_module")
    assert not importable("/nonexistent/python", DAEMON_MODULE)


DAEMON = {"spark.python.daemon.module": DAEMON_MODULE}
DERBY = {"spark.driver.extraJavaOptions": "-Dderby.system.home=/wh"}


@pytest.mark.parametrize("master, extra, python, added", [
    ("local[2]", {}, sys.executable, {**DERBY, **DAEMON}),
    ("local", {}, sys.executable, {**DERBY, **DAEMON}),
    ("local-cluster[2,1,1024]", {}, sys.executable, DERBY),  # executors start in work directories of their own
    ("local[*]", {}, "/nonexistent/python", DERBY),  # its workers could not start the daemon
    ("spark://10.0.0.1:7077", {}, sys.executable, DERBY),  # the nodes decide: --conf there
    ("yarn", {}, sys.executable, DERBY),
    ("local[2]", {"spark.python.daemon.module": "mine"}, sys.executable,
     {**DERBY, "spark.python.daemon.module": "mine"}),
    ("local[2]", {"spark.python.use.daemon": "False"}, sys.executable, {**DERBY, "spark.python.use.daemon": "False"}),
    ("local[2]", {"spark.python.use.daemon": False}, sys.executable, {**DERBY, "spark.python.use.daemon": False}),
    ("local[2]", {"spark.driver.extraJavaOptions": "-Xmx2g", "spark.x": "1"}, sys.executable,
     {"spark.driver.extraJavaOptions": "-Dderby.system.home=/wh -Xmx2g", "spark.x": "1", **DAEMON}),
])
def test_local_session_settings(master, extra, python, added):
    assert settings(master, Path("/wh"), extra, python) == added


@pytest.mark.spark
def test_python_workers_import_pyspark_from_its_files(spark):
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def origin(ids: pd.Series) -> pd.Series:
        import pyspark
        zips = [entry for entry in sys.path if entry.endswith(("pyspark.zip", "-src.zip"))]
        return pd.Series([f"{pyspark.__file__}|{zips}"] * len(ids))

    assert spark.conf.get("spark.python.daemon.module") == DAEMON_MODULE
    found, zips = spark.range(4, numPartitions=2).select(origin("id")).first()[0].split("|")
    import pyspark
    assert found == pyspark.__file__ and ".zip" not in found  # the driver's own copy, bytecode cached
    assert zips == "[]"


@pytest.mark.spark
def test_a_session_made_again_after_a_change_of_directory_checks_where_its_jvm_runs(spark, tmp_path, monkeypatch):
    # The JVM, and the daemon it starts, keep the directory they started in: a module found only in the new
    # working directory would not be found by the workers of a session made again.
    from batch._session import _daemon_start
    jvm_dir = spark.sparkContext._jvm.java.lang.System.getProperty("user.dir")
    (tmp_path / "only_here_mod.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert _daemon_start()[0] == jvm_dir != str(tmp_path)
    assert not importable(sys.executable, "only_here_mod")
    assert importable(sys.executable, DAEMON_MODULE)
