"""The server store: PostgreSQL with pgvector, for several API and worker processes.

The schema mirrors the SQLite store: memories (with their embedding and a
generated `tsvector`), an append-only event log, messages, jobs and API keys,
and `write` applies a whole batch in one transaction.

Vector search is exact. pgvector's HNSW index answers "the 10 nearest
vectors in the table", and a per-user filter is applied afterwards, so with
many users it returns far fewer than 10 of the user's rows (recall 0.5
measured at 1M, 0.69 with iterative scans). Instead a partial btree on
(tenant, user) over current memories carries the embedding, so reading a
user's vectors is an index-only range scan: recall 1.0, at a cost that grows
with the user and not with the total size.

A user's search does not scan them each time, though: like the SQLite store,
each process caches a user's vectors and keyword postings in numpy, checked
against a per-user version row that every write bumps in its transaction
(vector_index.py, keyword_index.py). At 10k memories per user that turned
a 20 ms vector scan and an 18 ms (p95 47 ms) BM25 query into ~1-2 ms each.
Scopes that span users (an agent or a run without a user) search in SQL.

Concurrency: semantic dedup takes a transaction-scoped advisory lock per
(tenant, user, agent) before it looks for a duplicate, so two processes
adding the same fact end with one memory; workers claim jobs with
`FOR UPDATE SKIP LOCKED`. Every psycopg error surfaces as `StoreError`.

The pool size comes from the URL: `postgresql://u:p@host/db?pool_max=10`
(also `pool_min`, `pool_timeout` in seconds); the rest of the URL is handed
to libpq unchanged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import psycopg
from psycopg.adapt import Dumper
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import Format
from psycopg_pool import ConnectionPool

from ..async_bridge import bridged
from ..errors import ConfigError, StoreError
from ..filters import And, Condition, Filter, Not, Or
from ..models import ChatMessage, HistoryEntry, MemoryRecord, PurgeCounts, Scope
from ..timeutil import from_micros
from . import _rows, keyword_index
from ._rows import EVENT_FIELDS, MEMORY_FIELDS, MESSAGE_FIELDS
from .base import ApiKey, Candidate, Job, NewMemory, Origin, Store, Vector, WriteBatch, WriteOutcome
from .keyword_index import UserPostings
from .postgres_pool import BridgedPool, Connection, Cursor, Pool
from .postgres_schema import MAX_KEY_BYTES, MIGRATION_LOCK, MIGRATIONS, SchemaContext
from .vector_index import (
    DEFAULT_CACHE_BYTES,
    NO_EXPIRY,
    Partition,
    VectorCache,
    current_partition,
    facet_columns,
    facets_blob,
    stored_scores,
    to_blob,
    top_k,
)

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10
#: Workers LISTEN on this channel; a transaction that queues a job NOTIFYs it.
JOB_CHANNEL = "retain_jobs"
#: How often a listener looks up from waiting to see whether it should stop.
LISTEN_CHECK_SECONDS = 1.0
#: Per-connection settings. JIT compiles plans for "expensive" queries; a user's KNN sort crosses
#: that threshold and JIT then adds tens of milliseconds to a query that takes two.
SESSION_SETUP = "SET jit = off"
#: Rows by id: the unique id index, then the tenant check. Written plainly (`tenant_id = %s AND id =
#: ANY(%s)`), a table without fresh statistics (right after a bulk load) gets a plan that also
#: bitmap-scans the whole tenant (8-80 ms at 40k rows instead of 0.1).
_BY_ID = "WITH hit AS MATERIALIZED (SELECT * FROM {table} WHERE id = ANY(%s::text[]))"
POOL_OPTIONS = {"pool_min": 1, "pool_max": 10, "pool_timeout": 30}

_MEMORY_COLUMNS = (
    "m.id, m.text, m.category, m.metadata, m.user_id, m.agent_id, m.run_id, m.lineage_id, m.hash, m.created_at, "
    "m.updated_at, m.valid_from, m.valid_to, m.superseded_by, m.source_message_ids, m.access_count, "
    "m.last_accessed_at, m.expires_at"
)
_MESSAGE_COLUMNS = "m.id, m.role, m.content, m.name, m.user_id, m.agent_id, m.run_id, m.metadata, m.created_at"
_JOB_COLUMNS = (
    "id, tenant_id, user_id, agent_id, run_id, kind, payload, status, attempts, max_attempts, run_after, "
    "last_error, result, created_at, updated_at"
)
_KEY_COLUMNS = "id, tenant_id, name, prefix, admin, created_at, revoked_at"
_INSERT_MESSAGE = (
    "INSERT INTO messages (id, tenant_id, user_id, agent_id, run_id, role, name, content, metadata, created_at) "
    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)


def _insert(table: str, fields: Sequence[str], extra: Sequence[str] = (), suffix: str = "") -> str:
    names = ["tenant_id", *fields, *extra]
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(['%s'] * len(names))}){suffix}"


_INSERT_MEMORY = _insert("memories", MEMORY_FIELDS, ["embedding", "facets"])
_INSERT_EVENT = _insert("memory_events", EVENT_FIELDS)
_IMPORT_MESSAGE = _insert("messages", MESSAGE_FIELDS, suffix=" ON CONFLICT (id) DO NOTHING")

#: Query terms scored per keyword search, at most (as many as SQLite's store takes).
MAX_QUERY_TERMS = 64

#: How many of the most recently used cached partitions `vectors` looks through before asking SQL.
RECENT_PARTITIONS = 8

#: A user's version and the version of its last change that was not only additions (see
#: vector_index.py); (0, 0) before the first write. Takes (tenant, user) twice.
_VERSION_SQL = (
    "coalesce((SELECT version FROM partition_versions WHERE tenant_id = %s AND user_id = %s), 0), "
    "coalesce((SELECT reset FROM partition_versions WHERE tenant_id = %s AND user_id = %s), 0)"
)
#: The (id, valid_to) of each row a cached partition of each kind holds, as JSON. Takes (tenant, user).
_MEMBERS_SQL = {
    "vectors": "SELECT json_agg(json_build_array(m.id, NULL)) FROM memories m "
    "WHERE m.tenant_id = %s AND m.user_id = %s AND m.valid_to IS NULL AND m.seq <= %s",
    "postings": "SELECT json_agg(json_build_array(m.id, m.valid_to)) FROM memories m "
    "WHERE m.tenant_id = %s AND m.user_id = %s AND m.seq <= %s",
}
#: The versions, the user's highest `seq` (to read only later rows next time) and the log of the memories
#: ended since the last reset (postgres_schema `_m005`). Takes (tenant, user) 4x.
_VERSIONS_AND_SEQ = (
    f"SELECT {_VERSION_SQL}, (SELECT max(seq) FROM memories WHERE tenant_id = %s AND user_id = %s), "
    "(SELECT ended FROM partition_versions WHERE tenant_id = %s AND user_id = %s)"
)
#: Columns `_VERSIONS_AND_SEQ` puts before a partition's rows.
_HEAD = 4
#: Entries a user's log of ended memories holds at most; a write that would pass it marks a reset.
ENDED_LOG_MAX = 256
#: What a cached partition of each kind is read from, in one statement (one snapshot): the versions and
#: `seq`, then the loader's columns of each of the user's rows (`{versions}`, then (tenant, user)).
_LOAD_SQL = {
    # The user's current memories with their vectors and facets: memories_current_vectors carries the
    # vectors (an index-only scan of it measured 143 ms at 10k per user, against 319 ms reading the heap and
    # the TOASTed vectors; 65 ms with binary results, which the loads ask for), but the facets (migration
    # 6) are read from the rows, so the scan visits the heap too.
    "vectors": "m.id, m.expires_at, vector_send(m.embedding), m.facets FROM ({versions}) v "
    "LEFT JOIN memories m ON m.tenant_id = %s AND m.user_id = %s AND m.valid_to IS NULL",
    # Every version of the user's memories (N in BM25 counts them all) with lexemes and their counts,
    # the metadata role and name `origins` reads, and the seq and category `adjacent` reads.
    "postings": "m.id, m.agent_id, m.run_id, m.valid_from, m.valid_to, m.expires_at, "
    "(SELECT array_agg(t.lexeme) FROM unnest(m.terms) t), "
    "(SELECT array_agg(coalesce(array_length(t.positions, 1), 1)) FROM unnest(m.terms) t), "
    "CASE jsonb_typeof(m.metadata->'role') WHEN 'string' THEN m.metadata->>'role' END, "
    "CASE jsonb_typeof(m.metadata->'name') WHEN 'string' THEN m.metadata->>'name' END, m.seq, m.category "
    "FROM ({versions}) v LEFT JOIN memories m ON m.tenant_id = %s AND m.user_id = %s",
}


def _tsquery_literal(lexeme: str) -> str:
    """One lexeme as tsquery text, matched as is (no second stemming): quotes and backslashes doubled."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"


def _bm25_sql(terms: int, match_sql: str, scope_sql: str, filter_sql: str) -> str:
    """Okapi BM25 (k1 = 1.2, b = 0.75) over the memories in scope that contain any query term.

    Document frequencies are counted over the matches themselves (every memory in scope that holds
    a term matches), N is the number of memory versions in scope, and document length is the number
    of distinct lexemes. Term frequencies are recovered from `ts_rank` of the single term, which for
    an unweighted term occurring n times is 0.1 * H(n) / 1.6449 with H(n) = 1 + 1/4 + ... + 1/n^2;
    inverting H(n) ~ pi^2/6 - 1/(n + 0.5) gives n to within 0.05. That costs far less than unnesting
    every matching tsvector to count its positions (measured: 40 ms of a 120 ms query).
    """
    ratio = "ts_rank(m.terms, %s::tsquery, 0)::float8 / 0.06079271"
    tf = ", ".join(
        f"CASE WHEN m.terms @@ %s::tsquery THEN 1 / (1.6449341 - {ratio}) - 0.5 ELSE 0 END AS tf{i}"
        for i in range(terms)
    )
    df = ", ".join(f"count(*) FILTER (WHERE tf{i} > 0) OVER () AS df{i}" for i in range(terms))
    score = " + ".join(
        f"ln(1 + (t.n - df{i} + 0.5) / (df{i} + 0.5)) * tf{i} * 2.2 / (tf{i} + c.norm)" for i in range(terms)
    )
    # `total` is materialised: the planner underestimates the matches and would otherwise recount N
    # once per matching memory (measured: 61 ms instead of 5 for a user with 1,000 memories).
    return (
        f"WITH total AS MATERIALIZED (SELECT count(*)::float8 AS n FROM memories m WHERE {scope_sql}), "
        f"matched AS (SELECT m.id, length(m.terms)::float8 AS dl, {tf} FROM memories m "
        f"WHERE {match_sql} AND {filter_sql}), "
        f"counted AS (SELECT matched.*, {df}, 1.2 * (0.25 + 0.75 * dl / avg(dl) OVER ()) AS norm FROM matched) "
        f"SELECT c.id, {score} AS score FROM counted c, total t ORDER BY score DESC, c.id LIMIT %s"
    )


class _VectorDumper(Dumper):
    """numpy float32 vectors as pgvector's binary format: dimensions, a spare int16, big-endian floats."""

    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        v = np.asarray(obj, dtype=">f4")
        return struct.pack(">HH", v.shape[0], 0) + v.tobytes()


def _from_send(data: bytes) -> Vector:
    """A vector from `vector_send(embedding)`."""
    return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)


def _unit(vector: Vector) -> Vector:
    return np.frombuffer(to_blob(vector), dtype=np.float32)


def display_dsn(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<unparseable PostgreSQL DSN>"
    user = params.get("user")
    host = params.get("host") or "localhost"
    port = params.get("port")
    where = f"{host}:{port}" if port else str(host)
    return f"postgresql://{f'{user}@' if user else ''}{where}/{params.get('dbname') or ''}"


def split_pool_options(url: str) -> tuple[str, dict[str, float]]:
    """Take `pool_min`, `pool_max` and `pool_timeout` out of a URL's query string."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    options: dict[str, float] = dict(POOL_OPTIONS)
    rest = []
    for key, value in query:
        if key in POOL_OPTIONS:
            try:
                options[key] = float(value)
            except ValueError:
                raise ConfigError(f"{key}={value!r} in RETAIN_STORE is not a number.") from None
            if options[key] <= 0:
                raise ConfigError(f"{key} in RETAIN_STORE must be positive, got {value!r}.")
        else:
            rest.append((key, value))
    if options["pool_min"] > options["pool_max"]:
        raise ConfigError("pool_min in RETAIN_STORE is larger than pool_max.")
    return urlunsplit(parts._replace(query=urlencode(rest))), options


class PostgresStore(Store):
    def __init__(
        self,
        dsn: str,
        *,
        dimensions: int,
        embedder_id: str,
        pool_min: int = 1,
        pool_max: int = 10,
        pool_timeout: float = 30.0,
        vector_cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self._vectors = VectorCache(vector_cache_bytes)
        # The partitions the current `snapshot` has read, by cache name (per thread and per greenlet:
        # bridged calls share a thread).
        self._snapshot: ContextVar[dict[str, Partition] | None] = ContextVar(f"snapshot-{id(self)}", default=None)
        self.dimensions = dimensions
        self._embedder_id = embedder_id
        self._dsn = dsn
        self.display = display_dsn(dsn)
        self._closed = False
        self._vector_oid = 0
        self._migrate()
        self._pool: ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = ConnectionPool(
            dsn,
            min_size=pool_min,
            max_size=pool_max,
            timeout=pool_timeout,
            open=False,
            configure=self._configure,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_SECONDS, "autocommit": True},
            name="retain",
        )
        try:
            self._pool.open(wait=True, timeout=pool_timeout)
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"Cannot connect to PostgreSQL at {self.display}: {exc}") from exc
        self._async_pool = BridgedPool(
            dsn,
            min_size=pool_min,
            max_size=pool_max,
            timeout=pool_timeout,
            connect_timeout=CONNECT_TIMEOUT_SECONDS,
            configure=self._configure_async,
        )

    #: `AsyncMemory` runs this store's I/O natively async (on `_async_pool`), not in threads.
    native_async = True

    @classmethod
    def from_url(
        cls, url: str, *, dimensions: int, embedder_id: str, vector_cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> PostgresStore:
        dsn, options = split_pool_options(url)
        return cls(
            dsn,
            dimensions=dimensions,
            embedder_id=embedder_id,
            vector_cache_bytes=vector_cache_bytes,
            pool_min=int(options["pool_min"]),
            pool_max=int(options["pool_max"]),
            pool_timeout=options["pool_timeout"],
        )

    # -- connections and transactions ------------------------------------------------

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        conn.adapters.register_dumper(np.ndarray, self._vector_dumper())
        conn.execute(SESSION_SETUP)

    async def _configure_async(self, conn: psycopg.AsyncConnection[Any]) -> None:
        conn.adapters.register_dumper(np.ndarray, self._vector_dumper())
        await conn.execute(SESSION_SETUP)

    def _vector_dumper(self) -> type[Dumper]:
        return type("VectorDumper", (_VectorDumper,), {"oid": self._vector_oid})

    def _connections(self) -> Pool:
        """The async pool for bridged callers (`AsyncMemory`), the sync pool for everyone else."""
        return self._async_pool if bridged() else self._pool

    def _connect_error(self, exc: BaseException) -> StoreError:
        return StoreError(
            f"Cannot connect to PostgreSQL at {self.display}: {str(exc).strip()} "
            "(is the server running, and is RETAIN_STORE right?)"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("This store is closed; open a new Memory.")

    def _error(self, exc: psycopg.Error) -> StoreError:
        if isinstance(exc, psycopg.errors.UniqueViolation):
            return StoreError(f"A row with this id already exists: {exc.diag.message_detail or exc}")
        return StoreError(f"PostgreSQL error at {self.display}: {str(exc).strip()}")

    def _fetch(self, sql: str, params: Sequence[Any] = (), binary: bool = False) -> list[tuple[Any, ...]]:
        """Run one read-only statement in autocommit (one round trip); `binary` asks for binary results
        (half the time for a user's 10k vectors: no hex to decode).

        A connection the server dropped (a restart, `pg_terminate_backend`) fails on use; a read is
        idempotent, so it is retried on another connection, and the pool replaces the dead one.
        """
        self._check_open()
        pool = self._connections()
        try:
            for attempt in range(pool.max_size + 1):
                conn: Connection = pool.getconn()
                try:
                    return conn.execute(sql, params, binary=binary).fetchall()
                except psycopg.OperationalError:
                    if not conn.broken or attempt == pool.max_size:
                        raise
                finally:
                    pool.putconn(conn)  # the pool discards a broken connection
            raise AssertionError("unreachable")
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    @contextmanager
    def _tx(self, begin: str = "BEGIN") -> Iterator[Connection]:
        """One transaction on a pooled connection: committed on success, rolled back on any error.

        Dead pooled connections are found at BEGIN, before anything is written, and replaced.
        Any later failure (the connection lost mid-transaction included) raises StoreError and
        the server rolls the transaction back, so an operation is applied entirely or not at all.
        """
        self._check_open()
        pool = self._connections()
        try:
            conn: Connection = pool.getconn()
            try:
                for attempt in range(pool.max_size + 1):
                    try:
                        conn.execute(begin)
                        break
                    except psycopg.OperationalError:
                        if not conn.broken or attempt == pool.max_size:
                            raise
                        pool.putconn(conn)  # the pool discards a broken connection
                        conn = pool.getconn()
                try:
                    yield conn
                except BaseException:
                    with contextlib.suppress(psycopg.Error):  # keep the original error
                        conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                pool.putconn(conn)
        except psycopg.Error as exc:
            raise self._error(exc) from exc

    def _migrate(self) -> None:
        try:
            conn = psycopg.connect(self._dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from exc
        try:
            with conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                )
                applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
                if applied:
                    meta: dict[str, str] = dict(conn.execute("SELECT key, value FROM store_meta").fetchall())
                    if meta.get("embedder") != self._embedder_id or meta.get("dimensions") != str(self.dimensions):
                        raise StoreError(
                            f"{self.display} holds vectors from embedder {meta.get('embedder')!r} "
                            f"({meta.get('dimensions')} dimensions), not {self._embedder_id!r} ({self.dimensions}). "
                            "Open it with the embedder it was built with (RETAIN_EMBEDDER), or export it and "
                            "import into a new store to re-embed."
                        )
                if len(applied) > len(MIGRATIONS):
                    raise StoreError(f"{self.display} was written by a newer Retain; upgrade retain to open it.")
                ctx = SchemaContext(dimensions=self.dimensions)
                for version, migration in enumerate(MIGRATIONS, start=1):
                    if version not in applied:
                        migration(conn, ctx)
                        conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (version,))
                conn.execute(
                    "INSERT INTO store_meta VALUES ('embedder', %s), ('dimensions', %s) ON CONFLICT DO NOTHING",
                    (self._embedder_id, str(self.dimensions)),
                )
                row = conn.execute("SELECT 'vector'::regtype::oid").fetchone()
                assert row is not None
                self._vector_oid = int(row[0])
        except psycopg.errors.InsufficientPrivilege as exc:
            raise StoreError(
                f"Cannot set up the schema in {self.display}: {str(exc).strip()}. If it is the pgvector "
                "extension, have a superuser run CREATE EXTENSION vector in that database once."
            ) from exc
        except psycopg.Error as exc:
            raise StoreError(f"Cannot migrate {self.display}: {str(exc).strip()}") from exc
        finally:
            conn.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._async_pool.close()
            self._pool.close()

    # -- writes -----------------------------------------------------------------------

    def write(self, tenant_id: str, batch: WriteBatch) -> WriteOutcome:
        duplicates: dict[str, tuple[str, str]] = {}
        with self._tx() as conn, conn.cursor() as cur:
            if batch.finish_job is not None:
                job_id, result = batch.finish_job
                cur.execute(
                    "UPDATE jobs SET status = 'done', result = %s, last_error = NULL, locked_until = NULL, "
                    "updated_at = %s WHERE id = %s AND tenant_id = %s AND status = 'running'",
                    (json.dumps(result), batch.at, job_id, tenant_id),
                )
                if cur.rowcount != 1:
                    raise StoreError(f"Job {job_id!r} is no longer leased to this worker; its result is discarded.")
            if batch.messages:
                cur.executemany(
                    _INSERT_MESSAGE,
                    [
                        (
                            m.id,
                            tenant_id,
                            m.scope.user_id,
                            m.scope.agent_id,
                            m.scope.run_id,
                            m.role,
                            m.name,
                            m.content,
                            json.dumps(m.metadata),
                            m.created_at,
                        )
                        for m in batch.messages
                    ],
                )
            for mem in batch.memories:
                if np.shape(mem.embedding) != (self.dimensions,):
                    raise StoreError(
                        f"Vector of shape {np.shape(mem.embedding)} for a store of {self.dimensions} dimensions."
                    )
                _check_key_size(tenant_id, mem.scope.user_id, mem.id)
            dedup_scopes = sorted({(m.scope.user_id or "", m.scope.agent_id or "") for m in batch.memories if m.dedup})
            for user, agent in dedup_scopes:  # in a fixed order, so two batches never deadlock
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{tenant_id}\x1f{user}\x1f{agent}",)
                )
            # First (after the dedup locks): a user's inserts then commit in `seq` order (see `_cached`).
            ended = {s.old_id: s.valid_to for s in batch.supersede} | {i.id: i.valid_to for i in batch.invalidate}
            _bump_versions(
                cur,
                tenant_id,
                {m.scope.user_id for m in batch.memories},
                set(),
                self._ends_by_user(cur, tenant_id, ended),
            )
            if not dedup_scopes:
                cur.executemany(_INSERT_MEMORY, [self._memory_row(tenant_id, m, batch.at) for m in batch.memories])
            for mem in batch.memories if dedup_scopes else []:
                match = self._duplicate_of(cur, tenant_id, mem, batch.dedup_threshold) if mem.dedup else None
                if match is None:
                    cur.execute(_INSERT_MEMORY, self._memory_row(tenant_id, mem, batch.at))
                else:
                    duplicates[mem.id] = match
            for sup in batch.supersede:
                self._end_validity(cur, tenant_id, sup.old_id, sup.valid_to, batch.at, sup.new_id)
            for inv in batch.invalidate:
                self._end_validity(cur, tenant_id, inv.id, inv.valid_to, batch.at, None)
            touched = [*batch.touch, *(existing for existing, _ in duplicates.values())]
            if touched:
                cur.execute(
                    "UPDATE memories SET updated_at = %s WHERE tenant_id = %s AND id = ANY(%s::text[])",
                    (batch.at, tenant_id, touched),
                )
            events = []
            for ev in batch.events:
                memory_id, lineage_id, event, reason = ev.memory_id, ev.lineage_id, ev.event, ev.reason
                if memory_id in duplicates:
                    memory_id, lineage_id = duplicates[memory_id]
                    event, reason = "NOOP", f"already remembered ({reason})" if reason else "already remembered"
                s = ev.scope
                events.append(
                    (
                        tenant_id,
                        memory_id,
                        lineage_id,
                        s.user_id,
                        s.agent_id,
                        s.run_id,
                        event,
                        ev.old_text,
                        ev.new_text,
                        reason,
                        ev.actor,
                        json.dumps(ev.source_message_ids),
                        batch.at,
                    )
                )
            if events:
                cur.executemany(_INSERT_EVENT, events)
            if batch.jobs:
                cur.execute("SELECT pg_notify(%s, '')", (JOB_CHANNEL,))  # delivered at commit
                cur.executemany(
                    "INSERT INTO jobs (id, tenant_id, user_id, agent_id, run_id, kind, payload, status, attempts, "
                    "max_attempts, run_after, created_at, updated_at) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,'queued',0,%s,%s,%s,%s)",
                    [
                        (
                            j.id,
                            tenant_id,
                            j.scope.user_id,
                            j.scope.agent_id,
                            j.scope.run_id,
                            j.kind,
                            json.dumps(j.payload),
                            j.max_attempts,
                            batch.at,
                            batch.at,
                            batch.at,
                        )
                        for j in batch.jobs
                    ],
                )
        return WriteOutcome(duplicates=duplicates)

    @staticmethod
    def _memory_row(tenant_id: str, mem: NewMemory, at: int) -> tuple[Any, ...]:
        """Values for `_INSERT_MEMORY`: a new, current memory."""
        s = mem.scope
        row = {
            "id": mem.id,
            "user_id": s.user_id,
            "agent_id": s.agent_id,
            "run_id": s.run_id,
            "lineage_id": mem.lineage_id,
            "text": mem.text,
            "category": mem.category,
            "metadata": mem.metadata,
            "hash": mem.hash,
            "created_at": at,
            "updated_at": at,
            "valid_from": mem.valid_from,
            "valid_to": None,
            "superseded_by": None,
            "source_message_ids": mem.source_message_ids,
            "access_count": 0,
            "last_accessed_at": None,
            "expires_at": mem.expires_at,
            "index_text": mem.index_text,
        }
        return (*_rows.imported(tenant_id, MEMORY_FIELDS, row), _unit(mem.embedding), facets_blob(mem.facets))

    def _duplicate_of(self, cur: Cursor, tenant_id: str, mem: NewMemory, threshold: float) -> tuple[str, str] | None:
        """A current memory of the same user and agent with the same text or a near-identical vector.

        Runs under the scope's advisory lock, and sees what this batch inserted so far.
        """
        s = mem.scope
        where = "m.tenant_id = %s AND m.valid_to IS NULL AND " + _is("m.user_id", s.user_id) + " AND "
        where += _is("m.agent_id", s.agent_id)
        params = [tenant_id, *([s.user_id] if s.user_id is not None else [])]
        params += [s.agent_id] if s.agent_id is not None else []
        cur.execute(
            f"SELECT m.id, m.lineage_id FROM memories m WHERE {where} AND m.hash = %s LIMIT 1", (*params, mem.hash)
        )
        row = cur.fetchone()
        if row is not None:
            return str(row[0]), str(row[1])
        cur.execute(
            f"SELECT m.id, m.lineage_id, -(m.embedding <#> %s) AS score FROM memories m WHERE {where} "
            "ORDER BY score DESC LIMIT 1",
            (_unit(mem.embedding), *params),
        )
        row = cur.fetchone()
        if row is None or float(row[2]) < threshold:
            return None
        return str(row[0]), str(row[1])

    def _end_validity(
        self,
        cur: Cursor,
        tenant_id: str,
        id: str,
        valid_to: int,
        at: int,
        superseded_by: str | None,
    ) -> None:
        cur.execute(
            "UPDATE memories SET valid_to = %s, superseded_by = %s, updated_at = %s "
            "WHERE id = %s AND tenant_id = %s AND valid_to IS NULL",
            (valid_to, superseded_by, at, id, tenant_id),
        )
        if cur.rowcount != 1:
            raise StoreError(f"Memory {id!r} is not current any more (changed concurrently); retry the operation.")

    @staticmethod
    def _ends_by_user(
        cur: Cursor, tenant_id: str, ends: dict[str, int]
    ) -> dict[str | None, list[tuple[str, int | None]]]:
        """The (id, valid_to) of `ends` by the user whose memory each is."""
        if not ends:
            return {}
        cur.execute(
            "SELECT id, user_id FROM memories WHERE tenant_id = %s AND id = ANY(%s::text[])", (tenant_id, list(ends))
        )
        return _log_entries({str(id): user for id, user in cur.fetchall()}, ends)

    def record_access(self, tenant_id: str, counts: dict[str, int], at: int) -> None:
        if not counts:
            return
        with self._tx() as conn, conn.cursor() as cur:
            cur.executemany(  # sorted, so concurrent recorders lock rows in one order
                "UPDATE memories SET access_count = access_count + %s, "
                "last_accessed_at = greatest(coalesce(last_accessed_at, 0), %s) WHERE id = %s AND tenant_id = %s",
                [(n, at, id, tenant_id) for id, n in sorted(counts.items())],
            )

    # -- reads ------------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        # The first stage that reads a user's version pins the partition it used; later stages take the
        # pinned one, or another kind cached at the same version, without asking for the version again,
        # and `_cached_rows` (origins, similarity, vectors, adjacent) answers from the pinned ones.
        if self._snapshot.get() is not None:  # nested: the outer snapshot holds
            yield
            return
        token = self._snapshot.set({})
        try:
            yield
        finally:
            self._snapshot.reset(token)

    def get(self, tenant_id: str, ids: Sequence[str]) -> list[MemoryRecord]:
        if not ids:
            return []
        rows = self._fetch(
            f"{_BY_ID.format(table='memories')} SELECT {_MEMORY_COLUMNS} FROM hit m WHERE m.tenant_id = %s",
            (list(ids), tenant_id),
        )
        return _rows.in_order(ids, rows, _record)

    def origins(self, tenant_id: str, ids: Sequence[str]) -> dict[str, Origin]:
        # Three fields instead of whole records (as in SQLite): the ranking priors read 100 per search.
        # Those of a user a search just used come from its cached postings (one version lookup instead of
        # reading each row: 3.0 ms p50 for 100 at 1M); the rest from SQL.
        if not ids:
            return {}
        found: dict[str, Origin] = {}
        for id, (partition, row) in self._cached_rows("postings", tenant_id, ids).items():
            assert isinstance(partition, UserPostings) and partition.roles is not None and partition.names is not None
            found[id] = Origin(int(partition.valid_from[row]), partition.roles[row], partition.names[row])
        if rest := [id for id in ids if id not in found]:
            rows = self._fetch(
                f"{_BY_ID.format(table='memories')} SELECT id, valid_from, "
                "CASE jsonb_typeof(metadata->'role') WHEN 'string' THEN metadata->>'role' END, "
                "CASE jsonb_typeof(metadata->'name') WHEN 'string' THEN metadata->>'name' END "
                "FROM hit WHERE tenant_id = %s",
                (rest, tenant_id),
            )
            found |= {str(id): Origin(int(at), role, name) for id, at, role, name in rows}
        return found

    def list_memories(
        self, scope: Scope, where: Filter | None, include_superseded: bool, limit: int, after: int | None
    ) -> tuple[list[MemoryRecord], int | None]:
        sql, params = _scope_sql(scope)
        if not include_superseded:
            sql += " AND m.valid_to IS NULL"
        if where is not None:
            fsql, fparams = _compile(where)
            sql += f" AND {fsql}"
            params += fparams
        if after is not None:
            sql += " AND m.seq < %s"
            params.append(after)
        rows = self._fetch(
            f"SELECT {_MEMORY_COLUMNS}, m.seq FROM memories m WHERE {sql} ORDER BY m.seq DESC LIMIT %s",
            (*params, limit + 1),
        )
        page = rows[:limit]
        next_after = int(page[-1][-1]) if len(rows) > limit else None
        return [_record(row) for row in page], next_after

    def _search_filter(self, scope: Scope, where: Filter | None, as_of: int | None, now: int) -> tuple[str, list[Any]]:
        sql, params = _scope_sql(scope)
        if as_of is None:
            sql += " AND m.valid_to IS NULL"
        else:
            sql += " AND m.valid_from <= %s AND (m.valid_to IS NULL OR m.valid_to > %s)"
            params += [as_of, as_of]
        sql += " AND (m.expires_at IS NULL OR m.expires_at > %s)"
        params.append(now)
        if where is not None:
            fsql, fparams = _compile(where)
            sql += f" AND {fsql}"
            params += fparams
        return sql, params

    def vector_search(
        self, scope: Scope, vector: Vector, k: int, where: Filter | None, as_of: int | None, now: int
    ) -> list[Candidate]:
        if scope.user_id is not None:
            # The partition is read from the covering index, which has no agent or run: those go to SQL, and
            # so does which memories were valid `as_of`.
            in_sql = as_of is not None or where is not None or scope.agent_id is not None or scope.run_id is not None
            partition, _, allowed = self._cached(scope, "vectors", self._load_vectors, in_sql, where, as_of, now)
            assert partition.ids is not None and partition.rows_by_id is not None
            mask = partition.mask(None, None, None, now)
            if allowed is not None:
                mask &= np.isin(partition.ids, allowed)
            hits = [Candidate(str(partition.ids[i]), s) for i, s in top_k([partition], [mask], _unit(vector), k)]
            if as_of is None or allowed is None:
                return hits
            # Versions valid then and ended since are not cached: scored from their stored vectors and facets.
            ended = [id for id in allowed if id not in partition.rows_by_id]
            hits += [Candidate(id, score) for id, score in self.similarity(scope.tenant_id, ended, vector).items()]
            return sorted(hits, key=lambda c: (-c.score, c.id))[:k]
        # Scopes without a user span users: exact search in SQL on each memory's own vector.
        sql, params = self._search_filter(scope, where, as_of, now)
        rows = self._fetch(
            f"SELECT m.id, -(m.embedding <#> %s) AS score FROM memories m WHERE {sql} "
            "ORDER BY score DESC, m.id LIMIT %s",
            (_unit(vector), *params, k),
        )
        return [Candidate(str(r[0]), float(r[1])) for r in rows]

    def keyword_search(
        self, scope: Scope, query: str, k: int, where: Filter | None, as_of: int | None, now: int
    ) -> list[Candidate]:
        lexemes_sql = "tsvector_to_array(to_tsvector('english', %s))"
        if scope.user_id is not None:  # BM25 in numpy over the user's cached postings (keyword_index.py)
            postings, row, allowed = self._cached(
                scope, "postings", self._load_postings, where is not None, where, as_of, now, query
            )
            assert isinstance(postings, keyword_index.Postings) and postings.ids is not None
            keep = postings.mask(scope.agent_id, scope.run_id, as_of, now)
            if allowed is not None:
                keep &= np.isin(postings.ids, allowed)
            in_scope = int(postings.scope_mask(scope.agent_id, scope.run_id).sum())
            hits = keyword_index.top_k(postings, keep, in_scope, row[0][:MAX_QUERY_TERMS], k)
            return [Candidate(id, score) for id, score in hits]
        # Agent or run scopes span users: BM25 in SQL, reading the scope's rows through its btree.
        rows = self._fetch(f"SELECT {lexemes_sql}", (query,))
        terms: list[str] = rows[0][0][:MAX_QUERY_TERMS]
        if not terms:
            return []
        lexemes = [_tsquery_literal(t) for t in terms]
        match = " | ".join(lexemes)
        fsql, fparams = self._search_filter(scope, where, as_of, now)
        ssql, sparams = _scope_sql(scope)
        per_term = [t for lexeme in lexemes for t in (lexeme, lexeme)]
        sql = _bm25_sql(len(lexemes), "m.terms @@ %s::tsquery", ssql, fsql)
        rows = self._fetch(sql, (*sparams, *per_term, match, *fparams, k))
        return [Candidate(str(r[0]), float(r[1])) for r in rows]

    def _cached(
        self,
        scope: Scope,
        kind: str,
        load: Callable[[int, int, int, Sequence[tuple[Any, ...]]], Partition],
        filtered: bool,
        where: Filter | None,
        as_of: int | None,
        now: int,
        query: str | None = None,
    ) -> tuple[Partition, tuple[Any, ...], list[str] | None]:
        """A user's cached partition of one kind, brought up to date when the user's version moved on.

        One round trip reads the version, and in the same statement the query's lexemes (with `query`)
        and, when `filtered`, the ids of the memories in `scope` that pass `where` at `as_of`. Returns
        the partition, the columns read after the versions, and those ids. If the user only gained
        memories since the cached version, only those are read and appended (rows are added in `seq`
        order: writers bump the version before they insert, so a user's inserts commit one after
        another); memories ended since come from the user's log of them, read in the same statement
        (`with_ended`); if memories were removed or rewritten (a reset), the ids still there are read
        as well (`_refresh`); a partition not cached yet is read whole. Every read takes the versions with the
        rows in one snapshot, and happens outside the cache's lock.

        Inside a `snapshot` the partition used is pinned, and a call that needs nothing else from SQL
        takes the pinned partition, or one cached at the version pinned for the user, with no round trip.
        """
        assert scope.user_id is not None
        name = f"{kind}\x1f{scope.tenant_id}\x1f{scope.user_id}"
        pinned = self._snapshot.get()
        if pinned is not None and query is None and not filtered:
            held = pinned.get(name)
            if held is None:
                held = self._at_pinned_version(pinned, name, scope.tenant_id, scope.user_id)
            if held is not None:
                return held, (), None
        key = (scope.tenant_id, scope.user_id)
        columns, params = [_VERSION_SQL], [*key, *key]
        if query is not None:
            columns.append("tsvector_to_array(to_tsvector('english', %s))")
            params.append(query)
        if filtered:
            fsql, fparams = self._search_filter(scope, where, as_of, now)
            columns.append(f"ARRAY(SELECT m.id FROM memories m WHERE {fsql})")
            params += fparams
        row = self._fetch(f"SELECT {', '.join(columns)}", params)[0]
        allowed = list(row[-1]) if filtered else None
        partition = self._vectors.get(name, int(row[0]))
        if partition is None:
            partition = self._brought_up_to_date(kind, key, name, load, int(row[0]), int(row[1]))
        if pinned is not None:
            partition = pinned.setdefault(name, partition)
        return partition, row[2:], allowed

    def _at_pinned_version(
        self, pinned: dict[str, Partition], name: str, tenant_id: str, user_id: str
    ) -> Partition | None:
        """Cached partition `name` if it is at the version the snapshot holds for its user (then pinned too)."""
        held = [pinned.get(f"{kind}\x1f{tenant_id}\x1f{user_id}") for kind in _LOAD_SQL]
        version = next((p.version for p in held if p is not None), None)
        found = None if version is None else self._vectors.get(name, version)
        if found is not None:
            pinned[name] = found
        return found

    def _brought_up_to_date(
        self,
        kind: str,
        key: tuple[str, str],
        name: str,
        load: Callable[[int, int, int, Sequence[tuple[Any, ...]]], Partition],
        version: int,
        reset: int,
    ) -> Partition:
        """Partition `name` at `version` or later (see `_cached`), read and cached."""
        base = self._vectors.peek(name)
        if base is not None and base.version > version:
            base = None
        sql = f"SELECT v.*, {_LOAD_SQL[kind]}".format(versions=_VERSIONS_AND_SEQ)
        if base is not None and base.reset == reset:  # additions and endings only: the new rows and the log
            rows = self._fetch(sql + " AND m.seq > %s", (*key, *key, *key, *key, *key, base.max_seq), binary=True)
            if base.reset != int(rows[0][1]):  # something was removed since the first read
                rows, base = self._refresh(kind, key, base, sql)
            else:
                ends = {str(id): end for at, id, end in rows[0][3] or [] if int(at) > base.version}
                base = base.with_ended(ends, keep=kind == "postings")
        elif base is not None:  # removals too: which rows are left, and the new ones, in one snapshot
            rows, base = self._refresh(kind, key, base, sql)
        else:
            rows = self._fetch(sql, (*key, *key, *key, *key, *key), binary=True)
        version, reset, max_seq = int(rows[0][0]), int(rows[0][1]), int(rows[0][2] or 0)
        partition = load(version, reset, max_seq, [r[_HEAD:] for r in rows if r[_HEAD] is not None])
        if base is not None:
            partition = base.extended(partition)
        self._vectors.put(name, partition)
        return partition

    def _refresh(
        self, kind: str, key: tuple[str, str], base: Partition, sql: str
    ) -> tuple[list[tuple[Any, ...]], Partition]:
        """The rows added after `base` and `base` without what has been ended or removed since.

        Reads the ids (and validity) of the user's rows the partition holds, which costs far less than
        reading the rows again (no vectors or lexemes), and the new rows, in one snapshot.
        """
        members = _MEMBERS_SQL[kind]
        with self._tx("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY") as conn:
            # Only rows the partition can hold (seq <= its max): an id purged and imported again is a new
            # row, read with the new rows below, and its old cached row must go.
            found = conn.execute(members, (*key, base.max_seq)).fetchone()
            new = conn.execute(sql + " AND m.seq > %s", (*key, *key, *key, *key, *key, base.max_seq), binary=True)
            rows = new.fetchall()
        valid_to = {str(id): end for id, end in (found[0] if found and found[0] else [])}
        return rows, base.restricted(valid_to)

    def _load_vectors(self, version: int, reset: int, max_seq: int, rows: Sequence[tuple[Any, ...]]) -> Partition:
        n = len(rows)
        stride = 4 + 4 * self.dimensions  # vector_send: two int16s, then big-endian float4s
        raw = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(n, stride)[:, 4:]
        matrix = np.ascontiguousarray(raw).view(">f4").astype(np.float32)
        unknown = np.full(n, None, dtype=object)  # agent and run are filtered in SQL (see vector_search)
        facets, facet_rows = facet_columns([None if r[3] is None else bytes(r[3]) for r in rows], self.dimensions)
        partition = current_partition(
            version,
            matrix.reshape(n, self.dimensions),
            ids=np.array([r[0] for r in rows], dtype=object),
            agent=unknown,
            run=unknown,
            expires_at=np.fromiter((NO_EXPIRY if r[1] is None else r[1] for r in rows), dtype=np.int64, count=n),
            reset=reset,
            max_seq=max_seq,
        )
        return replace(partition, facets=facets, facet_rows=facet_rows)

    @staticmethod
    def _load_postings(version: int, reset: int, max_seq: int, rows: Sequence[tuple[Any, ...]]) -> Partition:
        n, shared = len(rows), dict[str, str]()  # roles and names repeat: one string object each
        roles, names = np.empty(n, dtype=object), np.empty(n, dtype=object)
        roles[:] = [None if r[8] is None else shared.setdefault(r[8], r[8]) for r in rows]
        names[:] = [None if r[9] is None else shared.setdefault(r[9], r[9]) for r in rows]
        categories = np.empty(n, dtype=object)
        categories[:] = [None if r[11] is None else shared.setdefault(r[11], r[11]) for r in rows]
        return keyword_index.build(
            version,
            rows,
            reset,
            max_seq,
            cls=UserPostings,
            roles=roles,
            names=names,
            seqs=np.fromiter((r[10] for r in rows), dtype=np.int64, count=n),
            categories=categories,
            rows_by_id={r[0]: row for row, r in enumerate(rows)},
        )

    def user_speakers(self, tenant_id: str, user_id: str) -> frozenset[str]:
        scope = Scope(tenant_id=tenant_id, user_id=user_id)
        postings, _, _ = self._cached(scope, "postings", self._load_postings, False, None, None, 0)
        assert isinstance(postings, UserPostings)
        return postings.speakers

    def adjacent(
        self, tenant_id: str, ids: Sequence[str], window: int, gap: int, now: int
    ) -> dict[str, list[tuple[str, int]]]:
        if not ids or window <= 0:
            return {}
        # Hits in a cached (or the snapshot's) postings partition: from its seq order, which spares a
        # lateral index scan per hit (3.8 ms p50 for 20 hits at 10k per user); the rest in SQL.
        out: dict[str, list[tuple[str, int]]] = {}
        held = self._cached_rows("postings", tenant_id, ids)
        for id, (partition, row) in held.items():
            assert isinstance(partition, UserPostings)
            if turns := partition.neighbours(row, window, gap, now):
                out[id] = turns
        if rest := [id for id in ids if id not in held]:
            out |= self._adjacent_in_sql(tenant_id, rest, window, gap, now)
        return out

    def _adjacent_in_sql(
        self, tenant_id: str, ids: Sequence[str], window: int, gap: int, now: int
    ) -> dict[str, list[tuple[str, int]]]:
        # For each hit, the user's nearest rows on each side by insertion order (bounded range scans of
        # memories_user), then those that are turns of the same conversation. `user_id IS NOT DISTINCT
        # FROM` would not use that index (measured: 18 ms for 20 hits walking the whole table's seq order
        # at 100 users); a NULL user gets its own branches, which other hits skip as a one-time filter.
        near = (
            "(SELECT m.id, m.seq, m.agent_id, m.run_id, m.category, m.valid_to, m.valid_from, m.expires_at "
            "FROM memories m WHERE m.tenant_id = h.tenant_id AND {user} AND m.valid_to IS NULL "
            "AND m.seq {side} h.seq ORDER BY m.seq {order} LIMIT %s)"
        )
        branches = [
            near.format(user=user, side=side, order=order)
            for user in ("m.user_id = h.user_id", "h.user_id IS NULL AND m.user_id IS NULL")
            for side, order in (("<", "DESC"), (">", "ASC"))
        ]
        rows = self._fetch(
            f"{_BY_ID.format(table='memories')} SELECT h.id, n.id, n.seq > h.seq FROM hit h CROSS JOIN LATERAL ("
            + " UNION ALL ".join(branches)
            + ") n WHERE h.tenant_id = %s AND h.category IS NULL AND h.valid_to IS NULL "
            "AND n.agent_id IS NOT DISTINCT FROM h.agent_id AND n.run_id IS NOT DISTINCT FROM h.run_id "
            "AND n.category IS NULL AND n.valid_to IS NULL AND abs(n.valid_from - h.valid_from) <= %s "
            "AND (n.expires_at IS NULL OR n.expires_at > %s) ORDER BY h.id, abs(n.seq - h.seq)",
            (list(ids), *[2 * window] * len(branches), tenant_id, gap, now),
        )
        sides: dict[tuple[str, bool], list[str]] = {}
        for hit, other, after in rows:
            sides.setdefault((hit, after), []).append(other)
        out: dict[str, list[tuple[str, int]]] = {}
        for (hit, _), others in sides.items():
            out.setdefault(hit, []).extend((other, distance) for distance, other in enumerate(others[:window], 1))
        return out

    def similarity(self, tenant_id: str, ids: Sequence[str], vector: Vector) -> dict[str, float]:
        query = _unit(vector)
        if not ids:
            return {}
        by_partition: dict[int, tuple[Partition, list[str], list[int]]] = {}
        for memory_id, (partition, row) in self._cached_rows("vectors", tenant_id, ids).items():
            entry = by_partition.setdefault(id(partition), (partition, [], []))
            entry[1].append(memory_id)
            entry[2].append(row)
        out: dict[str, float] = {}
        for partition, held, rows in by_partition.values():
            scores = partition.row_scores(np.array(rows, dtype=np.int64), query)
            out |= dict(zip(held, scores.tolist(), strict=True))
        rest = [id for id in ids if id not in out]
        return out | stored_scores(self._stored_vectors(tenant_id, rest, with_facets=True), query, self.dimensions)

    def vectors(self, tenant_id: str, ids: Sequence[str]) -> dict[str, Vector]:
        if not ids:
            return {}
        found = self._cached_vectors(tenant_id, ids)
        stored = self._stored_vectors(tenant_id, [id for id in ids if id not in found], with_facets=False)
        return found | {id: vector for id, (vector, _) in stored.items()}

    def _stored_vectors(
        self, tenant_id: str, ids: Sequence[str], with_facets: bool
    ) -> dict[str, tuple[Vector, bytes | None]]:
        """The stored vector of each memory in `ids`, and its facets blob when asked for, from the table."""
        if not ids:
            return {}
        rows = self._fetch(
            f"{_BY_ID.format(table='memories')} SELECT id, vector_send(embedding), "
            f"{'facets' if with_facets else 'NULL::bytea'} FROM hit WHERE tenant_id = %s",
            (list(ids), tenant_id),
        )
        return {str(id): (_from_send(data), None if facets is None else bytes(facets)) for id, data, facets in rows}

    def _cached_vectors(self, tenant_id: str, ids: Sequence[str]) -> dict[str, Vector]:
        """The vectors of `ids` held by this tenant's recently used partitions that are still current.

        A search's candidates are in the partition it just used, so this saves reading them (TOASTed,
        scattered over the heap: 4.8 ms for 60 at 1M) for one primary-key lookup of the versions.
        """
        return {
            id: partition.matrix[row].copy()
            for id, (partition, row) in self._cached_rows("vectors", tenant_id, ids).items()
        }

    def _cached_rows(self, kind: str, tenant_id: str, ids: Sequence[str]) -> dict[str, tuple[Partition, int]]:
        """Where `ids` are held by this tenant's recently used cached partitions of `kind` that are still at
        their user's current version (one lookup of the versions), or by the partitions of the current
        `snapshot` (no lookup): id -> (partition, row)."""
        prefix = f"{kind}\x1f{tenant_id}\x1f"
        wanted, held = set(ids), dict[str, tuple[Partition, int]]()
        for name, partition in (self._snapshot.get() or {}).items():  # the snapshot's: current by definition
            if name.startswith(prefix):
                assert partition.rows_by_id is not None
                held |= {id: (partition, partition.rows_by_id[id]) for id in wanted if id in partition.rows_by_id}
        wanted -= held.keys()
        if not wanted:
            return held
        found = {}
        for name, partition in self._vectors.recent(prefix, RECENT_PARTITIONS):
            assert partition.rows_by_id is not None
            for id in [id for id in wanted if id in partition.rows_by_id]:
                found[id] = (name[len(prefix) :], partition, partition.rows_by_id[id])
                wanted.discard(id)
            if not wanted:
                break
        if not found:
            return held
        users = sorted({user for user, _, _ in found.values()})
        versions = dict(
            self._fetch(
                "SELECT user_id, version FROM partition_versions WHERE tenant_id = %s AND user_id = ANY(%s::text[])",
                (tenant_id, users),
            )
        )
        return held | {
            id: (partition, row)
            for id, (user, partition, row) in found.items()
            if versions.get(user, 0) == partition.version
        }

    def history(self, tenant_id: str, lineage_id: str) -> list[HistoryEntry]:
        rows = self._fetch(
            "SELECT memory_id, event, old_text, new_text, reason, actor, source_message_ids, created_at "
            "FROM memory_events WHERE tenant_id = %s AND lineage_id = %s ORDER BY seq",
            (tenant_id, lineage_id),
        )
        return [
            HistoryEntry(
                memory_id=r[0],
                event=r[1],
                old_memory=r[2],
                new_memory=r[3],
                reason=r[4],
                actor=r[5],
                source_message_ids=r[6],
                created_at=from_micros(r[7]),
            )
            for r in rows
        ]

    # -- purges -----------------------------------------------------------------------

    def purge_lineage(self, tenant_id: str, lineage_id: str) -> PurgeCounts:
        with self._tx() as conn, conn.cursor() as cur:
            where, params = "tenant_id = %s AND lineage_id = %s", (tenant_id, lineage_id)
            # The removed memories go to their users' logs of ended ones (valid_to None: gone), so cached
            # copies drop them rather than read which memories remain (a `seq` is never given twice).
            cur.execute(f"SELECT id, user_id FROM memories WHERE {where}", params)
            logged = {str(id): user for id, user in cur.fetchall()}
            _bump_versions(cur, tenant_id, set(), set(), _log_entries(logged, dict.fromkeys(logged)))
            cur.execute(f"DELETE FROM memories WHERE {where} RETURNING id, user_id", params)
            memories = cur.rowcount
            meanwhile = {str(id): user for id, user in cur.fetchall() if str(id) not in logged}  # added meanwhile
            _bump_versions(cur, tenant_id, set(), set(), _log_entries(meanwhile, dict.fromkeys(meanwhile)))
            cur.execute("DELETE FROM memory_events WHERE tenant_id = %s AND lineage_id = %s", (tenant_id, lineage_id))
            return PurgeCounts(memories=memories, vectors=memories, keyword_rows=memories, events=cur.rowcount)

    def purge_scope(self, scope: Scope) -> PurgeCounts:
        ssql, sparams = _scope_sql(scope)
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute(f"SELECT DISTINCT m.user_id FROM memories m WHERE {ssql}", sparams)
            users = {r[0] for r in cur.fetchall()}
            _bump_versions(cur, scope.tenant_id, set(), users)
            cur.execute(f"DELETE FROM memories m WHERE {ssql} RETURNING m.lineage_id, m.user_id", sparams)
            deleted = cur.fetchall()
            lineages = sorted({str(r[0]) for r in deleted})
            memories = cur.rowcount
            _bump_versions(cur, scope.tenant_id, set(), {r[1] for r in deleted} - users)  # added meanwhile
            cur.execute(
                "DELETE FROM memory_events WHERE tenant_id = %s AND lineage_id = ANY(%s::text[])",
                (scope.tenant_id, lineages),
            )
            events = cur.rowcount
            cur.execute(f"DELETE FROM memory_events m WHERE {ssql}", sparams)  # events of already-purged memories
            events += cur.rowcount
            cur.execute(f"DELETE FROM messages m WHERE {ssql}", sparams)
            messages = cur.rowcount
            cur.execute(f"DELETE FROM jobs m WHERE {ssql}", sparams)
            return PurgeCounts(
                memories=memories,
                vectors=memories,
                keyword_rows=memories,
                events=events,
                messages=messages,
                jobs=cur.rowcount,
            )

    # -- messages ---------------------------------------------------------------------

    def messages(self, scope: Scope, limit: int | None) -> list[ChatMessage]:
        ssql, sparams = _scope_sql(scope)
        rows = self._fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages m WHERE {ssql} ORDER BY m.seq DESC LIMIT %s",
            (*sparams, limit),
        )
        return [_chat(r) for r in reversed(rows)]

    def delete_messages(self, scope: Scope) -> int:
        ssql, sparams = _scope_sql(scope)
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM messages m WHERE {ssql}", sparams)
            return cur.rowcount

    def messages_by_id(self, tenant_id: str, ids: Sequence[str]) -> list[ChatMessage]:
        if not ids:
            return []
        rows = self._fetch(
            f"{_BY_ID.format(table='messages')} SELECT {_MESSAGE_COLUMNS} FROM hit m WHERE m.tenant_id = %s",
            (list(ids), tenant_id),
        )
        return _rows.in_order(ids, rows, _chat)

    # -- jobs -------------------------------------------------------------------------

    def claim_job(self, now: int, lease: int, job_id: str | None = None) -> Job | None:
        only = "" if job_id is None else " AND id = %s"
        with self._tx() as conn:
            row = conn.execute(
                f"UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = %s, updated_at = %s "
                f"WHERE id = (SELECT id FROM jobs WHERE ((status = 'queued' AND run_after <= %s) "
                f"OR (status = 'running' AND locked_until < %s)){only} ORDER BY run_after LIMIT 1 "
                f"FOR UPDATE SKIP LOCKED) RETURNING {_JOB_COLUMNS}",
                (now + lease, now, now, now, *([job_id] if job_id is not None else [])),
            ).fetchone()
        return None if row is None else _job(row)

    def release_job(self, job_id: str, error: str, retry_at: int | None, now: int) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE jobs SET status = %s, run_after = coalesce(%s, run_after), last_error = %s, "
                "locked_until = NULL, updated_at = %s WHERE id = %s AND status = 'running'",
                ("queued" if retry_at is not None else "dead", retry_at, error[:2000], now, job_id),
            )

    def list_jobs(self, tenant_id: str, status: str | None, limit: int) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant_id = %s"
        params: list[Any] = [tenant_id]
        if status is not None:
            sql += " AND status = %s"
            params.append(status)
        rows = self._fetch(sql + " ORDER BY created_at DESC, id DESC LIMIT %s", (*params, limit))
        return [_job(r) for r in rows]

    def retry_job(self, tenant_id: str, job_id: str, now: int) -> bool:
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, run_after = %s, updated_at = %s "
                "WHERE id = %s AND tenant_id = %s AND status IN ('dead', 'queued')",
                (now, now, job_id, tenant_id),
            )
            if cur.rowcount == 0:
                return False
            cur.execute("SELECT pg_notify(%s, '')", (JOB_CHANNEL,))
            return True

    def listen_for_jobs(self, wake: Callable[[], None], stop: threading.Event) -> None:
        # One connection of its own (not the pool's): LISTEN belongs to a session. Lost connections are
        # reopened with backoff; after each (re)connect `wake` runs once for jobs queued meanwhile.
        backoff = 0.5
        while not (stop.is_set() or self._closed):
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                    conn.execute(f"LISTEN {JOB_CHANNEL}")
                    backoff = 0.5
                    wake()
                    while not (stop.is_set() or self._closed):
                        for _ in conn.notifies(timeout=LISTEN_CHECK_SECONDS):
                            wake()
            except psycopg.Error as exc:
                logger.warning("job notifications from %s interrupted (%s); retrying", self.display, exc)
                stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def job_counts(self) -> dict[str, int]:
        rows = self._fetch("SELECT status, count(*) FROM jobs GROUP BY status")
        return {str(r[0]): int(r[1]) for r in rows}

    # -- API keys ---------------------------------------------------------------------

    def create_api_key(self, key: ApiKey, secret_hash: str) -> None:
        try:
            with self._tx() as conn:
                conn.execute(
                    f"INSERT INTO api_keys ({_KEY_COLUMNS}, secret_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    (
                        key.id,
                        key.tenant_id,
                        key.name,
                        key.prefix,
                        key.admin,
                        key.created_at,
                        key.revoked_at,
                        secret_hash,
                    ),
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                raise StoreError(f"An API key with id {key.id!r} or the same secret already exists.") from exc
            raise

    def api_key_by_hash(self, secret_hash: str) -> ApiKey | None:
        rows = self._fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE secret_hash = %s", (secret_hash,))
        return _api_key(rows[0]) if rows else None

    def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        sql = f"SELECT {_KEY_COLUMNS} FROM api_keys"
        params: tuple[Any, ...] = ()
        if tenant_id is not None:
            sql, params = sql + " WHERE tenant_id = %s", (tenant_id,)
        rows = self._fetch(sql + " ORDER BY created_at, id", params)
        return [_api_key(r) for r in rows]

    def revoke_api_key(self, key_id: str, at: int, tenant_id: str | None = None) -> bool:
        sql = "UPDATE api_keys SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL"
        params: list[Any] = [at, key_id]
        if tenant_id is not None:
            sql += " AND tenant_id = %s"
            params.append(tenant_id)
        with self._tx() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount > 0

    # -- export and import ------------------------------------------------------------

    def export_rows(self, tenant_id: str) -> Iterator[dict[str, Any]]:
        with self._tx("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY") as conn:  # one snapshot
            with conn.cursor(name="retain_export_memories") as cur:
                cur.execute(
                    f"SELECT {_rows.columns(MEMORY_FIELDS)}, vector_send(embedding), facets FROM memories "
                    "WHERE tenant_id = %s ORDER BY seq",
                    (tenant_id,),
                )
                for r in cur:
                    memory = _rows.exported("memory", MEMORY_FIELDS, r[:-2], _decoded)
                    yield {**memory, "embedding": _b64(_from_send(r[-2])), "facets": _rows.facets_b64(r[-1])}
            for kind, table, fields in (
                ("event", "memory_events", EVENT_FIELDS),
                ("message", "messages", MESSAGE_FIELDS),
            ):
                with conn.cursor(name=f"retain_export_{table}") as cur:
                    cur.execute(
                        f"SELECT {_rows.columns(fields)} FROM {table} WHERE tenant_id = %s ORDER BY seq", (tenant_id,)
                    )
                    for r in cur:
                        yield _rows.exported(kind, fields, r, _decoded)

    def import_rows(self, tenant_id: str, rows: Sequence[dict[str, Any]], embeddings: Vector) -> int:
        inserted = 0
        vectors = iter(embeddings)
        with self._tx() as conn, conn.cursor() as cur:
            _bump_versions(cur, tenant_id, set(), {row["user_id"] for row in rows if row["type"] == "memory"})
            for row in rows:
                kind = row["type"]
                if kind == "memory":
                    _check_key_size(tenant_id, row["user_id"], row["id"])
                    values = _rows.imported(tenant_id, MEMORY_FIELDS, row)
                    cur.execute(_INSERT_MEMORY, (*values, _unit(next(vectors)), facets_blob(row.get("facets"))))
                    inserted += 1
                elif kind == "event":
                    cur.execute(_INSERT_EVENT, _rows.imported(tenant_id, EVENT_FIELDS, row))
                    inserted += 1
                elif kind == "message":
                    cur.execute(_IMPORT_MESSAGE, _rows.imported(tenant_id, MESSAGE_FIELDS, row))
                    inserted += cur.rowcount
        return inserted

    # -- integrity --------------------------------------------------------------------

    def check_integrity(self) -> list[str]:
        checks = {
            "memory without events": "SELECT m.id FROM memories m WHERE NOT EXISTS "
            "(SELECT 1 FROM memory_events e WHERE e.tenant_id = m.tenant_id AND e.memory_id = m.id)",
            "superseded_by points nowhere": "SELECT m.id FROM memories m WHERE m.superseded_by IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM memories n WHERE n.id = m.superseded_by)",
            "vector of the wrong size": "SELECT m.id FROM memories m "
            f"WHERE vector_dims(m.embedding) != {self.dimensions}",
            "facets of the wrong size": "SELECT m.id FROM memories m WHERE m.facets IS NOT NULL "
            f"AND (octet_length(m.facets) = 0 OR mod(octet_length(m.facets), {4 * self.dimensions}) != 0)",
            "current memory marked superseded": "SELECT m.id FROM memories m "
            "WHERE m.valid_to IS NULL AND m.superseded_by IS NOT NULL",
        }
        problems: list[str] = []
        for label, sql in checks.items():
            problems += [f"{label}: {r[0]}" for r in self._fetch(sql)]
        return problems

    def counts(self) -> dict[str, int]:
        """Row counts per table, for diagnostics and tests."""
        tables = ("memories", "memory_events", "messages", "jobs")
        return {table: int(self._fetch(f"SELECT count(*) FROM {table}")[0][0]) for table in tables}


def _bump_versions(
    cur: Cursor,
    tenant_id: str,
    added: set[str | None],
    changed: set[str | None],
    ended: dict[str | None, list[tuple[str, int | None]]] | None = None,
) -> None:
    """Mark users' memories changed (see vector_index.py), first thing in the transaction that changes them.

    `added`: users who only gain memories in it; `changed`: users whose memories it removes or rewrites
    wholesale (a reset); `ended`: the (id, valid_to) of the memories it ends (valid_to None: removes), by
    user, appended to the user's log (a reset instead past `ENDED_LOG_MAX` entries). Every writer takes
    these row locks first, in one statement and in sorted order, before any lock on a memory, so writers
    of the same user queue here and never deadlock with each other.
    """
    ended = ended or {}
    keys = sorted({user or "" for user in [*added, *changed, *ended]})
    if not keys:
        return
    resets = {user or "" for user in changed}
    logs = {user or "": entries for user, entries in ended.items()}
    cur.execute(
        # A new row's log entries carry version 1; an existing row's are renumbered to its next version.
        "INSERT INTO partition_versions AS p (tenant_id, user_id, version, reset, ended) "
        "SELECT %s, u, 1, r::int, e FROM unnest(%s::text[], %s::bool[], %s::jsonb[]) AS t (u, r, e) ORDER BY u "
        "ON CONFLICT (tenant_id, user_id) DO UPDATE SET version = p.version + 1, "
        "reset = CASE WHEN excluded.reset = 1 OR jsonb_array_length(p.ended) + jsonb_array_length(excluded.ended) "
        "> %s THEN p.version + 1 ELSE p.reset END, "
        "ended = CASE WHEN excluded.reset = 1 OR jsonb_array_length(p.ended) + jsonb_array_length(excluded.ended) "
        "> %s THEN '[]'::jsonb ELSE p.ended || coalesce((SELECT jsonb_agg(jsonb_build_array(p.version + 1, x->1, "
        "x->2)) FROM jsonb_array_elements(excluded.ended) x), '[]'::jsonb) END",
        (
            tenant_id,
            keys,
            [k in resets for k in keys],
            [json.dumps([] if k in resets else [[1, id, end] for id, end in logs.get(k, [])]) for k in keys],
            ENDED_LOG_MAX,
            ENDED_LOG_MAX,
        ),
    )


def _log_entries(
    users: dict[str, str | None], ends: dict[str, int] | dict[str, None]
) -> dict[str | None, list[tuple[str, int | None]]]:
    """`_bump_versions`' log entries (id, valid_to; None: removed) by user, from id -> user and id -> end."""
    out: dict[str | None, list[tuple[str, int | None]]] = {}
    for id, user in users.items():
        out.setdefault(user, []).append((id, ends[id]))
    return out


def _check_key_size(tenant_id: str, user_id: str | None, id: str) -> None:
    size = len(tenant_id.encode()) + len((user_id or "").encode()) + len(id.encode())
    if size > MAX_KEY_BYTES:
        raise StoreError(
            f"The tenant, user and memory ids of {id[:40]!r} take {size} bytes together; the PostgreSQL "
            f"store indexes them next to the vector and allows {MAX_KEY_BYTES}. Use shorter ids."
        )


def _b64(vector: Vector) -> str:
    import base64

    return base64.b64encode(vector.astype(np.float32).tobytes()).decode()


def _is(column: str, value: str | None) -> str:
    return f"{column} IS NULL" if value is None else f"{column} = %s"


def _decoded(value: Any) -> Any:
    """jsonb columns arrive decoded."""
    return value


def _record(r: Sequence[Any]) -> MemoryRecord:
    return _rows.record(r, _decoded)


def _chat(r: Sequence[Any]) -> ChatMessage:
    return _rows.chat(r, _decoded)


def _job(r: Sequence[Any]) -> Job:
    return _rows.job(r, _decoded)


_api_key = _rows.api_key


def _scope_sql(scope: Scope) -> tuple[str, list[Any]]:
    parts = ["m.tenant_id = %s"]
    params: list[Any] = [scope.tenant_id]
    for column in ("user_id", "agent_id", "run_id"):
        value = getattr(scope, column)
        if value is not None:
            parts.append(f"m.{column} = %s")
            params.append(value)
    return "(" + " AND ".join(parts) + ")", params


# -- filters -> SQL (the same tree as SQLiteStore compiles; see retain.filters) ------------------


def _compile(node: Filter) -> tuple[str, list[Any]]:
    if isinstance(node, And | Or):
        parts = [_compile(p) for p in node.parts]
        joiner = " AND " if isinstance(node, And) else " OR "
        return "(" + joiner.join(s for s, _ in parts) + ")", [p for _, ps in parts for p in ps]
    if isinstance(node, Not):
        sql, params = _compile(node.part)
        return f"(NOT {sql})", params
    sql, params = _compile_condition(node)
    # Two-valued logic: a missing key makes a condition false (not NULL), so NOT and OR behave.
    return f"coalesce({sql}, false)", params


def _compile_condition(c: Condition) -> tuple[str, list[Any]]:
    if c.column is not None:
        return _compile_column(c)
    value = "(m.metadata #> %s::text[])"
    path = list(c.path)
    if c.op in ("eq", "ne"):
        sql, params = _json_eq(value, path, c.value)
        return (sql, params) if c.op == "eq" else (f"(NOT {sql})", params)
    if c.op in ("in", "nin"):
        parts = [_json_eq(value, path, v) for v in c.value]
        sql = "(" + " OR ".join(s for s, _ in parts) + ")"
        params = [p for _, ps in parts for p in ps]
        return (sql, params) if c.op == "in" else (f"(NOT {sql})", params)
    if c.op == "contains":
        sql = f"(jsonb_typeof({value}) = 'array' AND {value} @> jsonb_build_array(%s::jsonb))"
        params = [path, path, json.dumps(c.value)]
        if isinstance(c.value, str):
            sql = f"(CASE WHEN jsonb_typeof({value}) = 'string' THEN strpos({value} #>> '{{}}', %s) > 0 ELSE {sql} END)"
            params = [path, path, c.value, *params]
        return sql, params
    operator = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
    if isinstance(c.value, int | float):
        number = float(c.value) if isinstance(c.value, bool) else c.value
        sql = f"(CASE WHEN jsonb_typeof({value}) = 'number' THEN ({value} #>> '{{}}')::numeric {operator} %s END)"
        return sql, [path, path, number]
    sql = (
        f"(CASE WHEN jsonb_typeof({value}) = 'string' "
        f'THEN ({value} #>> \'{{}}\') COLLATE "C" {operator} %s::text COLLATE "C" END)'
    )
    return sql, [path, path, c.value]


def _json_eq(value_sql: str, path: list[str], value: Any) -> tuple[str, list[Any]]:
    """Type-strict equality of a JSON value (jsonb equality never equates a string with a number)."""
    if value is None:
        return f"({value_sql} IS NULL OR jsonb_typeof({value_sql}) = 'null')", [path, path]
    return f"coalesce({value_sql} = %s::jsonb, false)", [path, json.dumps(value)]


def _compile_column(c: Condition) -> tuple[str, list[Any]]:
    column = f"m.{c.column}"
    cast = "::text" if c.column == "category" else "::bigint"
    if c.op == "eq":
        return f"({column} IS NOT DISTINCT FROM %s{cast})", [c.value]
    if c.op == "ne":
        return f"({column} IS DISTINCT FROM %s{cast})", [c.value]
    if c.op in ("in", "nin"):
        marks = ", ".join(f"%s{cast}" for _ in c.value)
        sql = f"({column} IN ({marks}))"
        return (sql, list(c.value)) if c.op == "in" else (f"({column} IS NULL OR NOT {sql})", list(c.value))
    if c.op == "contains":
        return f"(strpos({column}::text, %s) > 0)", [str(c.value)]
    operator = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
    return f"({column} {operator} %s{cast})", [c.value]
