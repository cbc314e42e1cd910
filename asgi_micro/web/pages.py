"""The dashboard's HTML, written with plain strings: every value that comes from the registry
or from a node goes through ``escape`` (``html.escape``, quotes included), whether it lands in
text or in an attribute, since any process on the network can register any name.

A region the page updates live carries ``data-live`` (the URL of its fragment) and
``data-watch`` (the service whose changes concern it, ``*`` for any): ``dashboard.js`` fetches
the fragment again when the registry says that service changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any, Final
from urllib.parse import quote

import orjson

from ..auth.guard import PROOF_KEY
from ..registry import Endpoint
from ..registry import Service as ServiceRecord
from .probes import NodeView, Topic
from .schemas import example_of

__all__ = [
    "index_page",
    "missing_page",
    "nodes_fragment",
    "page",
    "service_page",
    "services_fragment",
    "topics_page",
]

_MIB: Final = 1024 * 1024


def page(title: str, body: str, *, root: str) -> str:
    """A whole page: ``body`` (already HTML) under the navigation."""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · asgi-micro</title>
<link rel="icon" href="{escape(root)}/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="{escape(root)}/static/dashboard.css">
<script src="{escape(root)}/static/dashboard.js" defer></script>
</head>
<body data-root="{escape(root)}">
<header>
<nav><a href="{escape(root)}/">Services</a> <a href="{escape(root)}/topics">Topics</a></nav>
<span id="live-status" data-state="off">not live</span>
</header>
<main>
<h1>{escape(title)}</h1>
{body}
</main>
</body>
</html>
"""


def services_fragment(records: Iterable[ServiceRecord], *, root: str) -> str:
    """The table of services: name, versions and node count, one row per name."""
    by_name: dict[str, list[ServiceRecord]] = {}
    for record in records:
        by_name.setdefault(record.name, []).append(record)
    if not by_name:
        return '<p class="empty">No services in the registry.</p>'
    rows = []
    for name in sorted(by_name):
        versions = sorted({record.version for record in by_name[name]})
        nodes = sum(len(record.nodes) for record in by_name[name])
        rows.append(
            f'<tr data-service="{escape(name)}">'
            f'<td><a href="{_service_url(root, name)}">{escape(name)}</a></td>'
            f"<td>{escape(', '.join(versions))}</td><td>{nodes}</td></tr>"
        )
    return _table(("service", "versions", "nodes"), rows, id="services")


def index_page(records: Iterable[ServiceRecord], *, root: str) -> str:
    region = _live(f"{root}/fragments/services", "*", services_fragment(records, root=root))
    return page("Services", region, root=root)


def missing_page(name: str, *, root: str) -> str:
    body = f'<p class="empty">No service named <code>{escape(name)}</code> in the registry.</p>'
    return page(name, body, root=root)


def nodes_fragment(views: Iterable[NodeView]) -> str:
    """The table of a service's nodes with what each said of its health and load."""
    rows = []
    for view in views:
        metadata = {**view.node.metadata}
        if PROOF_KEY in metadata:  # a bearer proof of the node's identity: not for display
            metadata[PROOF_KEY] = "(proof)"
        rows.append(
            f'<tr data-node="{escape(view.node.id)}">'
            f"<td><code>{escape(view.node.id)}</code></td>"
            f"<td>{escape(view.node.address)}</td><td>{escape(view.version)}</td>"
            f'<td class="health" data-health="{escape(view.health)}">{escape(view.health)}</td>'
            f"<td>{_stats(view)}</td>"
            f"<td>{escape(', '.join(f'{k}={v}' for k, v in sorted(metadata.items())))}</td></tr>"
        )
    if not rows:
        return '<p class="empty">No live nodes.</p>'
    return _table(("node", "address", "version", "health", "stats", "metadata"), rows, id="nodes")


def service_page(
    name: str,
    records: list[ServiceRecord],
    views: list[NodeView],
    endpoints: Iterable[Endpoint],
    topics: Iterable[Topic],
    *,
    root: str,
) -> str:
    versions = ", ".join(sorted({record.version for record in records}))
    body = [
        f'<p>Versions: <span id="versions">{escape(versions)}</span></p>',
        "<h2>Nodes</h2>",
        _live(f"{root}/fragments/nodes/{quote(name, safe='')}", name, nodes_fragment(views)),
        "<h2>Endpoints</h2>",
        _TOKEN_FIELD,
        *(_endpoint(name, endpoint) for endpoint in endpoints),
        "<h2>Topics</h2>",
        _topics(topics, root=root, with_service=False),
    ]
    return page(name, "\n".join(body), root=root)


def topics_page(topics: Iterable[Topic], *, root: str) -> str:
    return page("Topics", _topics(topics, root=root, with_service=True), root=root)


def _endpoint(service: str, endpoint: Endpoint) -> str:
    metadata = endpoint.metadata
    route = f"{metadata.get('method', '')} {metadata.get('path', '')}".strip()
    stream = metadata.get("stream", "")
    parts = [
        f'<section class="endpoint" data-endpoint="{escape(endpoint.name)}">',
        f"<h3>{escape(endpoint.name)}</h3>",
        f'<p class="route"><code>{escape(route)}</code>'
        + (f' <span class="tag">{escape(stream)} stream</span>' if stream else "")
        + "</p>",
    ]
    if metadata.get("description"):
        parts.append(f'<p class="description">{escape(metadata["description"])}</p>')
    for label, schema in (("request", endpoint.request), ("response", endpoint.response)):
        if schema:
            title = schema.get("title") or label
            parts.append(
                f"<details><summary>{label}: {escape(str(title))}</summary>"
                f"<pre>{escape(_json(schema))}</pre></details>"
            )
    if metadata.get("kind") == "rpc":
        parts.append(_call_form(service, endpoint, stream))
    parts.append("</section>")
    return "\n".join(parts)


_TOKEN_FIELD = (
    # Kept for the browser tab only (sessionStorage), sent as Authorization with each call.
    '<form class="token"><label>Bearer token for calls (none: anonymous) '
    '<input type="password" name="token" id="token" autocomplete="off" spellcheck="false">'
    "</label></form>"
)


def _call_form(service: str, endpoint: Endpoint, stream: str) -> str:
    """A form that calls the endpoint; a stream of requests is written as a JSON array."""
    request = example_of(endpoint.request)
    if stream in ("client", "bidi"):
        request = [request]
    return (
        f'<form class="call" data-service="{escape(service)}" '
        f'data-endpoint="{escape(endpoint.name)}">'
        f'<textarea name="request" rows="6" spellcheck="false">{escape(_json(request))}</textarea>'
        '<button type="submit">Call</button>'
        '<pre class="reply" data-state="idle"></pre></form>'
    )


def _topics(topics: Iterable[Topic], *, root: str, with_service: bool) -> str:
    rows = []
    for topic in sorted(topics, key=lambda t: (t.topic, t.action, t.service, t.version)):
        who = (
            f'<td><a href="{_service_url(root, topic.service)}">{escape(topic.service)}</a> '
            f"{escape(topic.version)}</td>"
            if with_service
            else f"<td>{escape(topic.version)}</td>"
        )
        rows.append(
            f'<tr data-topic="{escape(topic.topic)}"><td><code>{escape(topic.topic)}</code></td>'
            f"<td>{topic.action}</td>{who}<td>{escape(topic.queue or '(every node)')}</td>"
            f"<td>{escape(', '.join(topic.messages))}</td></tr>"
        )
    if not rows:
        return '<p class="empty">No topics published or subscribed to.</p>'
    heads = ("topic", "", "service" if with_service else "version", "queue group", "messages")
    return _table(heads, rows, id="topics")


def _stats(view: NodeView) -> str:
    if view.stats is None:
        return escape(view.stats_refused)
    stats: dict[str, Any] = view.stats
    parts = [
        f"{stats.get('requests', 0)} requests",
        f"{stats.get('errors', 0)} errors",
        f"{stats.get('in_flight', 0)} in flight",
        f"up {_duration(stats.get('uptime'))}",
    ]
    if isinstance(stats.get("memory"), int):
        parts.append(f"{stats['memory'] / _MIB:.0f} MiB")
    return escape(", ".join(parts))


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h{minute:02d}m" if hours else f"{minute}m{second:02d}s"


def _live(url: str, watch: str, inner: str) -> str:
    return f'<div data-live="{escape(url)}" data-watch="{escape(watch)}">{inner}</div>'


def _table(heads: Iterable[str], rows: list[str], *, id: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    return f'<table id="{id}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _service_url(root: str, name: str) -> str:
    return escape(f"{root}/services/{quote(name, safe='')}")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
