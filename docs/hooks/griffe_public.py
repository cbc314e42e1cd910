"""A griffe extension for the API reference: ``__slots__`` and ``__repr__``/``__str__`` are
how a class is built and printed, not what a user calls, so they are left out of the pages
(the ``public`` filter would list them, being neither private nor outside ``__all__``)."""

from __future__ import annotations

import ast
from typing import Any

import griffe

HIDDEN = frozenset({"__slots__", "__repr__", "__str__"})


class HideInternals(griffe.Extension):
    """Marks the names in ``HIDDEN`` as not public, wherever they are defined."""

    def on_attribute_instance(
        self,
        *,
        node: ast.AST | griffe.ObjectNode,
        attr: griffe.Attribute,
        agent: griffe.Visitor | griffe.Inspector,
        **kwargs: Any,
    ) -> None:
        """An attribute was found: hide ``__slots__``."""
        if attr.name in HIDDEN:
            attr.public = False

    def on_function_instance(
        self,
        *,
        node: ast.AST | griffe.ObjectNode,
        func: griffe.Function,
        agent: griffe.Visitor | griffe.Inspector,
        **kwargs: Any,
    ) -> None:
        """A function was found: hide ``__repr__`` and ``__str__``."""
        if func.name in HIDDEN:
            func.public = False
