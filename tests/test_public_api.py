"""The public boundary: what ``batch`` exports, what it imports, and how a driver tells failures apart."""

from __future__ import annotations

import ast
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import batch
import batch.errors
from batch.config import registry
from batch.errors import BatchError, EndpointError, HTTPRequestError, RateLimitError, failure_class

ROOT = Path(__file__).resolve().parent.parent
# Modules a user imports by name; every other module under batch/ is internal and says so with a leading "_".
PUBLIC_MODULES = {"batch", "batch.config", "batch.errors", "batch.serve"}


def modules(package: str) -> list[str]:
    found = [package]
    for info in pkgutil.walk_packages([str(ROOT / package.replace(".", "/"))], package + "."):
        found.append(info.name)
    return found


def test_every_exported_name_resolves_and_says_what_it_is():
    assert len(batch.__all__) == len(set(batch.__all__))
    for name in batch.__all__:
        value = getattr(batch, name)
        if isinstance(value, type):  # a class says what it is itself, not through its parent's words
            assert value.__dict__.get("__doc__"), f"batch.{name} has no docstring"
        elif callable(value):
            assert inspect.getdoc(value), f"batch.{name} has no docstring"
    assert set(batch.__all__) <= set(dir(batch))
    with pytest.raises(AttributeError, match="no attribute 'engine'"):
        batch.engine  # noqa: B018 - the lookup itself is what is tested


@pytest.mark.parametrize("module", ["batch.config", "batch.errors", "batch.serve"])
def test_the_public_modules_say_what_each_name_does(module):
    """Every name in a public module's ``__all__``, and every public method of its classes, has a docstring."""
    namespace = __import__(module, fromlist=["__all__"])
    missing = []
    for name in namespace.__all__:
        value = getattr(namespace, name)
        if isinstance(value, type):
            missing += [] if value.__dict__.get("__doc__") else [name]
            missing += [f"{name}.{attr}" for attr, member in vars(value).items()
                        if callable(member) and not attr.startswith("_") and not inspect.getdoc(member)]
        elif callable(value) and not inspect.getdoc(value):
            missing.append(name)
    assert missing == []


def test_every_error_class_is_exported():
    classes = {name for name, value in vars(batch.errors).items()
               if isinstance(value, type) and issubclass(value, BatchError)}
    assert classes <= set(batch.__all__) and classes <= set(batch.errors.__all__)


def test_internal_modules_are_marked():
    for name in modules("batch"):
        if name in PUBLIC_MODULES or name.startswith("batch.serve."):
            continue
        parts = name.split(".")[1:]
        assert any(part.startswith("_") for part in parts), f"{name} is neither public nor marked internal"


def _imports(path: Path, module: str) -> set[str]:
    """First-party modules a module imports, at the top or inside functions (not under TYPE_CHECKING)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    pending: list[ast.AST] = [ast.parse(path.read_text())]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            # `from pkg import name`: the module pkg.name where it is one, else pkg itself
            found.update(f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target
                         for alias in node.names)
        pending.extend(ast.iter_child_nodes(node))
    return {name for name in found if name.split(".")[0] in ("batch", "jobs")}


def _is_module(name: str) -> bool:
    path = ROOT / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for package in ("batch", "jobs"):
        for name in modules(package):
            path = ROOT / name.replace(".", "/")
            path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
            graph[name] = _imports(path, name)
    for name in graph:
        # a module's own packages are always imported before it, so an import of one of them is no cycle
        graph[name] = {target for target in graph[name]
                       if target in graph and target != name and not name.startswith(target + ".")}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target] if target in trail else [node, target])
            elif target not in state:
                visit(target, trail + [target])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


SPARK_AND_PANDAS = ("pandas", "pyarrow", "pyspark", "py4j")
# The spec validator parses returnType DDL into pyspark.sql.types, so it loads PySpark's Python
# modules (never a JVM); pandas and Arrow stay out.
PANDAS = ("pandas", "pyarrow")


@pytest.mark.parametrize("statement,absent", [
    ("import batch, batch.errors, batch.config", SPARK_AND_PANDAS),
    ("import batch.serve, batch.serve.app", SPARK_AND_PANDAS),
    ("import jobs.spec, jobs.cli", PANDAS),
])
def test_light_entry_points_load_only_what_they_need(statement, absent):
    code = (f"{statement}\nimport sys\n"
            f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({absent!r})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                         timeout=60)
    assert out.stdout.strip() == "[]", out.stdout


def test_failure_class_reads_the_class_back():
    assert failure_class(RateLimitError("e", "slow down", status=429)) is RateLimitError
    wrapped = RuntimeError("Traceback ...\nbatch.errors.ServerError: [AI_FUNCTION_HTTP_REQUEST_ERROR] endpoint")
    assert failure_class(wrapped).__name__ == "ServerError"
    try:
        try:
            raise wrapped
        except RuntimeError as inner:
            raise ValueError("outer") from inner
    except ValueError as outer:
        assert failure_class(outer).__name__ == "ServerError"
    assert failure_class(RuntimeError("batch.errors.NotAClassError: x")) is None
    assert failure_class(KeyError("nothing")) is None


@pytest.mark.spark
def test_a_failed_ai_query_is_told_apart_by_class(spark, srv):
    """A 4xx answer fails the query with failOnError => true: the driver gets PySpark's exception, and
    failure_class names the toolkit's class inside it."""
    registry.add("public-api-chat", api="openai", base_url=srv.url + "/v1", task="chat", max_retries=1,
                 initial_backoff=0.01, max_backoff=0.05)
    df = spark.createDataFrame([("[[fault:400]] hello",)], "p string")
    with pytest.raises(Exception) as caught:
        df.select(batch.ai_query("public-api-chat", "p").alias("a")).collect()
    assert not isinstance(caught.value, BatchError)  # it crossed the Python worker boundary
    found = failure_class(caught.value)
    assert found is HTTPRequestError and issubclass(found, EndpointError)


def _layout() -> set[str]:
    """The paths the README's Layout section names, from its indentation (two spaces a level)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    found, stack = set(), []
    for line in block.strip("\n").splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack = stack[:depth] + [name]
        found.add("".join(stack))
    return found


def test_readme_layout_matches_the_tree():
    tree = {str(path.relative_to(ROOT)) for package in ("batch", "jobs") for path in (ROOT / package).rglob("*")
            if path.is_file() and path.suffix in (".py", ".typed") and "__pycache__" not in path.parts
            and path.name not in ("__init__.py", "__main__.py")}
    tree |= {str(path.relative_to(ROOT)) + "/" for package in ("batch", "jobs")
             for path in [ROOT / package, *(ROOT / package).rglob("*")]
             if path.is_dir() and (path / "__init__.py").exists()}
    named = {path for path in _layout() if path.startswith(("batch/", "jobs/"))}
    assert sorted(tree - named) == [], "in the tree but not in the README's layout"
    assert sorted(named - tree) == [], "in the README's layout but not in the tree"


def test_the_per_row_record_names_fields_of_the_row_outcome():
    """ROW_RECORD (the UDF's metadata struct, the results table's status, the usage sums) reads RowOutcome's
    fields by name: every name must be one, with a Spark type that holds its Python type."""
    import dataclasses
    import typing

    from batch._engine import ROW_RECORD, RowOutcome
    from batch._udf import METADATA_FIELDS
    from jobs.tables import STATUS_FIELDS

    hints = typing.get_type_hints(RowOutcome)
    holds = {"int": (int,), "bigint": (int,), "double": (float,)}
    for name, sql_type in ROW_RECORD.items():
        assert name in {f.name for f in dataclasses.fields(RowOutcome)}, name
        assert any(t in holds[sql_type] for t in typing.get_args(hints[name]) or (hints[name],)), (name, sql_type)
    assert [f.name for f in METADATA_FIELDS] == [*ROW_RECORD, "error_kind"]
    assert [name for name in STATUS_FIELDS if name in ROW_RECORD] == list(ROW_RECORD)
