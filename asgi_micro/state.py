"""Where a request finds its service: the ASGI lifespan state, copied into every request scope."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .types import Scope

if TYPE_CHECKING:
    from .pipeline import Host

__all__ = ["STATE_KEY", "expose", "service_of"]

STATE_KEY = "micro_service"


def service_of(scope: Scope) -> Host | None:
    """The service serving this request, or ``None`` when the app runs without one."""
    state = scope.get("state")
    if state is None:
        return None
    host: Host | None = state.get(STATE_KEY)
    return host


def expose(scope: Scope, host: Host) -> None:
    """Make ``host`` the service of ``scope`` (and of the requests it begins, for a lifespan
    scope), unless one is there already."""
    state = scope.get("state")
    if state is None:
        scope["state"] = {STATE_KEY: host}
    elif STATE_KEY not in state:
        state[STATE_KEY] = host
