"""A class-data archive of Spark's driver classes, built once per machine, that the suite's JVMs start from.

Most of the suite's time is Spark drivers starting: a job process, a Connect server, a cluster's client.
Each loads and verifies thousands of classes from Spark's jars. A dynamic CDS archive (JDK 13 or later:
``-XX:ArchiveClassesAtExit``) holds those classes already parsed and verified; a driver started with
``-XX:SharedArchiveFile`` maps it instead. A small Hive session, one table written and read, took 5.9 to
6.7 s with it and 10.3 to 10.6 s without (two runs each, alternating, 2-core machine).

``python tests/jvm_archive.py`` (``make test`` runs it) dumps the archive from one driver that runs a
small job through the job runner against ``batch.serve``, into the cache outside the checkout
(``$SPARK_AI_QUERY_CACHE``, default ``~/.cache/spark-ai-query``), named for the JVM, PySpark and the
jars it was made with. ``options()`` gives what ``conftest.py`` adds to every JVM of the suite when that
archive exists. A JVM whose build or class path does not match it (PySpark's own launcher, a
cluster's daemons) starts as it would without: an unusable archive is never an error, and its
warnings are turned off. Only the suite uses it; benchmarks measure what a user gets.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.llama import cache_dir  # noqa: E402  (the project's one cache outside the checkout)
from support import QUICK_JVM  # noqa: E402

__all__ = ["archive", "options", "build"]


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    return str(Path(home) / "bin" / "java") if home else "java"


def archive() -> Path | None:
    """Where the archive for this JVM and this PySpark lives (None: no JVM here)."""
    try:
        version = subprocess.run([_java(), "-Xshare:auto", "-version"], capture_output=True, text=True,
                                 timeout=60, env={k: v for k, v in os.environ.items() if k != "JDK_JAVA_OPTIONS"})
    except (OSError, subprocess.SubprocessError):
        return None
    from pyspark import __version__ as pyspark_version
    from pyspark.find_spark_home import _find_spark_home
    home = _find_spark_home()
    # The JVM refuses an archive whose jars changed since (a reinstalled virtualenv): their sizes and times count.
    jars = sorted((jar.name, jar.stat().st_size, jar.stat().st_mtime_ns) for jar in Path(home, "jars").glob("*.jar"))
    place = hashlib.sha256(home.encode()).hexdigest()[:8]
    key = hashlib.sha256(json.dumps([version.stderr, pyspark_version, jars]).encode()).hexdigest()[:8]
    return cache_dir() / "jvm" / f"spark-{pyspark_version}-{place}-{key}.jsa"


def options(path: Path | None) -> str:
    """JVM options that start from ``path`` where it exists, else nothing (also for a path with a space:
    ``JDK_JAVA_OPTIONS`` is split at spaces)."""
    if path is None or not path.is_file() or any(c.isspace() for c in str(path)):
        return ""
    return f" -XX:SharedArchiveFile={path} -Xshare:auto -Xlog:cds=off,cds+dynamic=off"


_WORKLOAD = r'''
import json, sys, tempfile
from pathlib import Path
from batch.serve import ServerProcess
from batch._session import local_session
from batch.config import registry
from jobs.runner import run_job
from jobs.spec import parse_spec
work = Path(tempfile.mkdtemp(prefix="jvm-archive-"))
spark = local_session("local[2]", work / "warehouse", app_name="jvm-archive",
                      extra={"spark.driver.extraJavaOptions": "-XX:ArchiveClassesAtExit=" + sys.argv[1]})
with ServerProcess() as server:
    registry.add("archive-chat", api="openai", base_url=server.url + "/v1", task="chat")
    registry.add("archive-embed", api="openai", base_url=server.url + "/v1", task="embeddings", batch_size=8)
    source = work / "rows.json"
    source.write_text("".join(json.dumps({"id": i, "body": f"row {i}"}) + "\n" for i in range(40)))
    spec = {"job": "archive", "input": {"path": str(source), "format": "json", "key": "id"},
            "outputs": {"answer": {"endpoint": "archive-chat", "prompt": "Reply to: {body}"},
                        "vec": {"endpoint": "archive-embed", "request": "body"}},
            "results": {"table": "archive.answers"}, "usage": {"table": "archive.usage"}, "commit_every": 20}
    for _ in range(2):  # the second run reads what the first wrote
        assert run_job(spark, parse_spec(spec)).ok
spark.stop()
'''


def build() -> int:
    """Dump the archive where ``archive()`` says, unless it is there: 0 when it is there after, else 1."""
    path = archive()
    if path is None:
        print("jvm archive: no java here, nothing to build")
        return 1
    if path.is_file():
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:
        dumped = Path(scratch) / path.name
        env = dict(os.environ, PYTHONPATH=str(ROOT), JDK_JAVA_OPTIONS=QUICK_JVM)  # as the suite's JVMs run
        # The driver JVM writes the archive as it exits, after this Python stops it; it holds the captured
        # output open until then, so run() returns once the file is whole.
        done = subprocess.run([sys.executable, "-c", _WORKLOAD, str(dumped)], cwd=scratch, env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0 or not dumped.is_file():
            print(f"jvm archive: not built (exit {done.returncode}); the suite's JVMs start without one\n"
                  + done.stderr[-2000:])
            return 1
        os.replace(dumped, path)
    for stale in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.jsa"):  # this PySpark's, of jars since replaced
        if stale != path:
            stale.unlink(missing_ok=True)
    print(f"jvm archive: {path} ({path.stat().st_size / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(build())
