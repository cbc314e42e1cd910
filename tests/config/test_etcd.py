"""Keys on a real etcd as a config source: precedence over the environment, puts and deletes
in force within a second, invalid values rejected, a given client left open, an etcd that is
down at start, and a watch that outlives etcd going away and coming back empty.

Each test keeps to a key prefix of its own on the session's etcd and deletes it afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import aetcd
import orjson
import pytest
from asgi_micro_etcd._client import connect
from asgi_micro_etcd.config import DEFAULT_PREFIX, EtcdSource

from asgi_micro.config import DEFAULTS, Change, Config, ConfigError, Env
from asgi_micro.errors import ServiceUnavailable
from tests.config.models import Settings
from tests.etcd import etcd_server
from tests.helpers import free_port, until


def etcd_scheme(url: str) -> str:
    """``http://host:port`` (how ``tests.etcd`` names a server) as an ``etcd://`` URL."""
    return "etcd://" + url.removeprefix("http://")


@pytest.fixture
async def client(etcd_url: str) -> AsyncIterator[aetcd.Client]:
    etcd = await connect(etcd_scheme(etcd_url))
    try:
        yield etcd
    finally:
        await etcd.close()


@pytest.fixture
async def prefix(client: aetcd.Client) -> AsyncIterator[str]:
    """A prefix nobody else uses, its keys deleted after the test."""
    chosen = f"/test-{uuid.uuid4().hex[:12]}/config/"
    try:
        yield chosen
    finally:
        await client.delete_prefix(chosen.encode())


async def reach(url: str) -> aetcd.Client:
    """A client on the etcd just started at ``url``, once gRPC has waited out its backoff
    from the etcd that was there before."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return await connect(url)
        except ServiceUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def put(client: aetcd.Client, key: str, value: object) -> None:
    await client.put(key.encode(), orjson.dumps(value))


async def test_etcd_is_over_the_environment(
    etcd_url: str, client: aetcd.Client, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = f"TEST_{uuid.uuid4().hex[:8].upper()}_"
    monkeypatch.setenv(f"{env}GREETING", "from env")
    monkeypatch.setenv(f"{env}DB__HOST", "db.env")
    await put(client, f"{prefix}greeting", "from etcd")
    await put(client, f"{prefix}db.pool", 7)
    await put(client, f"{prefix.removesuffix('config/')}other/greeting", "not under the prefix")
    source = EtcdSource(f"{etcd_scheme(etcd_url)}?prefix={prefix}")
    assert source.name == f"etcd:{prefix}"
    async with Config(Settings, sources=[Env(env), source], watch_files=False) as config:
        assert (config.value.greeting, config.value.db.host, config.value.db.pool) == (
            "from etcd",
            "db.env",
            7,
        )
        assert config.source_of("greeting") == source.name
        assert config.source_of("db.pool") == source.name
        assert config.source_of("db.host") == f"env:{env}"
        assert config.source_of("tags") == DEFAULTS

        # A delete falls back to the source below.
        changes = config.watch("greeting")
        await client.delete(source.key("greeting").encode())
        change = await asyncio.wait_for(anext(changes), 1.0)
        assert change == Change("greeting", "from etcd", "from env", f"env:{env}", ("greeting",))
        await client.delete(source.key("db.pool").encode())
        await until(lambda: config.value.db.pool == 5, "the delete in force", timeout=1)
        assert config.source_of("db.pool") == DEFAULTS


async def test_a_put_is_in_force_within_a_second(
    etcd_url: str, client: aetcd.Client, prefix: str
) -> None:
    await put(client, f"{prefix}db", {"host": "db.etcd", "pool": 2})
    source = EtcdSource(etcd_scheme(etcd_url), prefix=prefix)
    async with Config(Settings, sources=[source], watch_files=False) as config:
        assert config.value.db.pool == 2
        changes = config.watch("db.pool")
        began = time.monotonic()
        await put(client, source.key("db.pool"), 6)  # refines "db", being after it in key order
        change = await asyncio.wait_for(anext(changes), 1.0)
        elapsed = time.monotonic() - began
        assert change == Change("db.pool", 2, 6, source.name, ("db.pool",))
        assert config.value.db.host == "db.etcd"
        assert elapsed < 1.0


async def test_an_invalid_value_is_rejected(
    etcd_url: str, client: aetcd.Client, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    await put(client, f"{prefix}db", {"pool": 3})
    source = EtcdSource(etcd_scheme(etcd_url), prefix=prefix)
    async with Config(Settings, sources=[source], watch_files=False) as config:
        before = config.value
        seen: list[Change] = []
        config.on_change(seen.append)
        with caplog.at_level(logging.WARNING, logger="asgi_micro.config.config"):
            await put(client, f"{prefix}db", {"pool": "lots", "password": "pw-in-etcd"})
            await until(lambda: "rejected" in caplog.text, "the rejection logged", timeout=1)
            await client.put(f"{prefix}greeting".encode(), b"{not json")
            await until(lambda: "invalid JSON" in caplog.text, "the JSON error logged", 1)
        assert config.value is before
        assert "db.pool: Input should be a valid integer" in caplog.text
        assert f"key '{prefix}greeting': invalid JSON" in caplog.text
        assert "pw-in-etcd" not in caplog.text
        assert seen == []
        await client.delete(f"{prefix}greeting".encode())
        await put(client, f"{prefix}db", {"pool": 4, "password": "pw-in-etcd"})
        await until(lambda: seen, "the valid change", timeout=1)
        assert config.value.db.pool == 4
        assert config.value.db.password.get_secret_value() == "pw-in-etcd"


async def test_a_given_client_is_left_open(client: aetcd.Client, prefix: str) -> None:
    await put(client, f"{prefix}greeting", "shared")
    source = EtcdSource(prefix=prefix, client=client)
    async with Config(Settings, sources=[source], watch_files=False) as config:
        assert config.value.greeting == "shared"
    await source.aclose()
    await put(client, f"{prefix}greeting", "still usable")
    found = await client.get(f"{prefix}greeting".encode())
    assert found is not None
    assert found.value == b'"still usable"'


async def test_an_etcd_that_is_down_fails_the_start() -> None:
    url = f"etcd://user:secret@127.0.0.1:{free_port()}?timeout=1"
    config = Config(Settings, sources=[EtcdSource(url)], watch_files=False)
    began = time.monotonic()
    with pytest.raises(ConfigError, match=r"cannot read from etcd at etcd://user:\*\*\*@") as info:
        await config.start()
    assert "secret" not in str(info.value)
    assert time.monotonic() - began < 5


def test_the_prefix_and_the_url() -> None:
    assert EtcdSource().prefix == DEFAULT_PREFIX
    assert EtcdSource("etcd://db:2379?prefix=/a/").key("db.pool") == "/a/db.pool"
    assert EtcdSource("etcd://db:2379?prefix=/a/", prefix="/b/").prefix == "/b/"
    with pytest.raises(ValueError, match="unknown options"):
        EtcdSource("etcd://db:2379?prefx=/a/")
    with pytest.raises(ValueError, match="config path"):
        EtcdSource().key("db..pool")


@pytest.mark.slow
async def test_the_watch_outlives_etcd_going_away_and_coming_back_empty() -> None:
    """The second etcd starts again from revision 1: the source must not wait for the
    revision the first one had reached before it reports a change."""
    port, peer_port = free_port(), free_port()
    url = f"etcd://127.0.0.1:{port}?timeout=1"
    source = EtcdSource(url, retry=0.1)
    config = Config(Settings, sources=[source], watch_files=False)
    try:
        with etcd_server(port=port, peer_port=peer_port):
            etcd = await connect(url)
            try:
                for count in range(20):  # the first etcd gets well ahead of where the next starts
                    await put(etcd, f"{DEFAULT_PREFIX}tags", [str(count)])
                await put(etcd, f"{DEFAULT_PREFIX}greeting", "before")
                await config.start()
                assert config.value.greeting == "before"
                await put(etcd, f"{DEFAULT_PREFIX}greeting", "watched")
                await until(lambda: config.value.greeting == "watched", "the put seen", 2)
            finally:
                await etcd.close()
        with etcd_server(port=port, peer_port=peer_port):
            etcd = await reach(url)
            try:
                # back and empty: the reload on reconnecting falls back to the defaults
                await until(lambda: config.value.greeting == "hi", "the empty etcd read", 10)
                began = time.monotonic()
                await put(etcd, f"{DEFAULT_PREFIX}greeting", "after")
                await until(lambda: config.value.greeting == "after", "the put seen", 5)
                assert time.monotonic() - began < 2
            finally:
                await etcd.close()
    finally:
        await config.stop()
