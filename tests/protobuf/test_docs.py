"""The examples in docs/protobuf.md run, in order, and print what the page shows."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

PAGE = Path(__file__).parents[2] / "docs" / "protobuf.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.DOTALL)


def test_the_examples_run_and_print_the_proto_shown() -> None:
    namespace: dict[str, object] = {"__name__": "docs_protobuf"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        for index, source in enumerate(blocks("python")):
            code = compile(source, f"{PAGE.name}:python[{index}]", "exec", dont_inherit=True)
            exec(code, namespace)
    assert output.getvalue().rstrip("\n") == blocks("proto")[0].rstrip("\n")
