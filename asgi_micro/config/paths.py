"""Dotted paths into a config (``db.pool``): merging sources leaf by leaf with provenance,
flattening a validated model into leaves, and masking secrets.

A leaf is a value that is neither a model nor a mapping (a list is one leaf). Paths name
fields, not aliases.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, SecretBytes, SecretStr

__all__ = [
    "MASK",
    "check_path",
    "flatten",
    "is_secret",
    "lookup",
    "mask",
    "merge",
    "nest",
    "value_at",
]

MASK: Final = "**********"
"""What a secret shows as, as pydantic shows a ``SecretStr``."""

_SECRET_NAME = re.compile(
    r"(?:^|_)(?:password|passwd|secret|token|credentials?)(?:$|_)|api_?key|private_?key",
    re.IGNORECASE,
)


def merge(
    into: dict[str, Any], data: Mapping[str, Any], source: str, provenance: dict[str, str]
) -> None:
    """Merge ``data`` into ``into``, mappings key by key and anything else replacing what was
    there; each leaf written is recorded in ``provenance`` as coming from ``source``."""
    _merge(into, data, source, provenance, "")


def _merge(
    into: dict[str, Any], data: Mapping[str, Any], source: str, provenance: dict[str, str], at: str
) -> None:
    for key, value in data.items():
        path = f"{at}{key}"
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, source, provenance, f"{path}.")
            continue
        for known in [p for p in provenance if p == path or p.startswith(f"{path}.")]:
            del provenance[known]
        into[key] = _plain(value)
        for leaf in _leaves(value, path):
            provenance[leaf] = source


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _leaves(value: Any, path: str) -> list[str]:
    if isinstance(value, Mapping) and value:
        return [leaf for key, item in value.items() for leaf in _leaves(item, f"{path}.{key}")]
    return [path]


def nest(path: str, value: Any) -> dict[str, Any]:
    """``nest("db.pool", 5) == {"db": {"pool": 5}}``."""
    *parents, last = _split(path)
    data: dict[str, Any] = {last: value}
    for name in reversed(parents):
        data = {name: data}
    return data


def flatten(value: Any, path: str = "") -> dict[str, Any]:
    """The leaves of a validated model (or mapping) by dotted path, in field order."""
    if isinstance(value, BaseModel):
        items: Mapping[str, Any] = {name: getattr(value, name) for name in type(value).model_fields}
    elif isinstance(value, Mapping):
        items = value
    else:
        return {path: value}
    if not items and path:
        return {path: value}
    found: dict[str, Any] = {}
    for name, item in items.items():
        found.update(flatten(item, f"{path}.{name}" if path else str(name)))
    return found


def value_at(value: Any, path: str) -> Any:
    """The value at ``path`` (``""`` is ``value`` itself); ``LookupError`` if there is none."""
    for name in _split(path) if path else []:
        if isinstance(value, BaseModel) and name in type(value).model_fields:
            value = getattr(value, name)
        elif isinstance(value, Mapping) and name in value:
            value = value[name]
        else:
            raise LookupError(f"no config value at {path!r}")
    return value


def lookup(provenance: Mapping[str, str], path: str) -> str | None:
    """The source of the leaf ``path``: its own, or that of the nearest parent set whole."""
    while True:
        if path in provenance:
            return provenance[path]
        path, dot, _ = path.rpartition(".")
        if not dot:
            return None


def check_path(model: type[BaseModel], path: str) -> None:
    """Raise ``ValueError`` unless ``path`` can name a value of ``model``: each part must be a
    field while the type is a model; below a mapping or ``Any`` anything goes."""
    current: Any = model
    for name in _split(path) if path else []:
        if current is None:
            return
        fields = current.model_fields
        if name not in fields:
            raise ValueError(f"{model.__name__} has no setting {path!r}")
        current = _model_in(fields[name].annotation)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class an annotation holds (``DB``, ``DB | None``), else ``None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        models = [arg for arg in typing.get_args(annotation) if _model_in(arg) is not None]
        return _model_in(models[0]) if len(models) == 1 else None
    return None


def is_secret(path: str, value: Any) -> bool:
    """A ``SecretStr``/``SecretBytes``, or a value under a name such as ``password``,
    ``secret``, ``token`` or ``api_key``."""
    if isinstance(value, SecretStr | SecretBytes):
        return True
    return any(_SECRET_NAME.search(name) for name in path.split("."))


def mask(path: str, value: Any) -> Any:
    """``value``, or ``MASK`` for a secret."""
    return MASK if is_secret(path, value) else value


def _split(path: str) -> list[str]:
    names = path.split(".")
    if not all(names):
        raise ValueError(f"a config path is dotted names such as 'db.pool', got {path!r}")
    return names
