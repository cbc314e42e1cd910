"""Fixtures for the protobuf tests: unique package names, and protoc run inside the test.

Generated ``_pb2`` modules register their files in protobuf's default pool, where a file name
or message name can exist once per process; every test therefore gets its own package.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from types import ModuleType

import pytest
from grpc_tools import protoc

Compile = Callable[[dict[str, str], str], ModuleType]


@pytest.fixture
def package() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def compile_proto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Compile:
    """Compile ``.proto`` files (name -> text) with grpcio-tools' protoc and import one module
    of the result, e.g. ``"greeter_pb2"`` or ``"greeter_pb2_grpc"``."""
    source = tmp_path / "proto"
    output = tmp_path / "generated"
    output.mkdir()
    monkeypatch.syspath_prepend(str(output))
    include = resources.files("grpc_tools") / "_proto"

    def compile_(files: dict[str, str], module: str) -> ModuleType:
        for name, text in files.items():
            path = source / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={source}",
                f"--proto_path={include}",
                f"--python_out={output}",
                f"--grpc_python_out={output}",
                *files,
            ]
        )
        assert code == 0, "protoc failed; its errors are in the captured stderr"
        importlib.invalidate_caches()
        return importlib.import_module(module)

    return compile_
