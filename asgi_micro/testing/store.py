"""The store conformance suite: every store backend reads, writes, expires and refuses bad
input the same way.

A backend's tests subclass ``StoreConformance`` and say how to open a store and what it holds::

    from asgi_micro.testing.store import StoreConformance


    class TestMyStore(StoreConformance):
        @contextlib.asynccontextmanager
        async def open(self, **options: Any) -> AsyncIterator[Store]:
            async with MyStore.from_url(URL, **options) as store:   # a namespace of its own
                yield store

        async def held_keys(self, store: Store) -> list[str]:
            ...  # every key the backend still holds for store's namespace, expired or not

``open(**options)`` yields a fresh, started store built with those constructor options (the
suite passes ``sweep_interval``, ``max_value_size``...); ``held_keys`` lets the expiry tests
see the sweeper work.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import pydantic
import pytest
import pytest_asyncio

from ..errors import BadRequest, Conflict, NotFound, PayloadTooLarge
from ..store import ABSENT, MAX_KEY_SIZE, Record, Store
from . import eventually

__all__ = ["Greeting", "StoreConformance"]


class Greeting(pydantic.BaseModel):
    name: str
    count: int = 0


BAD_KEYS: list[tuple[Any, type[Exception], str]] = [
    ("", BadRequest, "must not be empty"),
    (b"bytes-key", BadRequest, "must be a str, got bytes"),
    (42, BadRequest, "must be a str, got int"),
    ("lone \ud800 surrogate", BadRequest, "not valid Unicode"),
    ("nul\x00key", BadRequest, "NUL"),
    ("k" * (MAX_KEY_SIZE + 1), BadRequest, f"over {MAX_KEY_SIZE} bytes"),
    ("é" * (MAX_KEY_SIZE // 2 + 1), BadRequest, f"over {MAX_KEY_SIZE} bytes"),
]


BAD_WRITES: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"value": "text"}, BadRequest, "must be bytes, got str"),
    ({"value": None}, BadRequest, "no value"),
    ({"value": b"x" * 1025}, PayloadTooLarge, "1025 bytes; the limit is 1024"),
    ({"ttl": -1}, BadRequest, "ttl must be positive"),
    ({"ttl": 0}, BadRequest, "ttl must be positive"),
    ({"ttl": math.nan}, BadRequest, "number of seconds"),
    ({"ttl": math.inf}, BadRequest, "number of seconds"),
    ({"ttl": True}, BadRequest, "number of seconds"),
    ({"ttl": "10"}, BadRequest, "number of seconds"),
    ({"if_version": -1}, BadRequest, "if_version"),
    ({"if_version": 1.0}, BadRequest, "if_version"),
    ({"metadata": {"k": 1}}, BadRequest, "must be a str, got int"),
    ({"metadata": {1: "v"}}, BadRequest, "must be a str, got int"),
    ({"metadata": {"k": "\ud800"}}, BadRequest, "not valid Unicode"),
    ({"metadata": {"k": "x" * 70_000}}, PayloadTooLarge, "metadata"),
    ({"metadata": ["k=v"]}, BadRequest, "mapping"),
]


@pytest.mark.asyncio
class StoreConformance:
    """Subclass it as ``Test...`` and implement ``open`` and ``held_keys``."""

    def open(self, **options: Any) -> contextlib.AbstractAsyncContextManager[Store]:
        """A fresh store, started, with these constructor options."""
        raise NotImplementedError(f"{type(self).__name__} must implement open()")

    async def held_keys(self, store: Store) -> list[str]:
        """Every key the backend holds in ``store``'s namespace, expired or not, sorted."""
        raise NotImplementedError(f"{type(self).__name__} must implement held_keys()")

    @pytest.fixture
    def harness(self) -> StoreConformance:
        return self

    @pytest_asyncio.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with self.open() as opened:
            yield opened

    async def test_write_then_read(self, store: Store) -> None:
        written = await store.write("greeting", b"hello", metadata={"lang": "en"})

        assert written == Record("greeting", b"hello", {"lang": "en"}, None, 1)
        [record] = await store.read("greeting")
        assert record == written
        assert record.ttl is None

    async def test_read_missing_key_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match="'missing'"):
            await store.read("missing")

    async def test_each_write_bumps_the_version_and_replaces_the_record(self, store: Store) -> None:
        await store.write("k", b"one", metadata={"a": "1"})
        second = await store.write("k", b"two")
        third = await store.write("k", b"three", metadata={"b": "2"})

        assert (second.version, third.version) == (2, 3)
        [record] = await store.read("k")
        assert (record.value, record.metadata, record.version) == (b"three", {"b": "2"}, 3)

    async def test_write_a_record(self, store: Store) -> None:
        expires_at = time.time() + 60
        written = await store.write(Record("r", b"v", {"m": "x"}, expires_at, version=7))

        assert written == Record("r", b"v", {"m": "x"}, expires_at, 1)  # version is the store's
        [record] = await store.read("r")
        assert record.expires_at == pytest.approx(expires_at)
        assert 59 < (record.ttl or 0) <= 60
        overridden = await store.write(record, ttl=120, metadata={})
        assert overridden.metadata == {}
        assert overridden.expires_at is not None
        assert overridden.expires_at > expires_at + 50

    async def test_values_are_bytes_of_any_content(self, store: Store) -> None:
        value = bytes(range(256)) * 4
        await store.write("binary", value)
        await store.write("empty", b"")
        await store.write("view", memoryview(b"from a view"))  # type: ignore[arg-type]  # bytes-like works too

        assert (await store.read("binary"))[0].value == value
        assert (await store.read("empty"))[0].value == b""
        assert (await store.read("view"))[0].value == b"from a view"

    async def test_if_version_write(self, store: Store) -> None:
        first = await store.write("counter", b"1")
        second = await store.write("counter", b"2", if_version=first.version)
        assert second.version == first.version + 1

        with pytest.raises(Conflict) as caught:
            await store.write("counter", b"stale", if_version=first.version)
        assert "'counter'" in caught.value.detail
        assert "expected version 1, found version 2" in caught.value.detail
        assert caught.value.code == 409
        [record] = await store.read("counter")
        assert (record.value, record.version) == (b"2", 2)

    async def test_if_version_on_a_missing_key_conflicts(self, store: Store) -> None:
        with pytest.raises(Conflict, match="expected version 3, found none"):
            await store.write("nothing", b"x", if_version=3)
        assert await store.list() == []

    async def test_create_only_if_absent(self, store: Store) -> None:
        created = await store.write("lock", b"owner-a", if_version=ABSENT)
        assert created.version == 1

        with pytest.raises(Conflict, match="expected no record, found version 1"):
            await store.write("lock", b"owner-b", if_version=ABSENT)
        assert (await store.read("lock"))[0].value == b"owner-a"

        await store.delete("lock")
        again = await store.write("lock", b"owner-b", if_version=ABSENT)
        assert (again.version, (await store.read("lock"))[0].value) == (1, b"owner-b")

    async def test_delete(self, store: Store) -> None:
        await store.write("gone", b"x")

        assert await store.delete("gone") is True
        assert await store.delete("gone") is False
        with pytest.raises(NotFound):
            await store.read("gone")

    async def test_if_version_delete(self, store: Store) -> None:
        await store.write("doc", b"1")
        await store.write("doc", b"2")

        with pytest.raises(Conflict, match="'doc': expected version 1, found version 2"):
            await store.delete("doc", if_version=1)
        assert (await store.read("doc"))[0].value == b"2"
        assert await store.delete("doc", if_version=2) is True
        with pytest.raises(Conflict, match="expected version 2, found none"):
            await store.delete("doc", if_version=2)
        with pytest.raises(BadRequest, match="ABSENT"):
            await store.delete("doc", if_version=ABSENT)

    async def test_version_restarts_after_delete(self, store: Store) -> None:
        await store.write("k", b"1")
        await store.write("k", b"2")
        await store.delete("k")

        assert (await store.write("k", b"3")).version == 1

    async def test_prefix_read_and_list(self, store: Store) -> None:
        for key in ["user/2", "user/10", "user/1", "users", "use", "admin/1"]:
            await store.write(key, key.encode())

        records = await store.read("user/", prefix=True)
        assert [record.key for record in records] == ["user/1", "user/10", "user/2"]
        assert [record.value for record in records] == [b"user/1", b"user/10", b"user/2"]
        assert await store.list(prefix="user") == ["user/1", "user/10", "user/2", "users"]
        assert await store.read("nobody/", prefix=True) == []
        assert await store.list(prefix="nobody/") == []

    async def test_like_wildcards_are_plain_characters(self, store: Store) -> None:
        for key in ["a%b", "a_b", "axb", "a%", "a\\b", "a\\%"]:
            await store.write(key, b"v")

        assert await store.list(prefix="a%") == ["a%", "a%b"]
        assert await store.list(prefix="a_") == ["a_b"]
        assert await store.list(prefix="a\\") == ["a\\%", "a\\b"]
        assert await store.list(suffix="%") == ["a%", "a\\%"]
        assert await store.list(suffix="_b") == ["a_b"]
        assert [r.key for r in await store.read("a_", prefix=True)] == ["a_b"]

    async def test_suffix_read_and_list(self, store: Store) -> None:
        for key in ["a.json", "b.json", "c.txt", "json", "x.json.bak"]:
            await store.write(key, b"v")

        assert await store.list(suffix=".json") == ["a.json", "b.json"]
        assert [r.key for r in await store.read("json", suffix=True)] == [
            "a.json",
            "b.json",
            "json",
        ]
        assert await store.list(prefix="b", suffix=".json") == ["b.json"]
        both = await store.read("json", prefix=True, suffix=True)
        assert [r.key for r in both] == ["json"]

    async def test_limit_and_offset(self, store: Store) -> None:
        keys = [f"item/{i:02d}" for i in range(12)]
        for key in reversed(keys):
            await store.write(key, b"v")
        await store.write("other", b"v")

        assert await store.list(prefix="item/", limit=5) == keys[:5]
        assert await store.list(prefix="item/", limit=5, offset=5) == keys[5:10]
        assert await store.list(prefix="item/", offset=10) == keys[10:]
        assert await store.list(prefix="item/", limit=0) == []
        assert await store.list(prefix="item/", offset=50) == []
        page = await store.read("item/", prefix=True, limit=3, offset=2)
        assert [record.key for record in page] == keys[2:5]
        assert await store.list(limit=2, offset=11) == [keys[11], "other"]

    async def test_keys_sort_by_code_point(self, store: Store) -> None:
        keys = ["b", "a", "B", "é", "z", "😀", "\uffff", "a\u0301", "ab", "a b", "-a", "~"]
        for key in keys:
            await store.write(key, b"v")

        assert await store.list() == sorted(keys)
        assert await store.list(prefix="a") == sorted(k for k in keys if k.startswith("a"))
        assert await store.list(prefix="\uffff") == ["\uffff"]
        assert await store.list(prefix="😀") == ["😀"]

    async def test_prefix_of_the_highest_code_point(self, store: Store) -> None:
        top = "\U0010ffff"
        for key in [f"k{top}", f"k{top}{top}", f"k{top}a", "l", "k"]:
            await store.write(key, b"v")

        assert await store.list(prefix=f"k{top}") == [f"k{top}", f"k{top}a", f"k{top}{top}"]
        assert await store.list(prefix=top) == []

    async def test_namespaces_are_separate(self, store: Store) -> None:
        orders = store.table("orders")
        users = store.table("users")
        other_db = store.database("tenant-b").table("orders")
        await orders.write("1", b"order")
        await users.write("1", b"user")
        await other_db.write("1", b"tenant-b order")

        assert (orders.database_name, orders.table_name) == (store.database_name, "orders")
        assert (other_db.database_name, other_db.table_name) == ("tenant-b", "orders")
        assert (await orders.read("1"))[0].value == b"order"
        assert (await users.read("1"))[0].value == b"user"
        assert (await other_db.read("1"))[0].value == b"tenant-b order"
        assert await store.list() == []
        await users.delete("1")
        assert await orders.list() == ["1"]
        assert await users.list() == []

    async def test_default_namespace(self, store: Store) -> None:
        assert (store.database_name, store.table_name) == ("micro", "micro")

    async def test_expired_records_are_never_returned(self, harness: StoreConformance) -> None:
        async with harness.open(sweep_interval=3600) as store:
            await store.write("short", b"x", ttl=0.2, metadata={"m": "1"})
            await store.write("prefix/short", b"x", ttl=0.2)
            await store.write("prefix/long", b"x", ttl=60)
            [record] = await store.read("short")
            assert 0 < (record.ttl or 0) <= 0.2

            async def expired() -> bool:
                try:
                    await store.read("short")
                except NotFound:
                    return True
                return False

            await eventually(expired, timeout=5, message="record did not expire")
            assert "short" in await harness.held_keys(store)  # not swept yet: filtered out
            assert await store.list() == ["prefix/long"]
            assert [r.key for r in await store.read("prefix/", prefix=True)] == ["prefix/long"]
            assert await store.list(suffix="short") == []
            assert await store.delete("short") is False
            with pytest.raises(Conflict, match="found none"):
                await store.write("prefix/short", b"y", if_version=1)
            recreated = await store.write("prefix/short", b"y", if_version=ABSENT)
            assert recreated.version == 1
            assert (await store.write("short", b"z")).version == 1

    async def test_sweep_removes_expired_records(self, harness: StoreConformance) -> None:
        async with harness.open(sweep_interval=3600) as store:
            await store.write("old", b"x", ttl=0.05)
            await store.table("elsewhere").write("old", b"x", ttl=0.05)
            await store.write("kept", b"x")
            await store.write("later", b"x", ttl=60)
            await asyncio.sleep(0.1)

            assert await store.sweep() == 2
            assert await harness.held_keys(store) == ["kept", "later"]
            assert await harness.held_keys(store.table("elsewhere")) == []
            assert await store.sweep() == 0

    async def test_background_sweeper(self, harness: StoreConformance) -> None:
        async with harness.open(sweep_interval=0.1) as store:
            await store.write("brief", b"x", ttl=0.1)
            await store.write("kept", b"x")

            async def swept() -> bool:
                return await harness.held_keys(store) == ["kept"]

            await eventually(swept, timeout=5, message="the sweeper did not remove the record")

    async def test_a_rewrite_with_a_later_expiry_survives_the_sweep(
        self, harness: StoreConformance
    ) -> None:
        async with harness.open(sweep_interval=3600) as store:
            await store.write("k", b"1", ttl=0.05)
            await store.write("k", b"2", ttl=60)
            await asyncio.sleep(0.1)

            assert await store.sweep() == 0
            assert (await store.read("k"))[0].value == b"2"

    @pytest.mark.parametrize(("key", "error", "message"), BAD_KEYS)
    async def test_bad_keys(
        self, store: Store, key: Any, error: type[Exception], message: str
    ) -> None:
        with pytest.raises(error, match=message):
            await store.write(key, b"v")
        with pytest.raises(error, match=message):
            await store.read(key)
        with pytest.raises(error, match=message):
            await store.delete(key)
        assert await store.list() == []

    async def test_longest_key_fits(self, store: Store) -> None:
        key = "k" * MAX_KEY_SIZE
        await store.write(key, b"v")
        assert await store.list() == [key]

    @pytest.mark.parametrize(("change", "error", "message"), BAD_WRITES)
    async def test_bad_writes_change_nothing(
        self,
        harness: StoreConformance,
        change: dict[str, Any],
        error: type[Exception],
        message: str,
    ) -> None:
        async with harness.open(max_value_size=1024) as store:
            await store.write("existing", b"original", metadata={"m": "1"})
            arguments: dict[str, Any] = {"value": b"new"} | change
            value = arguments.pop("value")

            with pytest.raises(error, match=message):
                await store.write("existing", value, **arguments)
            with pytest.raises(error, match=message):
                await store.write("fresh", value, **arguments)

            assert await store.list() == ["existing"]
            [record] = await store.read("existing")
            assert (record.value, record.metadata, record.version) == (b"original", {"m": "1"}, 1)

    async def test_largest_value_fits(self, harness: StoreConformance) -> None:
        async with harness.open(max_value_size=4096) as store:
            await store.write("big", b"\xff" * 4096)
            assert (await store.read("big"))[0].value == b"\xff" * 4096

    async def test_bad_queries(self, store: Store) -> None:
        with pytest.raises(BadRequest, match="limit"):
            await store.list(limit=-1)
        with pytest.raises(BadRequest, match="offset"):
            await store.list(offset=-1)
        with pytest.raises(BadRequest, match="offset"):
            await store.read("a", prefix=True, offset=-5)
        with pytest.raises(BadRequest, match="prefix"):
            await store.list(prefix=b"a")  # type: ignore[arg-type]
        with pytest.raises(BadRequest, match="not valid Unicode"):
            await store.list(suffix="\udcff")
        with pytest.raises(BadRequest, match="Record or a key"):
            await store.write(Record("k", b"v"), b"other")
        with pytest.raises(BadRequest, match="expired before"):
            await store.write(Record("k", b"v", expires_at=time.time() - 1))
        with pytest.raises(BadRequest, match="expires_at must be Unix time"):
            await store.write(Record("k", b"v", expires_at="tomorrow"))  # type: ignore[arg-type]
        with pytest.raises(BadRequest, match="table name must not be empty"):
            store.table("")
        with pytest.raises(BadRequest, match="database name"):
            store.database("x" * 300)
        assert await store.list() == []

    async def test_json_helpers(self, store: Store) -> None:
        written = await store.write_json("greeting", Greeting(name="Ada", count=2), ttl=60)
        assert written.value == b'{"name":"Ada","count":2}'
        assert await store.read_json("greeting", Greeting) == Greeting(name="Ada", count=2)
        assert await store.read_json("greeting") == {"name": "Ada", "count": 2}

        await store.write_json("numbers", [1, 2, 3], metadata={"kind": "list"})
        assert await store.read_json("numbers", list[int]) == [1, 2, 3]

        with pytest.raises(pydantic.ValidationError):
            await store.read_json("numbers", Greeting)
        with pytest.raises(BadRequest, match="cannot be stored as JSON"):
            await store.write_json("bad", object())
        with pytest.raises(NotFound):
            await store.read_json("missing", Greeting)
        assert await store.list() == ["greeting", "numbers"]

    async def test_json_compare_and_set(self, store: Store) -> None:
        await store.write_json("profile", Greeting(name="Ada"))
        [record] = await store.read("profile")
        greeting = Greeting.model_validate_json(record.value)
        greeting.count += 1

        await store.write_json("profile", greeting, if_version=record.version)
        with pytest.raises(Conflict):
            await store.write_json("profile", greeting, if_version=record.version)
        assert (await store.read_json("profile", Greeting)).count == 1

    async def test_lifecycle(self, harness: StoreConformance) -> None:
        async with harness.open() as store:
            view = store.table("view")
            await store.start()  # idempotent
            await view.start()
            await view.write("k", b"v")

            assert [t for t in asyncio.all_tasks() if t.get_name() == "asgi_micro.store.sweep"]
            await store.stop()
            await store.stop()
            assert not [t for t in asyncio.all_tasks() if t.get_name() == "asgi_micro.store.sweep"]
            with pytest.raises(RuntimeError, match="not started"):
                await store.read("k")
            with pytest.raises(RuntimeError, match="not started"):
                await view.write("k", b"v")

            await view.start()  # views share the store's lifecycle, and the records outlive it
            assert (await view.read("k"))[0].value == b"v"
            assert await store.list() == []

    async def test_concurrent_operations(self, store: Store) -> None:
        async def worker(n: int) -> None:
            for i in range(10):
                await store.write(f"w{n}/{i}", str(i).encode())
                [record] = await store.read(f"w{n}/{i}")
                assert record.value == str(i).encode()

        await asyncio.gather(*(worker(n) for n in range(10)))
        assert len(await store.list()) == 100
        assert len(await store.read("w3/", prefix=True)) == 10
