"""``asgi-micro web``: a dashboard of the registry in the browser.

The services with their versions and nodes (each node's health and stats, asked of the node),
their endpoints with request and response schemas and a form to call each, and the topics
they publish and subscribe to (from their AsyncAPI documents); pages update live as nodes come
and go. Server-rendered HTML with one small script and no build step (``asgi_micro.web.app``).
"""

from __future__ import annotations

from .app import Dashboard

__all__ = ["Dashboard"]
