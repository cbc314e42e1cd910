"""Where a request finds its service: the ASGI lifespan state, copied into every request scope."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .types import Scope

if TYPE_CHECKING:
    from .service import Service

__all__ = ["STATE_KEY", "require_service", "service_of"]

STATE_KEY = "micro_service"


def service_of(scope: Scope) -> Service | None:
    """The service serving this request, or ``None`` when the app runs without one."""
    state = scope.get("state")
    if state is None:
        return None
    service: Service | None = state.get(STATE_KEY)
    return service


def require_service(service: Service | None) -> Service:
    """``service``, or a clear error saying how to run the app with one."""
    if service is None:
        raise RuntimeError(
            "no running Service for this dependency; serve the app with "
            "FastAPI(lifespan=service.lifespan) or app.add_middleware(MicroMiddleware, service=...)"
        )
    return service
