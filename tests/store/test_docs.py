"""The example at the top of docs/store.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "store.md"


def test_the_store_page_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    example = re.search(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert example is not None
    exec(compile(example.group(1), str(DOC), "exec"), {"__name__": "docs_store_example"})
    assert "expected no record, found version 1" in capsys.readouterr().out
