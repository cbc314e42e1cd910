"""What the identity test services share: their messages, and what a client sees of a
service's nodes.

Names come from the environment (``IDENTITY_*``), unique per test run, so that runs on one
machine never see each other's services.
"""

from __future__ import annotations

from pydantic import BaseModel

from asgi_micro import Context, Service


class Ask(BaseModel):
    note: str = ""


class Seen(BaseModel):
    """Who a call or an event came from, as the service that took it saw it."""

    node: str
    note: str = ""
    from_service: str | None = None
    account: str | None = None
    account_type: str | None = None
    error: str | None = None
    """Of a dead letter: the error that refused the event, and after how many deliveries."""
    deliveries: str | None = None


class Note(BaseModel):
    note: str


class Times(BaseModel):
    times: int = 1


class Replies(BaseModel):
    replies: list[Seen]


class Published(BaseModel):
    id: str
    pending: int | None = None
    """Copies of events the publisher's outbox still holds, right after the publish."""


class NodeView(BaseModel):
    id: str
    address: str
    trusted: bool


class Sight(BaseModel):
    nodes: list[NodeView]


def seen(service: Service, context: Context, note: str = "") -> Seen:
    account = context.account
    return Seen(
        node=service.id,
        note=note,
        from_service=context.metadata.get("from-service"),
        account=account.id if account is not None else None,
        account_type=account.type if account is not None else None,
    )


async def sight(service: Service, name: str) -> Sight:
    """The nodes of ``name`` that ``service``'s client finds, and whether it trusts each."""
    records = await service.client.cache.get(name)
    return Sight(
        nodes=[
            NodeView(id=node.id, address=node.address, trusted=service.trusts_node(name, node))
            for record in records
            for node in record.nodes
        ]
    )
