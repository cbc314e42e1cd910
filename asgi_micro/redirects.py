"""Redirects that stay on the server the client reached.

Starlette's trailing-slash redirect (``POST /greeter/hello/`` -> ``/greeter/hello``) and
``request.url_for`` build absolute URLs from the ``Host`` header, which the client chooses:
``Host: evil.example`` would have the server send it to ``http://evil.example/greeter/hello``.
``MicroMiddleware`` sends a redirect to the server's own authority (as the request's headers
name it) relative instead, ``Location: /greeter/hello``, which means the same to an honest
client and leaves a forged ``Host`` nowhere to point.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import URL

from .types import Message, Scope

__all__ = ["relative_redirect"]


def relative_redirect(start: Message, scope: Scope) -> Message:
    """``start`` (an ``http.response.start``) with a ``Location`` back to the authority the
    request named made relative; any other response as it is."""
    headers = start.get("headers", ())
    for index, (name, value) in enumerate(headers):
        if name != b"location":
            continue
        location = urlsplit(value.decode("latin-1"))
        if location.scheme not in ("http", "https") or not location.netloc:
            return start  # relative already, or not a web URL
        if location.netloc.lower() != URL(scope=scope).netloc.lower():
            return start  # elsewhere, on purpose
        path = location.path or "/"
        if path[1:2] in ("/", "\\"):
            # "//host/..." (and "/\host", for browsers) would name another server.
            path = "/" + ("%2F" if path[1] == "/" else "%5C") + path[2:]
        relative = urlunsplit(("", "", path, location.query, location.fragment))
        rewritten = list(headers)
        rewritten[index] = (b"location", relative.encode("latin-1"))
        return {**start, "headers": rewritten}
    return start
