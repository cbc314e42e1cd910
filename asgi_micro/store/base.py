"""The store interface: records under keys, namespaced by database and table.

Like Go Micro's store, a record is ``{key, value, metadata, expiry}``; like Dapr's state store,
every record also carries a ``version`` for compare-and-set. A backend implements the ``_``
methods at the bottom of ``Store``; the public methods validate input first, so a bad key,
value or TTL is rejected before anything touches the backend.

Versions count the writes since a record was created: the first write gives version 1 and
each write adds one. ``if_version=N`` makes a write or delete happen only while the record is
at version N, and ``if_version=ABSENT`` (0) makes a write happen only while there is no live
record (first write wins). A record that was deleted or expired starts again at version 1.

``fence=Fence(lock_name, token)`` (a lease's ``fence``) makes a write happen only if ``token`` is
at least the highest token any fenced write for that lock name has used, checked and recorded
atomically with the write; otherwise ``Conflict``. A holder paused past its lease's TTL, whose
successor has written with a higher token, is thereby refused.
"""

from __future__ import annotations

import builtins
import copy
import math
import time
from abc import abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, NamedTuple, Self, TypeVar, overload

import orjson
from pydantic_core import PydanticSerializationError

from ..codec import JSON, MessageType
from ..errors import STORE_ID, BadRequest, Conflict, NotFound, PayloadTooLarge
from ..plugins import Pluggable

__all__ = [
    "ABSENT",
    "DEFAULT_DATABASE",
    "DEFAULT_TABLE",
    "MAX_KEY_SIZE",
    "MAX_METADATA_SIZE",
    "MAX_NAME_SIZE",
    "MAX_VALUE_SIZE",
    "Fence",
    "Record",
    "Store",
]

T = TypeVar("T")

DEFAULT_DATABASE: Final = "micro"
DEFAULT_TABLE: Final = "micro"
ABSENT: Final = 0
"""``if_version=ABSENT``: write only if the key holds no live record."""

MAX_KEY_SIZE: Final = 1024
"""Bytes of UTF-8 in a key; it must fit in the primary-key index of every SQL engine."""
MAX_NAME_SIZE: Final = 255
"""Bytes of UTF-8 in a database or table name."""
MAX_VALUE_SIZE: Final = 1024 * 1024
"""The default limit on a value's bytes; each store takes ``max_value_size``."""
MAX_METADATA_SIZE: Final = 64 * 1024
"""Bytes of a record's metadata encoded as JSON."""


class Fence(NamedTuple):
    """A lock's name and a holder's fencing token, for ``Store.write(..., fence=...)``."""

    name: str
    token: int


@dataclass(slots=True)
class Record:
    """One value under a key. ``expires_at`` is Unix time in seconds, ``None`` for never."""

    key: str
    value: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    expires_at: float | None = None
    version: int = 0

    @property
    def ttl(self) -> float | None:
        """Seconds until the record expires, ``None`` if it never does."""
        if self.expires_at is None:
            return None
        return max(0.0, self.expires_at - time.time())


class Store(Pluggable):
    """Records under keys, in the table ``table_name`` of the database ``database_name``.

    ``database(name)`` and ``table(name)`` return views on another namespace that share this
    store's connections and lifecycle. Lifecycle is explicit and idempotent: ``start``/``stop``
    or ``async with store:``; nothing connects in ``__init__``, and an operation on a store that
    is not started raises ``RuntimeError``.
    """

    def __init__(
        self,
        *,
        database: str = DEFAULT_DATABASE,
        table: str = DEFAULT_TABLE,
        max_value_size: int = MAX_VALUE_SIZE,
    ) -> None:
        if max_value_size < 1:
            raise ValueError(f"max_value_size must be positive, got {max_value_size}")
        self._database = _check_name("database", database)
        self._table = _check_name("table", table)
        self.max_value_size = max_value_size

    @property
    def database_name(self) -> str:
        return self._database

    @property
    def table_name(self) -> str:
        return self._table

    def database(self, name: str) -> Self:
        """This store on the database ``name`` (and the same table name)."""
        view = copy.copy(self)
        view._database = _check_name("database", name)
        return view

    def table(self, name: str) -> Self:
        """This store on the table ``name`` of the same database."""
        view = copy.copy(self)
        view._table = _check_name("table", name)
        return view

    async def start(self) -> None:
        """Connect and start sweeping expired records; called again it does nothing."""

    async def stop(self) -> None:
        """Stop sweeping and close connections; called again it does nothing."""

    async def read(
        self,
        key: str,
        *,
        prefix: bool = False,
        suffix: bool = False,
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[Record]:
        """The live records matching ``key``, in key order.

        An exact read returns ``[record]`` or raises ``NotFound``. With ``prefix`` (or
        ``suffix``) ``key`` is the start (or end) of the keys wanted, and no match is ``[]``.
        """
        limit, offset = _check_page(limit, offset)
        if not prefix and not suffix:
            key = _check_key(key)
            record = await self._read_key(key, time.time())
            if record is None:
                raise NotFound(f"no record {key!r} in {self._database}/{self._table}", id=STORE_ID)
            return [record] if limit != 0 and offset == 0 else []
        _check_text("key", key)
        return await self._read_range(
            key if prefix else "", key if suffix else "", limit, offset, time.time()
        )

    async def write(
        self,
        record: Record | str,
        value: bytes | None = None,
        *,
        ttl: float | None = None,
        metadata: Mapping[str, str] | None = None,
        if_version: int | None = None,
        fence: Fence | tuple[str, int] | None = None,
    ) -> Record:
        """Store ``value`` under the key ``record``, or store a ``Record``; returns what was stored.

        Given a ``Record``, its value, metadata and ``expires_at`` are written unless ``ttl`` or
        ``metadata`` say otherwise; its ``version`` is not a condition unless passed as
        ``if_version``. Raises ``Conflict`` when ``if_version`` does not match, or when
        ``fence``'s token is below the highest one a fenced write for its lock name used.
        """
        now = time.time()
        if isinstance(record, Record):
            if value is not None:
                raise BadRequest("pass either a Record or a key and a value, not both", id=STORE_ID)
            key, value = record.key, record.value
            metadata = record.metadata if metadata is None else metadata
            expires_at = record.expires_at if ttl is None else _expiry(ttl, now)
            if expires_at is not None:
                if not _is_number(expires_at):
                    raise BadRequest(
                        f"expires_at must be Unix time in seconds, got {expires_at!r}", id=STORE_ID
                    )
                if expires_at <= now:
                    raise BadRequest(f"record {key!r} expired before it was written", id=STORE_ID)
        else:
            key = record
            if value is None:
                raise BadRequest(f"no value given for key {key!r}", id=STORE_ID)
            expires_at = _expiry(ttl, now)
        key = _check_key(key)
        value = self._check_value(key, value)
        stored_metadata = _check_metadata(metadata)
        if if_version is not None:
            _check_version(if_version)
        if fence is None:
            version = await self._write(key, value, stored_metadata, expires_at, if_version, now)
        else:
            version = await self._write_fenced(
                key, value, stored_metadata, expires_at, if_version, now, _check_fence(fence)
            )
        return Record(key, value, dict(stored_metadata), expires_at, version)

    async def delete(self, key: str, *, if_version: int | None = None) -> bool:
        """Remove the record at ``key``; ``False`` if there was no live record.

        With ``if_version`` the record must exist at that version, else ``Conflict``.
        """
        key = _check_key(key)
        if if_version is not None:
            _check_version(if_version)
            if if_version == ABSENT:
                raise BadRequest(
                    "if_version=ABSENT cannot delete: it expects no record", id=STORE_ID
                )
        return await self._delete(key, if_version, time.time())

    async def list(
        self,
        *,
        prefix: str = "",
        suffix: str = "",
        limit: int | None = None,
        offset: int = 0,
    ) -> builtins.list[str]:
        """The keys of live records that start with ``prefix`` and end with ``suffix``, sorted."""
        _check_text("prefix", prefix)
        _check_text("suffix", suffix)
        limit, offset = _check_page(limit, offset)
        return await self._list_keys(prefix, suffix, limit, offset, time.time())

    async def write_json(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        metadata: Mapping[str, str] | None = None,
        if_version: int | None = None,
        fence: Fence | tuple[str, int] | None = None,
    ) -> Record:
        """Store a pydantic model, or anything else JSON can carry, as JSON."""
        try:
            encoded = JSON.encode(value)
        except (TypeError, orjson.JSONEncodeError, PydanticSerializationError) as exc:
            raise BadRequest(
                f"value for key {key!r} cannot be stored as JSON: {exc}", id=STORE_ID
            ) from exc
        return await self.write(
            key, encoded, ttl=ttl, metadata=metadata, if_version=if_version, fence=fence
        )

    @overload
    async def read_json(self, key: str) -> Any: ...

    @overload
    async def read_json(self, key: str, type_: type[T]) -> T: ...

    async def read_json(self, key: str, type_: Any = None) -> Any:
        """The JSON value at ``key``, validated into ``type_`` (a pydantic model, ``list[int]``...)
        when given; ``pydantic.ValidationError`` says where a stored value does not fit."""
        [record] = await self.read(key)
        if type_ is None:
            return orjson.loads(record.value)
        return _message_type(type_).validate_json(record.value)

    async def sweep(self) -> int:
        """Delete expired records of every namespace now; returns how many went."""
        return await self._sweep(time.time())

    def _check_value(self, key: str, value: bytes) -> bytes:
        if isinstance(value, bytearray | memoryview):
            value = bytes(value)
        elif not isinstance(value, bytes):
            raise BadRequest(
                f"value for key {key!r} must be bytes, got {type(value).__name__}; "
                "use write_json for other values",
                id=STORE_ID,
            )
        if len(value) > self.max_value_size:
            raise PayloadTooLarge(
                f"value for key {key!r} is {len(value)} bytes; the limit is {self.max_value_size}",
                id=STORE_ID,
            )
        return value

    def _conflict(self, key: str, expected: int, found: int | None) -> Conflict:
        """The error for a lost compare-and-set; ``found`` is ``None`` when no record is live."""
        wanted = "no record" if expected == ABSENT else f"version {expected}"
        actual = "none" if found is None else f"version {found}"
        return Conflict(
            f"{self._database}/{self._table} key {key!r}: expected {wanted}, found {actual}",
            id=STORE_ID,
        )

    def _fenced_out(self, fence: Fence, highest: int | None) -> Conflict:
        """The error for a fenced write whose token is below the highest one used."""
        return Conflict(
            f"{self._database}/{self._table}: fencing token {fence.token} of lock "
            f"{fence.name!r} is stale; a write used token {highest}",
            id=STORE_ID,
        )

    async def _write_fenced(
        self,
        key: str,
        value: bytes,
        metadata: dict[str, str],
        expires_at: float | None,
        if_version: int | None,
        now: float,
        fence: Fence,
    ) -> int:
        """Like ``_write``, if ``fence`` holds; records its token in the same atomic step."""
        raise NotImplementedError(f"{type(self).__name__} has no fenced writes")

    # What a backend implements. Arguments are validated; ``now`` is Unix time in seconds and
    # a record whose ``expires_at`` is at or before it is gone.

    @abstractmethod
    async def _read_key(self, key: str, now: float) -> Record | None:
        """The live record at ``key``."""

    @abstractmethod
    async def _read_range(
        self, prefix: str, suffix: str, limit: int | None, offset: int, now: float
    ) -> builtins.list[Record]:
        """Live records whose keys start with ``prefix`` and end with ``suffix``, by key."""

    @abstractmethod
    async def _list_keys(
        self, prefix: str, suffix: str, limit: int | None, offset: int, now: float
    ) -> builtins.list[str]:
        """Like ``_read_range``, keys only."""

    @abstractmethod
    async def _write(
        self,
        key: str,
        value: bytes,
        metadata: dict[str, str],
        expires_at: float | None,
        if_version: int | None,
        now: float,
    ) -> int:
        """Store the record and return its new version, or raise ``self._conflict(...)``."""

    @abstractmethod
    async def _delete(self, key: str, if_version: int | None, now: float) -> bool:
        """Remove the record; ``if_version`` is ``None`` or positive."""

    @abstractmethod
    async def _sweep(self, now: float) -> int:
        """Delete expired records of every namespace."""

    def __repr__(self) -> str:
        namespace = f"database={self._database!r}, table={self._table!r}"
        return f"{type(self).__name__}({self.url!r}, {namespace})"


@lru_cache(maxsize=256)
def _message_type(type_: Any) -> MessageType:
    return MessageType(type_)


def _check_text(what: str, text: object) -> str:
    """Text that every engine stores and compares as UTF-8."""
    if not isinstance(text, str):
        raise BadRequest(f"store {what} must be a str, got {type(text).__name__}", id=STORE_ID)
    if "\x00" in text:
        raise BadRequest(f"store {what} {text!r} contains a NUL character", id=STORE_ID)
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise BadRequest(
            f"store {what} {text!r} is not valid Unicode: {exc.reason}", id=STORE_ID
        ) from exc
    return text


def _check_key(key: object) -> str:
    key = _check_text("key", key)
    if not key:
        raise BadRequest("store key must not be empty", id=STORE_ID)
    if len(key.encode()) > MAX_KEY_SIZE:
        raise BadRequest(
            f"store key {key[:32]!r}... is over {MAX_KEY_SIZE} bytes of UTF-8", id=STORE_ID
        )
    return key


def _check_name(what: str, name: str) -> str:
    _check_text(f"{what} name", name)
    if not name:
        raise BadRequest(f"store {what} name must not be empty", id=STORE_ID)
    if len(name.encode()) > MAX_NAME_SIZE:
        raise BadRequest(
            f"store {what} name {name[:32]!r}... is over {MAX_NAME_SIZE} bytes", id=STORE_ID
        )
    return name


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    if not metadata:
        return {}
    if not isinstance(metadata, Mapping):
        raise BadRequest(
            f"metadata must be a mapping of str to str, got {type(metadata).__name__}", id=STORE_ID
        )
    checked = {}
    for name, text in metadata.items():
        checked[_check_text("metadata key", name)] = _check_text(f"metadata {name!r}", text)
    if len(orjson.dumps(checked)) > MAX_METADATA_SIZE:
        raise PayloadTooLarge(f"metadata is over {MAX_METADATA_SIZE} bytes of JSON", id=STORE_ID)
    return checked


def _expiry(ttl: float | None, now: float) -> float | None:
    if ttl is None:
        return None
    if not _is_number(ttl):
        raise BadRequest(f"ttl must be a number of seconds, got {ttl!r}", id=STORE_ID)
    if ttl <= 0:
        raise BadRequest(f"ttl must be positive, got {ttl!r}", id=STORE_ID)
    return now + ttl


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_version(version: object) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise BadRequest(f"if_version must be an int >= 0, got {version!r}", id=STORE_ID)


def _check_fence(fence: object) -> Fence:
    if not isinstance(fence, tuple) or len(fence) != 2:
        raise BadRequest(f"fence must be a Fence(name, token), got {fence!r}", id=STORE_ID)
    name, token = fence
    if not _check_text("fence name", name):
        raise BadRequest("fence name must not be empty", id=STORE_ID)
    if isinstance(token, bool) or not isinstance(token, int) or token < 0:
        raise BadRequest(f"fencing token must be an int >= 0, got {token!r}", id=STORE_ID)
    return Fence(name, token)


def _check_page(limit: object, offset: object) -> tuple[int | None, int]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise BadRequest(f"limit must be an int >= 0 or None, got {limit!r}", id=STORE_ID)
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest(f"offset must be an int >= 0, got {offset!r}", id=STORE_ID)
    return limit, offset
