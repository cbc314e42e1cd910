"""Conventions shared by servers and clients: how endpoints are named and reached.

``Greeter.GetItem`` is the method ``GetItem`` of the router ``Greeter``: a handler named
``get_item`` in ``MicroRouter("Greeter")``, served by default at ``POST /greeter/get_item``.
A client that finds no path for an endpoint in the registry goes by the same convention.
"""

from __future__ import annotations

import re

__all__ = ["IDEMPOTENT_METHODS", "SERVICE_NAME", "default_path", "method_name"]

SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A service's name: letters, digits, '.', '_' and '-', starting with a letter or digit."""

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
"""HTTP methods whose requests may be sent twice with the effect of once (RFC 9110)."""


def method_name(function_name: str) -> str:
    """The endpoint method of a handler: ``get_item`` -> ``GetItem``."""
    return "".join(part[:1].upper() + part[1:] for part in function_name.split("_") if part)


def default_path(endpoint: str) -> str:
    """The HTTP path of ``<Router>.<Method>`` by convention: ``Greeter.GetItem`` ->
    ``/greeter/get_item``."""
    router, _, method = endpoint.rpartition(".")
    if not router or not method:
        raise ValueError(f"an endpoint is named '<Router>.<Method>', got {endpoint!r}")
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in method).lstrip("_")
    return f"/{router.lower()}/{snake}"
