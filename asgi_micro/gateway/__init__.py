"""Gateways: what puts the services of a registry in front of callers that are not services.

``asgi_micro.gateway.mcp`` turns every RPC endpoint into a tool for AI agents (the Model
Context Protocol; the ``mcp`` extra), over ``asgi_micro.gateway.catalogue``, the registry's
endpoints kept current by watching it. ``asgi-micro mcp`` runs it. ``asgi_micro.gateway.api``
is the HTTP API gateway (Go Micro's ``micro api``); ``asgi-micro api`` runs it, with its
routes and rate limits in ``routes``, its combined OpenAPI document in ``openapi`` and its
WebSocket relay in ``websocket``. ``acting`` passes a caller's ``Authorization`` on, for the
gateways and the dashboard.
"""

from __future__ import annotations

__all__: list[str] = []
