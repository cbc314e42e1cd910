"""Uncontended lock acquire + release per second through asgi-micro against the raw drivers.

    python benchmarks/sync.py [--rounds 15] [--seconds 0.3] [--engines sqlite postgresql redis]

Each engine's ``Sync`` takes and releases one lock over and over (``async with
sync.lock(name)``: one acquire step, a renewer task started and cancelled, one release step),
beside a raw client doing the same steps on its own lock name:

- ``sqlite``/``postgresql``: the lock table's statements (``StoreSync.statements``) on an
  aiosqlite connection (the store's PRAGMAs) or an asyncpg connection;
- ``redis``: redis-py running the same acquire (INCR + SET PX) and release scripts, and, as
  ``redis-setnx``, the textbook lock with no fencing token: ``SET NX PX`` + the Lua release;
- ``etcd``: aetcd running the textbook etcd lock (grant a lease, a transaction that puts the
  key only if it does not exist, revoke the lease), against an etcd of the run's own (Debian's
  ``etcd-server``) unless ``--etcd`` names one.

Each round runs the (engine, side) pairs in shuffled order for ``--seconds`` each; the ratio
is the median over rounds of asgi-micro/raw ops/s, so drift between rounds cancels out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg
import redis.asyncio
from asgi_micro_redis.sync import ACQUIRE, RELEASE, RedisSync

from asgi_micro.store.sql import SQLStore
from asgi_micro.sync import Sync
from asgi_micro.sync.store import StoreSync

Op = Callable[[], Awaitable[None]]
ROOT = str(Path(__file__).resolve().parents[1])  # for tests.etcd
WARMUP_OPS = 50


async def measure(op: Op, seconds: float) -> float:
    for _ in range(WARMUP_OPS):
        await op()
    start = time.perf_counter()
    deadline, done = start + seconds, 0
    while True:
        await op()
        done += 1
        if done % 10 == 0 and time.perf_counter() > deadline:
            return done / (time.perf_counter() - start)


def through(sync: Sync) -> Op:
    name = f"bench/{uuid.uuid4().hex[:8]}"

    async def op() -> None:
        async with sync.lock(name, ttl=10):
            pass

    return op


async def sql_ops(url: str, raw: Callable[[str, tuple[Any, ...]], Awaitable[Any]],
                  sync: StoreSync) -> dict[str, Op]:  # fmt: skip
    statements = sync.statements
    name, owner = f"bench/{uuid.uuid4().hex[:8]}", uuid.uuid4().hex

    async def raw_op() -> None:
        [(token,)] = await raw(statements.acquire, statements.args(name, owner, 10.0))
        await raw(statements.release, (name, owner, token))

    return {"asgi-micro": through(sync), "raw": raw_op}


async def etcd_ops(
    url: str, servers: contextlib.ExitStack, cleanup: list[Callable[[], Awaitable[object]]]
) -> dict[str, Op]:
    import aetcd
    from asgi_micro_etcd.sync import EtcdSync

    if not url:
        sys.path.insert(0, ROOT)
        from tests.etcd import etcd_server

        url = servers.enter_context(etcd_server()).replace("http://", "etcd://")
    prefix = f"/bench-{uuid.uuid4().hex[:8]}/"
    sync = EtcdSync.from_url(f"{url}?prefix={prefix}sync/")
    await sync.start()
    cleanup.append(sync.stop)
    host, _, port = url.removeprefix("etcd://").partition(":")
    client = aetcd.Client(host=host, port=int(port))
    await client.connect()
    cleanup.insert(0, client.close)
    key, owner = f"{prefix}raw".encode(), uuid.uuid4().hex.encode()
    ops = aetcd.Transactions()

    async def textbook() -> None:
        lease = await client.lease(10)
        taken, _ = await client.transaction(
            compare=[ops.create(key) == 0],
            success=[ops.put(key, owner, lease=lease)],
            failure=[],
        )
        assert taken
        await client.revoke_lease(lease.id)

    return {"asgi-micro": through(sync), "raw": textbook}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql", "redis", "etcd"])
    parser.add_argument("--etcd", default="", help="etcd://host:port (default: start one)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    engines: dict[str, dict[str, Op]] = {}
    cleanup: list[Callable[[], Awaitable[object]]] = []
    directory = tempfile.TemporaryDirectory(prefix="asgi-micro-bench-sync-")
    servers = contextlib.ExitStack()
    table = f"bench_sync_{uuid.uuid4().hex[:8]}"
    try:
        if "sqlite" in args.engines:
            path = Path(directory.name) / "sync.db"
            sync = StoreSync(SQLStore.from_url(f"sqlite:///{path}"), owns_store=True)
            await sync.start()
            cleanup.append(sync.stop)
            connection = await aiosqlite.connect(path, isolation_level=None)
            for pragma in ("busy_timeout = 5000", "synchronous = FULL", "journal_mode = WAL"):
                await connection.execute(f"PRAGMA {pragma}")
            cleanup.append(connection.close)
            engines["sqlite"] = await sql_ops(
                "sqlite",
                lambda sql, a: connection.execute_fetchall(sql, a),
                sync,
            )
        if "postgresql" in args.engines:
            sync = StoreSync(SQLStore.from_url(args.postgres, sql_table=table), owns_store=True)
            await sync.start()
            cleanup.append(sync.stop)
            pg = await asyncpg.connect(args.postgres)

            async def drop() -> None:
                for suffix in ("", "_lock"):
                    await pg.execute(f"DROP TABLE IF EXISTS {table}{suffix}")
                await pg.close()

            cleanup.insert(0, drop)
            engines["postgresql"] = await sql_ops(
                "postgresql",
                lambda sql, a: pg.fetch(sql, *a),
                sync,
            )
        if "redis" in args.engines:
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            redis_sync = RedisSync.from_url(f"{args.redis}?prefix={prefix}")
            await redis_sync.start()
            cleanup.append(redis_sync.stop)
            client = redis.asyncio.Redis.from_url(args.redis)

            async def forget() -> None:
                keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
                if keys:
                    await client.delete(*keys)
                await client.aclose()

            cleanup.insert(0, forget)
            acquire, release = client.register_script(ACQUIRE), client.register_script(RELEASE)
            key, owner = f"{prefix}:raw", uuid.uuid4().hex

            async def scripts() -> None:
                token = await acquire(
                    keys=[key, f"{key}:token", f"{key}:next"], args=[owner, 10_000]
                )
                await release(keys=[key], args=[f"{owner}:{token}"])

            async def set_nx() -> None:
                assert await client.set(key, owner, nx=True, px=10_000)
                await release(keys=[key], args=[owner])

            engines["redis"] = {"asgi-micro": through(redis_sync), "raw": scripts}
            engines["redis-setnx"] = {"asgi-micro": through(redis_sync), "raw": set_nx}
        if "etcd" in args.engines:
            engines["etcd"] = await etcd_ops(args.etcd, servers, cleanup)

        rates: dict[tuple[str, str], list[float]] = {}
        ratios: dict[str, list[float]] = {engine: [] for engine in engines}
        for _ in range(args.rounds):
            order = list(engines)
            random.shuffle(order)
            for engine in order:
                sides = list(engines[engine])
                random.shuffle(sides)
                measured = {
                    side: await measure(engines[engine][side], args.seconds) for side in sides
                }
                for side, rate in measured.items():
                    rates.setdefault((engine, side), []).append(rate)
                ratios[engine].append(measured["asgi-micro"] / measured["raw"])
        print(f"uncontended acquire+release, median of {args.rounds} rounds x {args.seconds}s")
        print(f"{'engine':<12} {'asgi-micro/s':>13} {'raw/s':>10} {'ratio':>7}")
        for engine in engines:
            ours = statistics.median(rates[(engine, "asgi-micro")])
            raw = statistics.median(rates[(engine, "raw")])
            print(
                f"{engine:<12} {ours:>13.0f} {raw:>10.0f} {statistics.median(ratios[engine]):>7.2f}"
            )
    finally:
        for step in cleanup:
            await step()
        servers.close()
        directory.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
