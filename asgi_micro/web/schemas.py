"""A request to start from, made from an endpoint's JSON schema: what the call form shows.

Every property gets a value (its ``default``, ``const``, first ``examples`` or ``enum`` entry,
else an empty value of its type), so that the user sees every field and edits values rather
than recalls names. The result need not validate (``""`` for a required name does not): the
service says what is wrong, which is what a user trying an endpoint wants to see.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["example_of"]

_EMPTY: Final[dict[str, Any]] = {
    "string": "",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "null": None,
}
_DEPTH: Final = 6
"""How deep nested models are filled in; a recursive model stops there."""


def example_of(schema: dict[str, Any] | None) -> Any:
    """A value shaped as ``schema`` says, ``{}`` for an endpoint without a request schema."""
    if not schema:
        return {}
    return _example(schema, schema.get("$defs") or {}, 0)


def _example(schema: Any, defs: dict[str, Any], depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _DEPTH:
        return None
    for key in ("default", "const"):
        if key in schema:
            return schema[key]
    for key in ("examples", "enum"):
        if isinstance(schema.get(key), list) and schema[key]:
            return schema[key][0]
    if "$ref" in schema:
        return _example(defs.get(str(schema["$ref"]).rpartition("/")[2]), defs, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        options = [o for o in schema.get(key) or () if isinstance(o, dict)]
        chosen = [o for o in options if o.get("type") != "null"] or options
        if chosen:
            return _example(chosen[0], defs, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        return {
            name: _example(spec, defs, depth + 1)
            for name, spec in (schema.get("properties") or {}).items()
        }
    if kind in ("integer", "number") and isinstance(schema.get("minimum"), int | float):
        return schema["minimum"]
    if kind == "array":
        return []
    return _EMPTY.get(str(kind))
