"""PySpark's Python daemon, importing PySpark from its installed files: ``spark.python.daemon.module``.

Spark starts one daemon per executor (``python -m pyspark.daemon``), which forks the Python workers
that run UDFs. It puts ``$SPARK_HOME/python/lib/pyspark.zip`` and py4j's source zip first on their
path. Where PySpark was installed by pip, ``SPARK_HOME`` is the installed package itself, so those zips
are a second copy of files that are also on the path unzipped, with their bytecode cached. Python never
caches bytecode for a zip: imported from it, every daemon and every worker compiles PySpark's modules
from source again, which doubled a new application's start of a pandas UDF (``docs/cluster.md``).

Run as ``python -m batch._daemon``, this drops from ``sys.path`` each zip that is the installed
package's own copy (same place, same release), leaves every other entry as it was (a Spark
distribution's zips, ``--py-files``), and then runs PySpark's daemon as if Spark had started it.
It imports nothing but the standard library before the fork, as PySpark's daemon requires (no
thread may run when it forks). ``batch._session.local_session`` sets it for a local master whose Python
can import it.
"""

from __future__ import annotations

import os
import runpy
import sys

__all__ = ["installed_copy", "main"]

DAEMON = "pyspark.daemon"


def installed_copy(entry: str, path: list[str]) -> bool:
    """Whether ``entry`` of ``path`` is a zip pip installed inside PySpark's own package, whose unzipped
    twin is importable from another entry of ``path``: ``<site>/pyspark/python/lib/pyspark.zip`` with
    ``<site>`` on the path, or ``<site>/pyspark/python/lib/py4j-<version>-src.zip`` with ``<site>`` on the
    path holding that py4j release (``py4j-<version>.dist-info``)."""
    lib, name = os.path.split(entry)
    package = os.path.dirname(os.path.dirname(lib))  # <site>/pyspark
    site = os.path.dirname(package)
    if (os.path.basename(package) != "pyspark" or os.path.join(package, "python", "lib") != lib
            or not os.path.isfile(os.path.join(package, "__init__.py"))
            or os.path.realpath(site) not in {os.path.realpath(other) for other in path if other != entry}):
        return False
    if name == "pyspark.zip":
        return True
    if name.startswith("py4j-") and name.endswith("-src.zip"):
        version = name[len("py4j-"):-len("-src.zip")]
        return os.path.isdir(os.path.join(site, f"py4j-{version}.dist-info"))
    return False


def main() -> None:
    path = list(sys.path)
    sys.path[:] = [entry for entry in path if not installed_copy(entry, path)]
    runpy.run_module(DAEMON, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
