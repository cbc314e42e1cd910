"""``asgi-micro asyncapi APP``: the AsyncAPI 3.0 document of an app's events, from its code.

asgi-micro asyncapi example_apps/greeter/app.py > asyncapi.json

The same document a running service serves at ``/_micro/asyncapi.json``; its ``servers`` come
from the broker the service would use here (``MICRO_BROKER``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..asyncapi import asyncapi as asyncapi_document
from ..service import Service
from .apps import import_app, target_service
from .common import print_json

__all__ = ["asyncapi"]


def asyncapi(
    target: Annotated[
        str,
        typer.Argument(
            metavar="APP", help="module:attr (an app or a Service), or a file path (attr 'app')."
        ),
    ],
) -> None:
    """Print the AsyncAPI document of APP's service: the topics it publishes and subscribes to."""
    found = import_app(target)
    service = found
    if not isinstance(found, Service):
        service = target_service(target, found)
    if service is None:
        raise typer.BadParameter(
            "cannot tell which Service serves this app; name it as module:service",
            param_hint="APP",
        )
    print_json(asyncapi_document(service))
