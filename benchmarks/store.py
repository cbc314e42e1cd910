"""Store operations per second against the raw drivers running the same SQL, in one run.

    python benchmarks/store.py [--rounds 25] [--seconds 0.15] [--ops 20000]
                               [--engines sqlite postgresql] [--postgres URL]

For each engine a ``SQLStore`` and a raw driver connection (aiosqlite with the store's PRAGMAs,
asyncpg) work side by side on the same table, each in its own namespace of 1,000 records of
100 bytes. Every operation is awaited one after another (concurrency 1, where per-call
overhead shows most):

- ``write``: an unconditional upsert (``store.write(key, value)``; raw: ``Statements.upsert``);
- ``read``: one record by key (``store.read(key)``; raw: ``Statements.read_key``);
- ``prefix``: ten records by prefix (``store.read(prefix, prefix=True)``; raw: the same range
  statement).

The raw side runs the SQL text the store runs, taken from ``store.statements``, so the ratio is
the cost of the store's layer alone (validation, pooling, building ``Record``s). Each round
takes the (engine, operation) pairs in shuffled order and runs the store and the raw side back
to back, in random order, each for ``--seconds`` (or ``--ops`` operations); the ratio is the
median over rounds of each pair's store/raw ops/s, so drift between rounds cancels out. The
other figures are medians over rounds; CPU is this process's user+system time (the aiosqlite
threads included) per operation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from asgi_micro.store.sql import SQLStore

RECORDS = 1000
VALUE = bytes(range(100))
KEYS = [f"bench/{i:04d}" for i in range(RECORDS)]
PREFIXES = [f"bench/{i:03d}" for i in range(RECORDS // 10)]  # ten records each
WARMUP_OPS = 50

Op = Callable[[int], Awaitable[None]]


@dataclass
class Result:
    ops_per_s: list[float] = field(default_factory=list)
    cpu_us: list[float] = field(default_factory=list)


async def measure(op: Op, ops: int, seconds: float) -> tuple[float, float]:
    cpu, start = time.process_time(), time.perf_counter()
    deadline = start + seconds
    done = 0
    while done < ops:
        await op(done)
        done += 1
        if done % 25 == 0 and time.perf_counter() > deadline:
            break
    elapsed = time.perf_counter() - start
    return done / elapsed, (time.process_time() - cpu) / done * 1e6


class Engine:
    """A store and a raw connection on one database, and the operations to compare."""

    def __init__(
        self, name: str, store: SQLStore, raw: Any, fetch: Callable[..., Awaitable[list[Any]]]
    ):
        self.name, self.store, self.raw, self.fetch = name, store.table("bench"), raw, fetch
        self.statements = store.statements

    def ops(self) -> dict[tuple[str, str], Op]:
        store, raw, fetch, statements = self.store, self.raw, self.fetch, self.statements

        async def store_write(i: int) -> None:
            await store.write(KEYS[i % RECORDS], VALUE)

        async def raw_write(i: int) -> None:
            await fetch(
                raw,
                statements.upsert,
                ("raw", "bench", KEYS[i % RECORDS], VALUE, None, None, time.time()),
            )

        async def store_read(i: int) -> None:
            [record] = await store.read(KEYS[(i * 7) % RECORDS])
            assert record.value == VALUE

        async def raw_read(i: int) -> None:
            [row] = await fetch(
                raw, statements.read_key, ("raw", "bench", KEYS[(i * 7) % RECORDS], time.time())
            )
            assert row[0] == VALUE

        async def store_prefix(i: int) -> None:
            records = await store.read(PREFIXES[i % len(PREFIXES)], prefix=True)
            assert len(records) == 10

        async def raw_prefix(i: int) -> None:
            sql, args = statements.range(
                keys_only=False,
                database="raw",
                table="bench",
                prefix=PREFIXES[i % len(PREFIXES)],
                suffix="",
                limit=None,
                offset=0,
                now=time.time(),
            )
            rows = await fetch(raw, sql, args)
            assert len(rows) == 10

        return {
            ("write", "store"): store_write,
            ("write", "raw"): raw_write,
            ("read", "store"): store_read,
            ("read", "raw"): raw_read,
            ("prefix", "store"): store_prefix,
            ("prefix", "raw"): raw_prefix,
        }


async def sqlite_engine(directory: str) -> tuple[Engine, Callable[[], Awaitable[None]]]:
    import aiosqlite

    path = os.path.join(directory, "store.db")
    store = SQLStore.from_url(f"sqlite:///{path}")
    await store.start()
    raw = await aiosqlite.connect(path, isolation_level=None)
    for pragma in ("busy_timeout = 5000", "synchronous = FULL"):
        await raw.execute_fetchall(f"PRAGMA {pragma}")

    async def fetch(connection: Any, sql: str, args: Any) -> list[Any]:
        return list(await connection.execute_fetchall(sql, args))

    async def close() -> None:
        await raw.close()
        await store.stop()

    return Engine("sqlite", store, raw, fetch), close


async def postgres_engine(url: str) -> tuple[Engine, Callable[[], Awaitable[None]]]:
    import asyncpg

    table = f"bench_{uuid.uuid4().hex[:12]}"
    store = SQLStore.from_url(url, sql_table=table)
    await store.start()
    raw = await asyncpg.connect(url)

    async def fetch(connection: Any, sql: str, args: Any) -> list[Any]:
        return list(await connection.fetch(sql, *args))

    async def close() -> None:
        await raw.execute(f"DROP TABLE IF EXISTS {table}")
        await raw.close()
        await store.stop()

    return Engine("postgresql", store, raw, fetch), close


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="store-bench-") as directory:
        engines: list[tuple[Engine, Callable[[], Awaitable[None]]]] = []
        try:
            if "sqlite" in args.engines:
                engines.append(await sqlite_engine(directory))
            if "postgresql" in args.engines:
                engines.append(await postgres_engine(args.postgres))
            results: dict[tuple[str, str, str], Result] = {}
            ratios: dict[tuple[str, str], list[float]] = {}
            pairs: list[tuple[Engine, str, dict[str, Op]]] = []
            for engine, _ in engines:
                ops = engine.ops()
                for i in range(RECORDS):  # both namespaces hold every record before reads start
                    await ops[("write", "store")](i)
                    await ops[("write", "raw")](i)
                for fn in ops.values():
                    for i in range(WARMUP_OPS):
                        await fn(i)
                for op in ("write", "read", "prefix"):
                    pairs.append((engine, op, {side: ops[(op, side)] for side in ("store", "raw")}))
            for round_ in range(args.rounds):
                random.shuffle(pairs)
                for engine, op, sides in pairs:
                    # store and raw back to back, in either order: drift hits both alike
                    rates = {}
                    for side in random.sample(list(sides), 2):
                        rate, cpu = await measure(sides[side], args.ops, args.seconds)
                        result = results.setdefault((engine.name, op, side), Result())
                        result.ops_per_s.append(rate)
                        result.cpu_us.append(cpu)
                        rates[side] = rate
                    ratios.setdefault((engine.name, op), []).append(rates["store"] / rates["raw"])
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for _, close in engines:
                await close()

    print(
        f"\n{'engine':<11} {'op':<7} {'store ops/s':>12} {'raw ops/s':>10} {'store us CPU':>13} {'raw us CPU':>11} {'ratio':>6}"
    )
    for (name, op), values in sorted(ratios.items()):
        store, raw = results[(name, op, "store")], results[(name, op, "raw")]
        print(
            f"{name:<11} {op:<7} {statistics.median(store.ops_per_s):>12,.0f} {statistics.median(raw.ops_per_s):>10,.0f}"
            f" {statistics.median(store.cpu_us):>13.1f} {statistics.median(raw.cpu_us):>11.1f}"
            f" {statistics.median(values):>5.2f}x"
        )
    print(
        f"\nratio = store ops/s / raw driver ops/s, median over {args.rounds} interleaved rounds (target >= 0.7x, goal 0.9x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--ops", type=int, default=20_000, help="operations per batch at most")
    parser.add_argument("--seconds", type=float, default=0.15, help="seconds per batch at most")
    parser.add_argument(
        "--engines", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 50 or not 1 <= args.ops <= 100_000 or not 0 < args.seconds <= 10:
        parser.error("keep the run bounded: rounds 1-50, ops 1-100000, seconds up to 10")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
