"""The AsyncAPI 3.0 document of a service's events (``asgi_micro.asyncapi``): valid against the
official JSON Schema of AsyncAPI 3.0.0 (``tests/schemas/``, from ``@asyncapi/specs``; see its
NOTICE), every ``$ref`` resolving, and saying what the service publishes and subscribes to;
served at ``/_micro/asyncapi.json`` and printed by ``asgi-micro asyncapi``."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Generic, Literal, TypeVar

import httpx
import jsonschema_rs
import orjson
import pytest
from fastapi import FastAPI
from google.protobuf import timestamp_pb2
from pydantic import BaseModel, Field, computed_field
from typer.testing import CliRunner

from asgi_micro import Service
from asgi_micro.asyncapi import DEAD_LETTER_HEADERS, EVENT_HEADERS, asyncapi, servers_of
from asgi_micro.broker.memory import MemoryBroker
from asgi_micro.cli import app as cli
from asgi_micro.registry.memory import MemoryRegistry
from tests.helpers import serve

SCHEMA = Path(__file__).parent / "schemas" / "asyncapi-3.0.0.json"


@pytest.fixture(scope="module")
def validator() -> Any:
    return jsonschema_rs.validator_for(orjson.loads(SCHEMA.read_bytes()))


class Address(BaseModel):
    city: str


class User(BaseModel):
    """Someone who signed up."""

    name: str
    home: Address | None = None


class Order(BaseModel):
    items: list[str]
    shipping: Address

    @computed_field  # type: ignore[prop-decorator]
    @property
    def count(self) -> int:
        return len(self.items)


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next: str | None = None


class Card(BaseModel):
    kind: Literal["card"]
    number: str


class Cash(BaseModel):
    kind: Literal["cash"]


class Payment(BaseModel):
    method: Annotated[Card | Cash, Field(discriminator="kind")]


class WithCallable(BaseModel):
    """pydantic validates it, but has no JSON schema for it."""

    hook: Callable[[int], int]


def make_service(broker: str = "memory://", **options: Any) -> Service:
    return Service(
        "shop",
        version="2.1.0",
        registry=MemoryRegistry(),
        store="memory://",
        broker=MemoryBroker(broker) if broker.startswith("memory") else broker,
        **options,
    )


def shop(broker: str = "memory://") -> Service:
    service = make_service(broker)
    service.publishes("user.created", User, description="When someone signs up.")
    service.publishes("order.placed", Order)
    service.publishes("payment.made", Payment)
    service.publishes("clock.tick", timestamp_pb2.Timestamp)
    service.publishes("users.listed", Page[User])

    @service.subscribe("user.created", queue="shop")
    async def welcome(user: User) -> None:
        """Send a welcome mail."""

    @service.subscribe("user.created")
    async def count_users(user: User) -> None: ...

    @service.subscribe("order.placed", queue="billing", max_deliveries=3)
    async def bill(order: Order) -> None: ...

    @service.subscribe("cache.flush")
    async def flush() -> None: ...

    return service


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def errors(validator: Any, document: dict[str, Any]) -> list[str]:
    return [f"{list(e.instance_path)}: {e.message[:200]}" for e in validator.iter_errors(document)]


# -- valid, and whole --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "broker",
    [
        "memory://",
        "nats://u:secret@127.0.0.1:4222?stream=S",
        "redis://127.0.0.1:6379/0",
        "amqp://guest:guest@127.0.0.1:5672/",
        "http://",
    ],
)
def test_the_document_is_valid_asyncapi_3(validator: Any, broker: str) -> None:
    document = asyncapi(shop(broker))
    assert errors(validator, document) == []
    assert document["asyncapi"] == "3.0.0"
    assert document["info"] == {"title": "shop", "version": "2.1.0"}
    assert "secret" not in orjson.dumps(document).decode()


def test_the_validator_rejects_what_asyncapi_does_not_allow(validator: Any) -> None:
    """The schema really checks: each broken copy of a good document is refused."""
    good = asyncapi(shop())

    def broken(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        document = orjson.loads(orjson.dumps(good))
        change(document)
        return document

    def drop_channel(d: dict[str, Any]) -> None:
        del d["operations"]["send.user.created"]["channel"]

    def openapi_discriminator(d: dict[str, Any]) -> None:
        d["components"]["schemas"]["Payment"]["properties"]["method"]["discriminator"] = {
            "propertyName": "kind"
        }

    def bad_action(d: dict[str, Any]) -> None:
        d["operations"]["send.user.created"]["action"] = "publish"  # AsyncAPI 2's word

    def server_without_host(d: dict[str, Any]) -> None:
        del d["servers"]["broker"]["host"]

    def bad_payload(d: dict[str, Any]) -> None:
        d["channels"]["user.created"]["messages"]["User"]["payload"] = {"type": 5}

    def unknown_field(d: dict[str, Any]) -> None:
        d["channels"]["user.created"]["queue"] = "shop"  # extensions start with x-

    for change in (
        drop_channel,
        openapi_discriminator,
        bad_action,
        server_without_host,
        bad_payload,
        unknown_field,
    ):
        assert errors(validator, broken(change)), change.__name__


def test_every_reference_resolves_and_no_defs_are_left_inline() -> None:
    document = asyncapi(shop())
    found = list(refs(document))
    assert found
    for ref in found:
        assert resolve(document, ref) is not None, ref
    assert "$defs" not in orjson.dumps(document).decode()
    # The spec's rule for component names, which its JSON Schema does not enforce.
    for name in document["components"]["schemas"]:
        assert re.fullmatch(r"[\w\d.\-_]+", name), name
    assert "Page_User_" in document["components"]["schemas"]  # pydantic's Page[User]
    # Operations point at their channel's messages, as AsyncAPI 3 requires.
    for key, operation in document["operations"].items():
        channel = operation["channel"]["$ref"]
        for message in operation["messages"]:
            assert message["$ref"].startswith(channel + "/messages/"), key


# -- what it says ----------------------------------------------------------------------------


def test_channels_are_topics_with_their_payload_and_the_envelope() -> None:
    document = asyncapi(shop())
    channels = document["channels"]
    assert list(channels) == [
        "user.created",
        "order.placed",
        "payment.made",
        "clock.tick",
        "users.listed",
        "cache.flush",
        "user.created.dead",
        "order.placed.dead",
        "cache.flush.dead",
    ]
    for topic, channel in channels.items():
        assert channel["address"] == topic
    users = channels["user.created"]["messages"]
    assert list(users) == ["User"]  # published and received as the same message
    user = users["User"]
    assert user["payload"] == {"$ref": "#/components/schemas/User"}
    assert user["contentType"] == "application/json"
    assert user["headers"]["allOf"] == [
        {"$ref": f"#/components/schemas/{EVENT_HEADERS}"},
        {"type": "object", "properties": {"ce-type": {"const": "user.created"}}},
    ]
    headers = document["components"]["schemas"][EVENT_HEADERS]
    assert set(headers["required"]) == {
        "ce-id",
        "ce-source",
        "ce-type",
        "ce-specversion",
        "ce-time",
        "content-type",
    }
    assert {"traceparent", "micro-deadline"} <= set(headers["properties"])
    assert "^micro-" in headers["patternProperties"]
    # A handler without a message takes any body.
    assert "payload" not in channels["cache.flush"]["messages"]["Event"]


def test_shared_models_are_lifted_into_components_once() -> None:
    document = asyncapi(shop())
    schemas = document["components"]["schemas"]
    assert {"User", "Address", "Payment", "Card", "Cash", "Timestamp"} <= set(schemas)
    address_refs = [ref for ref in refs(schemas) if ref == "#/components/schemas/Address"]
    assert len(address_refs) >= 2  # User and Order share one Address
    assert schemas["Timestamp"]["properties"].keys() == {"seconds", "nanos"}  # protobuf class
    # AsyncAPI's discriminator is the property's name, not OpenAPI's object.
    assert schemas["Payment"]["properties"]["method"]["discriminator"] == "kind"


def test_published_types_are_described_as_serialised_and_received_ones_as_validated() -> None:
    document = asyncapi(shop())
    orders = document["channels"]["order.placed"]["messages"]
    assert set(orders) == {"Order-Output", "Order-Input"}
    schemas = document["components"]["schemas"]
    assert "count" in schemas["Order-Output"]["properties"]  # the computed field is sent
    assert "count" not in schemas["Order-Input"]["properties"]
    operations = document["operations"]
    assert operations["send.order.placed"]["messages"] == [
        {"$ref": "#/channels/order.placed/messages/Order-Output"}
    ]
    assert operations["receive.order.placed.billing"]["messages"] == [
        {"$ref": "#/channels/order.placed/messages/Order-Input"}
    ]


def test_operations_send_published_topics_and_receive_subscribed_ones() -> None:
    operations = asyncapi(shop())["operations"]
    assert list(operations) == [
        "send.user.created",
        "send.order.placed",
        "send.payment.made",
        "send.clock.tick",
        "send.users.listed",
        "receive.user.created.shop",
        "receive.user.created",
        "receive.order.placed.billing",
        "receive.cache.flush",
        "send.user.created.dead",
        "send.order.placed.dead",
        "send.cache.flush.dead",
    ]
    published = operations["send.user.created"]
    assert published["action"] == "send"
    assert published["channel"] == {"$ref": "#/channels/user.created"}
    assert published["description"] == "When someone signs up."
    welcome = operations["receive.user.created.shop"]
    assert welcome["action"] == "receive"
    assert welcome["x-micro-queue"] == "shop"
    assert welcome["summary"] == f"{__name__}.shop.<locals>.welcome"
    assert welcome["description"] == "Send a welcome mail."
    broadcast = operations["receive.user.created"]
    assert "x-micro-queue" not in broadcast
    assert operations["receive.order.placed.billing"]["x-micro-max-deliveries"] == 3


def test_a_queue_group_is_an_extension_on_every_broker() -> None:
    """No NATS binding: its ``queue`` is a core NATS queue group, which JetStream (where the
    broker's groups are durable consumers) does not deliver to."""
    operations = asyncapi(shop("nats://127.0.0.1:4222"))["operations"]
    assert operations["receive.user.created.shop"]["x-micro-queue"] == "shop"
    assert all("bindings" not in operation for operation in operations.values())


def test_dead_letters_keep_the_envelope_and_say_why() -> None:
    document = asyncapi(shop())
    dead = document["channels"]["user.created.dead"]["messages"]["DeadLetter"]
    assert "payload" not in dead  # the body as published: it may not even decode
    assert dead["headers"]["allOf"][0] == {"$ref": f"#/components/schemas/{DEAD_LETTER_HEADERS}"}
    # The envelope is the original event's: its ce-type is the topic it was published on.
    assert dead["headers"]["allOf"][1]["properties"]["ce-type"] == {"const": "user.created"}
    headers = document["components"]["schemas"][DEAD_LETTER_HEADERS]
    assert headers["allOf"][1]["required"] == ["micro-error", "micro-deliveries"]
    assert document["operations"]["send.user.created.dead"]["action"] == "send"


def test_operation_keys_stay_unique_and_valid() -> None:
    service = make_service()

    @service.subscribe("t.a", queue="q")
    async def one() -> None: ...

    @service.subscribe("t.a", queue="q")
    async def two() -> None: ...

    @service.subscribe("t.a", queue="with space/and slash")
    async def three() -> None: ...

    operations = asyncapi(service)["operations"]
    assert list(operations)[:3] == [
        "receive.t.a.q",
        "receive.t.a.q_2",
        "receive.t.a.with_space_and_slash",
    ]
    assert operations["receive.t.a.with_space_and_slash"]["x-micro-queue"] == (
        "with space/and slash"
    )


def test_a_type_without_a_json_schema_leaves_the_others_described(
    validator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service()
    service.publishes("user.created", User)

    @service.subscribe("hooks")
    async def on_hook(event: WithCallable) -> None: ...

    document = asyncapi(service)
    assert errors(validator, document) == []
    assert document["channels"]["user.created"]["messages"]["User"]["payload"] == {
        "$ref": "#/components/schemas/User"
    }
    hooks = document["channels"]["hooks"]["messages"]
    assert all("payload" not in message for message in hooks.values())
    assert "no JSON schema" in caplog.text


def test_a_service_without_events() -> None:
    document = asyncapi(make_service())
    assert document["channels"] == {}
    assert document["operations"] == {}
    assert document["components"] == {"schemas": {}}


# -- servers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "servers"),
    [
        (
            "nats://user:secret@nats.internal:4222?stream=S&token=secret",
            {"broker": {"host": "nats.internal:4222", "protocol": "nats"}},
        ),
        (
            "nats://a:4222,b:4222",
            {
                "broker-1": {"host": "a:4222", "protocol": "nats"},
                "broker-2": {"host": "b:4222", "protocol": "nats"},
            },
        ),
        ("tls://n:4222", {"broker": {"host": "n:4222", "protocol": "nats"}}),
        (
            "rediss://:secret@r:6380/2",
            {"broker": {"host": "r:6380", "protocol": "redis", "pathname": "/2"}},
        ),
        (
            "amqps://guest:secret@mq:5671/vhost",
            {"broker": {"host": "mq:5671", "protocol": "amqps", "pathname": "/vhost"}},
        ),
        ("", {}),
    ],
)
def test_servers_come_from_the_broker_url_without_credentials(
    url: str, servers: dict[str, Any]
) -> None:
    assert servers_of(url) == servers


def test_in_process_and_embedded_brokers_say_what_they_are() -> None:
    [memory] = servers_of("memory://tests").values()
    assert (memory["protocol"], memory["host"]) == ("memory", "localhost")
    assert "'tests'" in memory["description"]
    [embedded] = servers_of("http://?max_age=60").values()
    assert embedded["host"] == "{node}"
    assert embedded["pathname"] == "/_micro/broker"
    assert "node" in embedded["variables"]


# -- served, and printed ------------------------------------------------------------------------


async def test_served_at_micro_asyncapi_json(validator: Any) -> None:
    service = shop(f"memory://{uuid.uuid4().hex}")
    app = FastAPI(lifespan=service.lifespan)
    async with serve(app) as address, httpx.AsyncClient(base_url=f"http://{address}") as http:
        response = await http.get("/_micro/asyncapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.json() == asyncapi(service)
        assert errors(validator, response.json()) == []
        refused = await http.post("/_micro/asyncapi.json")
        assert refused.status_code == 405


def test_asgi_micro_asyncapi_prints_the_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = f"asyncapi_app_{uuid.uuid4().hex}"
    (tmp_path / f"{module}.py").write_text(
        "from fastapi import FastAPI\n"
        "from pydantic import BaseModel\n"
        "from asgi_micro import Service\n"
        "class User(BaseModel):\n"
        "    name: str\n"
        "service = Service('users', version='3.0.0')\n"
        "service.publishes('user.created', User)\n"
        "@service.subscribe('user.deleted', queue='users')\n"
        "async def on_deleted(user: User) -> None: ...\n"
        "app = FastAPI(lifespan=service.lifespan)\n"
    )
    monkeypatch.setenv("MICRO_BROKER", "nats://me:secret@127.0.0.1:4222")
    runner = CliRunner()
    try:
        for target in (str(tmp_path / f"{module}.py"), f"{tmp_path / module}.py:service"):
            result = runner.invoke(cli, ["asyncapi", target])
            assert result.exit_code == 0, result.output
            document = orjson.loads(result.stdout)
            assert document["info"] == {"title": "users", "version": "3.0.0"}
            assert document["servers"] == {"broker": {"host": "127.0.0.1:4222", "protocol": "nats"}}
            assert set(document["operations"]) == {
                "send.user.created",
                "receive.user.deleted.users",
                "send.user.deleted.dead",
            }
        (tmp_path / "plain.py").write_text("app = object()\n")
        result = runner.invoke(cli, ["asyncapi", str(tmp_path / "plain.py")])
        assert result.exit_code == 2
        assert "cannot tell which Service serves this app" in result.stderr
    finally:
        sys.modules.pop(module, None)
        sys.modules.pop("plain", None)
