"""A NATS KV bucket as a config source, on a real JetStream server: precedence over the
environment, puts and deletes in force within a second, invalid values rejected, a missing
bucket or server, and a watch that outlives a server restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.js.errors
import orjson
import pytest
from asgi_micro_nats.config import NATSKVSource
from nats.aio.client import Client
from nats.js.kv import KeyValue

from asgi_micro.config import DEFAULTS, Change, Config, ConfigError, Env
from tests.config.models import Settings
from tests.helpers import free_port, require_server, until
from tests.nats import nats_server, wait_for_port

HOST, PORT = "127.0.0.1", 4222
SERVER = f"nats://{HOST}:{PORT}"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    require_server("NATS", HOST, PORT)
    nc = await nats.connect(SERVER)
    try:
        yield nc
    finally:
        await nc.close()


@pytest.fixture
async def bucket(client: Client) -> AsyncIterator[KeyValue]:
    """A bucket nobody else uses, deleted after the test."""
    js = client.jetstream()
    name = f"test-config-{uuid.uuid4().hex[:12]}"
    kv = await js.create_key_value(bucket=name, history=1)
    try:
        yield kv
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_key_value(name)


async def put(kv: KeyValue, key: str, value: object) -> None:
    await kv.put(key, orjson.dumps(value))


async def test_the_bucket_is_over_the_environment(
    bucket: KeyValue, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = f"TEST_{uuid.uuid4().hex[:8].upper()}_"
    monkeypatch.setenv(f"{env}GREETING", "from env")
    monkeypatch.setenv(f"{env}DB__HOST", "db.env")
    await put(bucket, "greeter.greeting", "from nats")
    await put(bucket, "greeter.db.pool", 7)
    await put(bucket, "other.greeting", "not for this prefix")
    source = NATSKVSource(SERVER, bucket._name, prefix="greeter.")
    assert source.name == f"nats-kv:{bucket._name}/greeter."
    async with Config(Settings, sources=[Env(env), source], watch_files=False) as config:
        assert (config.value.greeting, config.value.db.host, config.value.db.pool) == (
            "from nats",
            "db.env",
            7,
        )
        assert config.source_of("greeting") == source.name
        assert config.source_of("db.pool") == source.name
        assert config.source_of("db.host") == f"env:{env}"
        assert config.source_of("db") == source.name  # the highest inside it
        assert config.source_of("tags") == DEFAULTS

        # A delete, then a purge, each fall back to the source below.
        changes = config.watch("greeting")
        await bucket.delete(source.key("greeting"))
        change = await asyncio.wait_for(anext(changes), 1.0)
        assert change == Change("greeting", "from nats", "from env", f"env:{env}", ("greeting",))
        await bucket.purge(source.key("db.pool"))
        await until(lambda: config.value.db.pool == 5, "the purge in force", timeout=1)
        assert config.source_of("db.pool") == DEFAULTS


async def test_a_put_is_in_force_within_a_second(bucket: KeyValue) -> None:
    await put(bucket, "db", {"host": "db.nats", "pool": 2})
    source = NATSKVSource(SERVER, bucket._name)
    async with Config(Settings, sources=[source], watch_files=False) as config:
        assert config.value.db.pool == 2
        changes = config.watch("db.pool")
        began = time.monotonic()
        await put(bucket, source.key("db.pool"), 6)  # refines "db", being after it in key order
        change = await asyncio.wait_for(anext(changes), 1.0)
        elapsed = time.monotonic() - began
        assert change == Change("db.pool", 2, 6, source.name, ("db.pool",))
        assert config.value.db.host == "db.nats"
        assert elapsed < 1.0


async def test_an_invalid_value_is_rejected(
    bucket: KeyValue, caplog: pytest.LogCaptureFixture
) -> None:
    await put(bucket, "db", {"pool": 3})
    async with Config(
        Settings, sources=[NATSKVSource(SERVER, bucket._name)], watch_files=False
    ) as config:
        before = config.value
        seen: list[Change] = []
        config.on_change(seen.append)
        with caplog.at_level(logging.WARNING, logger="asgi_micro.config.config"):
            await put(bucket, "db", {"pool": "lots", "password": "pw-in-nats"})
            await until(lambda: "rejected" in caplog.text, "the rejection logged", timeout=1)
            await bucket.put("greeting", b"{not json")
            await until(lambda: "invalid JSON" in caplog.text, "the JSON error logged", 1)
        assert config.value is before
        assert "db.pool: Input should be a valid integer" in caplog.text
        assert "key 'greeting': invalid JSON" in caplog.text
        assert "pw-in-nats" not in caplog.text
        assert seen == []
        await bucket.delete("greeting")
        await put(bucket, "db", {"pool": 4, "password": "pw-in-nats"})
        await until(lambda: seen, "the valid change", timeout=1)
        assert config.value.db.pool == 4
        assert config.value.db.password.get_secret_value() == "pw-in-nats"


async def test_a_bucket_made_later_is_followed(client: Client) -> None:
    name = f"test-config-{uuid.uuid4().hex[:12]}"
    js = client.jetstream()
    source = NATSKVSource(SERVER, name, retry=0.1)
    try:
        async with Config(Settings, sources=[source], watch_files=False) as config:
            assert config.value == Settings()
            assert config.source_of("greeting") == DEFAULTS
            kv = await js.create_key_value(bucket=name)
            await put(kv, "greeting", "hello")
            await until(lambda: config.value.greeting == "hello", "the new bucket read", 2)
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_key_value(name)


async def test_a_given_client_is_left_open(client: Client, bucket: KeyValue) -> None:
    await put(bucket, "greeting", "shared")
    source = NATSKVSource(bucket=bucket._name, client=client)
    async with Config(Settings, sources=[source], watch_files=False) as config:
        assert config.value.greeting == "shared"
    await source.aclose()
    assert client.is_connected
    await put(bucket, "greeting", "still usable")
    assert (await bucket.get("greeting")).value == b'"still usable"'


async def test_a_server_that_is_down_fails_the_load() -> None:
    url = f"nats://user:secret@127.0.0.1:{free_port()}"
    config = Config(Settings, sources=[NATSKVSource(url, timeout=1)], watch_files=False)
    began = time.monotonic()
    with pytest.raises(ConfigError, match="cannot reach NATS at nats://user:\\*\\*\\*@") as info:
        await config.start()
    assert "secret" not in str(info.value)
    assert time.monotonic() - began < 3


def test_a_prefix_ends_with_a_dot() -> None:
    with pytest.raises(ValueError, match=r"ending in '\.'"):
        NATSKVSource(prefix="greeter")
    with pytest.raises(ValueError, match=r"ending in '\.'"):
        NATSKVSource(prefix="greeter..")
    assert NATSKVSource(prefix="greeter.").key("db.pool") == "greeter.db.pool"


async def test_the_watch_outlives_a_server_restart(tmp_path: Path) -> None:
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    with nats_server(port, tmp_path) as server:
        await wait_for_port(port)
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        try:
            kv = await nc.jetstream().create_key_value(bucket="config")
            await put(kv, "greeting", "before")
            source = NATSKVSource(url, "config")
            async with Config(Settings, sources=[source], watch_files=False) as config:
                assert config.value.greeting == "before"
                await put(kv, "greeting", "watched")  # the watch is up before the restart
                await until(lambda: config.value.greeting == "watched", "the put seen", 1)
                server.terminate()
                server.wait(5)
                with nats_server(port, tmp_path):
                    await wait_for_port(port)
                    await until(lambda: nc.is_connected, "the test client back", timeout=5)
                    began = time.monotonic()
                    await put(kv, "greeting", "after")
                    await until(lambda: config.value.greeting == "after", "the put seen", 10)
                    assert time.monotonic() - began < 5
        finally:
            await nc.close()
