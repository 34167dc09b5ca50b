"""The README's notebook example runs as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.spark
def test_notebook_example_runs_as_written(spark, monkeypatch, tmp_path):
    text = README.read_text()
    block = re.search(r"<!-- notebook-example.*?-->\s*```python\n(.*?)```", text, re.DOTALL)
    assert block, "the README lost its notebook example"
    monkeypatch.chdir(tmp_path)  # local_session() makes ./spark-warehouse
    exec(compile(block.group(1), "README.md", "exec"), {})
