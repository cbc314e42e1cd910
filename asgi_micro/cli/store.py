"""``asgi-micro store``: read, write, delete and list records from a shell.

Values are text on the command line (``-`` reads bytes from standard input); ``--json`` prints
records as ``{"key", "value", "encoding", "metadata", "version", "expires_at"}`` where
``encoding`` is ``utf-8`` or ``base64``. Errors go to standard error with exit status 1 (2 for
bad usage).
"""

from __future__ import annotations

import asyncio
import base64
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from ..errors import MicroError
from ..plugins import MissingDependency
from ..store import DEFAULT_DATABASE, DEFAULT_TABLE, DEFAULT_URL, Record, Store, from_url
from .common import JsonOption, MetadataOption, console, errors, pairs, print_json, print_table

__all__ = ["app", "delete", "list_keys", "read", "write"]

T = TypeVar("T")

app = typer.Typer(
    help="Read and write the records of a store.", no_args_is_help=True, add_completion=False
)

StoreOption = Annotated[
    str,
    typer.Option(
        "--store",
        envvar="MICRO_STORE",
        help="Store URL: sqlite:///path.db, postgresql://user@host/db, memory://.",
    ),
]
DatabaseOption = Annotated[str, typer.Option("--database", help="Database namespace.")]
TableOption = Annotated[str, typer.Option("--table", help="Table namespace.")]
LimitOption = Annotated[int | None, typer.Option("--limit", min=0, help="At most this many.")]
OffsetOption = Annotated[int, typer.Option("--offset", min=0, help="Skip this many first.")]
IfVersionOption = Annotated[
    int | None,
    typer.Option("--if-version", min=0, help="Only if the record is at this version (0: absent)."),
]


@app.command()
def read(
    key: Annotated[str, typer.Argument(help="The key, or with --prefix/--suffix part of it.")],
    prefix: Annotated[bool, typer.Option("--prefix", help="KEY starts the keys wanted.")] = False,
    suffix: Annotated[bool, typer.Option("--suffix", help="KEY ends the keys wanted.")] = False,
    limit: LimitOption = None,
    offset: OffsetOption = 0,
    store: StoreOption = DEFAULT_URL,
    database: DatabaseOption = DEFAULT_DATABASE,
    table: TableOption = DEFAULT_TABLE,
    as_json: JsonOption = False,
) -> None:
    """Print the record at KEY, or the records matching it."""
    records = _with_store(
        store,
        database,
        table,
        as_json,
        lambda s: s.read(key, prefix=prefix, suffix=suffix, limit=limit, offset=offset),
    )
    if as_json:
        print_json([_record_json(record) for record in records])
        return
    if not records:
        console.print("no records found")
        return
    rows = Table("key", "value", "version", "expires in", "metadata")
    for record in records:
        expires = "" if record.ttl is None else f"{record.ttl:.1f}s"
        metadata = ", ".join(f"{name}={text}" for name, text in sorted(record.metadata.items()))
        cells = (record.key, _show(record.value), str(record.version), expires, metadata)
        rows.add_row(*(Text(cell) for cell in cells))
    print_table(rows)


@app.command()
def write(
    key: Annotated[str, typer.Argument(help="The key.")],
    value: Annotated[str, typer.Argument(help="The value as text; - reads bytes from stdin.")],
    ttl: Annotated[
        float | None, typer.Option("--ttl", help="Seconds until the record expires.")
    ] = None,
    metadata: MetadataOption = None,
    if_version: IfVersionOption = None,
    store: StoreOption = DEFAULT_URL,
    database: DatabaseOption = DEFAULT_DATABASE,
    table: TableOption = DEFAULT_TABLE,
    as_json: JsonOption = False,
) -> None:
    """Store VALUE under KEY."""
    data = sys.stdin.buffer.read() if value == "-" else value.encode()
    extra = pairs(metadata or [])
    record = _with_store(
        store,
        database,
        table,
        as_json,
        lambda s: s.write(key, data, ttl=ttl, metadata=extra, if_version=if_version),
    )
    if as_json:
        print_json(_record_json(record))
    else:
        console.print(f"wrote {record.key!r} at version {record.version}")


@app.command()
def delete(
    key: Annotated[str, typer.Argument(help="The key.")],
    if_version: IfVersionOption = None,
    store: StoreOption = DEFAULT_URL,
    database: DatabaseOption = DEFAULT_DATABASE,
    table: TableOption = DEFAULT_TABLE,
    as_json: JsonOption = False,
) -> None:
    """Delete the record at KEY; deleting a missing key is not an error."""
    deleted = _with_store(
        store, database, table, as_json, lambda s: s.delete(key, if_version=if_version)
    )
    if as_json:
        print_json({"key": key, "deleted": deleted})
    else:
        console.print(f"deleted {key!r}" if deleted else f"no record {key!r}")


@app.command("list")
def list_keys(
    prefix: Annotated[str, typer.Option("--prefix", help="Keys that start with this.")] = "",
    suffix: Annotated[str, typer.Option("--suffix", help="Keys that end with this.")] = "",
    limit: LimitOption = None,
    offset: OffsetOption = 0,
    store: StoreOption = DEFAULT_URL,
    database: DatabaseOption = DEFAULT_DATABASE,
    table: TableOption = DEFAULT_TABLE,
    as_json: JsonOption = False,
) -> None:
    """Print the keys of live records, sorted."""
    keys = _with_store(
        store,
        database,
        table,
        as_json,
        lambda s: s.list(prefix=prefix, suffix=suffix, limit=limit, offset=offset),
    )
    if as_json:
        print_json(keys)
    else:
        for key in keys:
            console.print(key, markup=False, highlight=False)


def _with_store(
    url: str, database: str, table: str, as_json: bool, action: Callable[[Store], Awaitable[T]]
) -> T:
    async def go() -> T:
        async with from_url(url).database(database).table(table) as store:
            return await action(store)

    try:
        return asyncio.run(go())
    except (ValueError, MissingDependency) as exc:
        errors.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    except MicroError as exc:
        if as_json:
            sys.stderr.write(exc.to_json().decode() + "\n")
        else:
            errors.print(str(exc), markup=False)
        raise typer.Exit(1) from None


def _record_json(record: Record) -> dict[str, Any]:
    try:
        value, encoding = record.value.decode(), "utf-8"
    except UnicodeDecodeError:
        value, encoding = base64.b64encode(record.value).decode(), "base64"
    return {
        "key": record.key,
        "value": value,
        "encoding": encoding,
        "metadata": record.metadata,
        "version": record.version,
        "expires_at": record.expires_at,
    }


def _show(value: bytes) -> str:
    try:
        text = value.decode()
    except UnicodeDecodeError:
        return f"<{len(value)} bytes>"
    return text if len(text) <= 60 else f"{text[:57]}..."
