"""Calls made on behalf of someone else: a gateway or the dashboard passes its caller's
``Authorization`` on to the service it calls, so that the service decides by the caller's
account, not the gateway's.

    client = Client(registry=..., wrappers=[send_authorization])
    with acting_for(request.headers.get("authorization")):
        await client.call("greeter", "Greeter.Hello", {...})

The value is held in a context variable, so concurrent requests each send their own.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from ..client import ClientCall, ClientNext

__all__ = ["acting_for", "send_authorization"]

_authorization: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "asgi_micro_acting_for", default=None
)


async def send_authorization(call: ClientCall, next: ClientNext) -> Any:
    """The client wrapper that sends the ``Authorization`` of ``acting_for``, if any."""
    authorization = _authorization.get()
    if authorization is not None:
        call.context.authorization = authorization
    return await next(call)


@contextlib.contextmanager
def acting_for(authorization: str | None) -> Iterator[None]:
    """Within the block, calls through a client with ``send_authorization`` carry
    ``authorization`` (``None``: none)."""
    token = _authorization.set(authorization)
    try:
        yield
    finally:
        _authorization.reset(token)
