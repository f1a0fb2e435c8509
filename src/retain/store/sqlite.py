"""The embedded store: one SQLite file in WAL mode.

Memories, events, messages and jobs are plain tables; vectors live in a
plain table searched in numpy per (tenant, user) partition (vector_index.py),
and keywords in a contentless FTS5 table. Everything commits in one
transaction.

Keyword terms are tokenised here (porter stemming over unicode61) and stored
with a short prefix derived from the partition and from whether the memory is
current, e.g. `k3f9a2x1qc` + `berlin`. A user's query then reads only that
user's postings, so keyword search costs the same at 1k or 1M memories in
total, and superseded versions never crowd out current ones. FTS5's own
bm25() counts documents and lengths over the whole table, so it only picks the
candidates; `retain_bm25` scores them with the partition's statistics
(`keyword_stats`, kept in the write transaction), so a user's scores do not
move when other users write. A memory's `index_text` (speaker and context of
a verbatim turn) is what gets indexed when it has one.

A user's search of current memories does not go through FTS5, though: a common
word makes it rank thousands of a large user's rows (at 10k memories per user,
5 ms p50 and 14 ms p95). Like the vectors, the user's current memories are
tokenised once into postings kept in the same per-process cache and validated
by the same version row (keyword_index.py), and scored in numpy with the
statistics `retain_bm25` takes (equal scores; every match is ranked, not only
the 200 FTS5 keeps). The same cached rows name a vector search's hits and
answer `origins`, `similarity` and `vectors` for the user just searched.
`as_of` searches and scopes without a user stay in FTS5.

Python's own sqlite3 cannot load extensions on many builds; apsw can, and
ships a current SQLite with FTS5 on every platform.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import numpy.typing as npt

from ..errors import StoreError
from ..filters import And, Condition, Filter, Not, Or
from ..models import ChatMessage, HistoryEntry, MemoryRecord, PurgeCounts, Scope
from ..timeutil import from_micros
from . import _rows, keyword_index
from ._rows import EVENT_FIELDS, MEMORY_FIELDS, MESSAGE_FIELDS
from .base import ApiKey, Candidate, Job, NewMemory, Origin, Store, Vector, WriteBatch, WriteOutcome
from .keyword_index import UserPostings
from .sqlite_schema import MIGRATIONS, NEXT_MEMORY_ROWID, OPEN_END, SchemaContext
from .vector_index import (
    DEFAULT_CACHE_BYTES,
    NO_EXPIRY,
    Partition,
    VectorCache,
    bump_versions,
    facets_blob,
    load_partition,
    stored_scores,
    to_blob,
    top_k,
    versions_of,
)

BUSY_TIMEOUT_MS = 60_000
BM25_K1 = 1.2
BM25_B = 0.75
#: Keyword candidates (by FTS5's table-wide bm25) rescored with per-partition statistics: per result, at least.
RESCORE_FACTOR = 4
RESCORE_MIN = 200
MAX_QUERY_TERMS = 64
PARTITIONS_PER_QUERY = 32
#: A user's keyword postings are cached under their partition's name with this in front.
POSTINGS_KEY = "postings\x1f"
#: How many of the most recently used cached users `origins`, `similarity` and `vectors` look through.
RECENT_PARTITIONS = 8
#: A memory's metadata role and name when they are strings, as `Origin` takes them.
_ROLE_AND_NAME = (
    "CASE json_type(m.metadata, '$.role') WHEN 'text' THEN json_extract(m.metadata, '$.role') END, "
    "CASE json_type(m.metadata, '$.name') WHEN 'text' THEN json_extract(m.metadata, '$.name') END"
)


def _insert(table: str, fields: Sequence[str], verb: str = "INSERT") -> str:
    return f"{verb} INTO {table} (tenant_id, {_rows.columns(fields)}) VALUES ({', '.join('?' * (len(fields) + 1))})"


_IMPORT_MEMORY = (
    f"INSERT INTO memories (rowid, tenant_id, {_rows.columns(MEMORY_FIELDS)}) "
    f"VALUES ({NEXT_MEMORY_ROWID}, {', '.join('?' * (len(MEMORY_FIELDS) + 1))})"
)
_IMPORT_EVENT = _insert("memory_events", EVENT_FIELDS)
_IMPORT_MESSAGE = _insert("messages", MESSAGE_FIELDS, "INSERT OR IGNORE")

_MEMORY_COLUMNS = (
    "m.id, m.text, m.category, m.metadata, m.user_id, m.agent_id, m.run_id, m.lineage_id, m.hash, m.created_at, "
    "m.updated_at, m.valid_from, m.valid_to, m.superseded_by, m.source_message_ids, m.access_count, "
    "m.last_accessed_at, m.expires_at"
)


def partition_of(tenant_id: str, user_id: str | None) -> str:
    return f"{tenant_id}\x1f{user_id or ''}"


def term_prefix(partition: str, current: bool) -> str:
    digest = hashlib.blake2b(partition.encode(), digest_size=6).digest()
    return base64.b32encode(digest).decode().lower().rstrip("=")[:9] + ("c" if current else "h")


class SQLiteStore(Store):
    def __init__(
        self, path: str | Path, *, dimensions: int, embedder_id: str, vector_cache_bytes: int = DEFAULT_CACHE_BYTES
    ) -> None:
        self.path = Path(path)
        self._vectors = VectorCache(vector_cache_bytes)
        self.dimensions = dimensions
        self._embedder_id = embedder_id
        self._local = threading.local()
        self._connections: list[apsw.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections and transactions ------------------------------------------------

    def _db(self) -> Any:  # apsw.Connection; its row types are too loose for positional unpacking
        if self._closed:
            raise StoreError("This store is closed; open a new Memory.")
        db: Any | None = getattr(self._local, "db", None)
        if db is None:
            try:
                db = apsw.Connection(str(self.path))
            except apsw.Error as exc:
                raise StoreError(f"Cannot open {self.path}: {exc}") from exc
            db.set_busy_timeout(BUSY_TIMEOUT_MS)
            db.execute(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; "
                "PRAGMA cache_size=-65536; PRAGMA mmap_size=268435456;"
            )
            db.register_fts5_function("retain_bm25", _bm25)
            self._local.db = db
            self._local.tokenizer = db.fts5_tokenizer("porter", ["unicode61", "remove_diacritics", "2"])
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction that takes the lock up front, so it never deadlocks on upgrade."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
        except apsw.Error as exc:
            raise StoreError(f"Cannot start a write on {self.path}: {exc}") from exc
        try:
            yield db
        except apsw.Error as exc:
            db.execute("ROLLBACK")
            raise StoreError(f"Write failed on {self.path}: {exc}") from exc
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except apsw.Error as exc:
            db.execute("ROLLBACK")
            raise StoreError(f"Commit failed on {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        with self._write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TEXT)")
            applied = {int(row[0]) for row in db.execute("SELECT version FROM schema_migrations")}
            if applied:
                meta = dict(db.execute("SELECT key, value FROM store_meta").fetchall())
                if meta.get("embedder") != self._embedder_id or meta.get("dimensions") != str(self.dimensions):
                    raise StoreError(
                        f"{self.path} holds vectors from embedder {meta.get('embedder')!r} "
                        f"({meta.get('dimensions')} dimensions), not {self._embedder_id!r} ({self.dimensions}). "
                        "Open it with the embedder it was built with (RETAIN_EMBEDDER), or export it and "
                        "import into a new store to re-embed."
                    )
            if applied - MIGRATIONS.keys():
                raise StoreError(f"{self.path} was written by a newer Retain; upgrade retain to open it.")
            ctx = SchemaContext(dimensions=self.dimensions, term_prefix=term_prefix)
            for version, migration in sorted(MIGRATIONS.items()):
                if version not in applied:
                    migration(db, ctx)
                    db.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (version,))
            db.execute(
                "INSERT OR IGNORE INTO store_meta VALUES ('embedder', ?), ('dimensions', ?)",
                (self._embedder_id, str(self.dimensions)),
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for db in self._connections:
                db.close()
            self._connections.clear()

    # -- keyword terms ----------------------------------------------------------------

    def _tokens(self, text: str) -> list[str]:
        self._db()
        tokens: list[str] = self._local.tokenizer(
            text.encode(), apsw.FTS5_TOKENIZE_DOCUMENT, None, include_offsets=False, include_colocated=False
        )
        return tokens

    def _index(self, db: Any, rowid: int, partition: str, text: str, current: bool) -> None:
        """Add one memory version's keyword row and count it in its prefix's statistics."""
        prefix = term_prefix(partition, current)
        tokens = self._tokens(text)
        db.execute("INSERT INTO memory_fts (rowid, terms) VALUES (?, ?)", (rowid, " ".join(prefix + t for t in tokens)))
        _count_stats(db, prefix, 1, len(tokens))

    def _unindex(self, db: Any, rowid: int, partition: str, text: str, current: bool) -> None:
        db.execute("DELETE FROM memory_fts WHERE rowid = ?", (rowid,))
        if db.changes():
            _count_stats(db, term_prefix(partition, current), -1, -len(self._tokens(text)))

    # -- writes -----------------------------------------------------------------------

    def write(self, tenant_id: str, batch: WriteBatch) -> WriteOutcome:
        duplicates: dict[str, tuple[str, str]] = {}
        touched: set[str] = set()
        inserted: list[NewMemory] = []
        with self._write() as db:
            if batch.finish_job is not None:
                job_id, result = batch.finish_job
                db.execute(
                    "UPDATE jobs SET status = 'done', result = ?, last_error = NULL, locked_until = NULL, "
                    "updated_at = ? WHERE id = ? AND tenant_id = ? AND status = 'running'",
                    (json.dumps(result), batch.at, job_id, tenant_id),
                )
                if db.changes() != 1:
                    raise StoreError(f"Job {job_id!r} is no longer leased to this worker; its result is discarded.")
            for msg in batch.messages:
                s = msg.scope
                db.execute(
                    "INSERT INTO messages (id, tenant_id, user_id, agent_id, run_id, role, name, content, "
                    "metadata, created_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        msg.id,
                        tenant_id,
                        s.user_id,
                        s.agent_id,
                        s.run_id,
                        msg.role,
                        msg.name,
                        msg.content,
                        json.dumps(msg.metadata),
                        msg.created_at,
                    ),
                )
            for mem in batch.memories:
                match = None
                if mem.dedup:
                    match = self._duplicate_of(db, tenant_id, mem, batch.dedup_threshold, inserted)
                if match is None:
                    touched.add(self._insert_memory(db, tenant_id, mem, batch.at))
                    inserted.append(mem)
                else:
                    duplicates[mem.id] = match
            for sup in batch.supersede:
                touched.add(self._end_validity(db, tenant_id, sup.old_id, sup.valid_to, batch.at, sup.new_id))
            for inv in batch.invalidate:
                touched.add(self._end_validity(db, tenant_id, inv.id, inv.valid_to, batch.at, None))
            for id in [*batch.touch, *(existing for existing, _ in duplicates.values())]:
                db.execute(
                    "UPDATE memories SET updated_at = ? WHERE id = ? AND tenant_id = ?", (batch.at, id, tenant_id)
                )
            for ev in batch.events:
                memory_id, lineage_id, event, reason = ev.memory_id, ev.lineage_id, ev.event, ev.reason
                if memory_id in duplicates:
                    memory_id, lineage_id = duplicates[memory_id]
                    event, reason = "NOOP", f"already remembered ({reason})" if reason else "already remembered"
                s = ev.scope
                db.execute(
                    "INSERT INTO memory_events (tenant_id, memory_id, lineage_id, user_id, agent_id, run_id, "
                    "event, old_text, new_text, reason, actor, source_message_ids, created_at) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                    ),
                )
            for job in batch.jobs:
                s = job.scope
                db.execute(
                    "INSERT INTO jobs (id, tenant_id, user_id, agent_id, run_id, kind, payload, status, attempts, "
                    "max_attempts, run_after, created_at, updated_at) VALUES (?,?,?,?,?,?,?,'queued',0,?,?,?,?)",
                    (
                        job.id,
                        tenant_id,
                        s.user_id,
                        s.agent_id,
                        s.run_id,
                        job.kind,
                        json.dumps(job.payload),
                        job.max_attempts,
                        batch.at,
                        batch.at,
                        batch.at,
                    ),
                )
            bump_versions(db, touched)
        return WriteOutcome(duplicates=duplicates)

    def _duplicate_of(
        self, db: Any, tenant_id: str, mem: NewMemory, threshold: float, inserted: list[NewMemory]
    ) -> tuple[str, str] | None:
        """A current memory of the same user and agent with the same text or a near-identical vector.

        Runs inside the write transaction: the committed partition plus what this batch inserted so far.
        """
        s = mem.scope
        row = db.execute(
            "SELECT id, lineage_id FROM memories WHERE tenant_id = ? AND hash = ? AND valid_to IS NULL "
            "AND user_id IS ? AND agent_id IS ? LIMIT 1",
            (tenant_id, mem.hash, s.user_id, s.agent_id),
        ).fetchone()
        if row is not None:
            return str(row[0]), str(row[1])
        query = np.frombuffer(to_blob(mem.embedding), dtype=np.float32)
        for earlier in inserted:
            same_scope = (earlier.scope.user_id, earlier.scope.agent_id) == (s.user_id, s.agent_id)
            if same_scope and float(np.frombuffer(to_blob(earlier.embedding), dtype=np.float32) @ query) >= threshold:
                return earlier.id, earlier.lineage_id
        partition = load_partition(db, self._vectors, partition_of(tenant_id, s.user_id), self.dimensions)
        hits = top_k([partition], [partition.mask(s.agent_id or "", None, None)], query, 1)
        if not hits or hits[0][1] < threshold:
            return None
        row = db.execute("SELECT id, lineage_id FROM memories WHERE rowid = ?", (hits[0][0],)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def _insert_memory(self, db: Any, tenant_id: str, mem: NewMemory, at: int) -> str:
        """Insert a memory with its vector and keyword row; returns its partition."""
        if np.shape(mem.embedding) != (self.dimensions,):
            raise StoreError(f"Vector of shape {np.shape(mem.embedding)} for a store of {self.dimensions} dimensions.")
        s = mem.scope
        db.execute(
            "INSERT INTO memories (rowid, id, tenant_id, user_id, agent_id, run_id, lineage_id, text, category, "
            "metadata, hash, created_at, updated_at, valid_from, source_message_ids, expires_at, index_text) "
            f"VALUES ({NEXT_MEMORY_ROWID},?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                mem.id,
                tenant_id,
                s.user_id,
                s.agent_id,
                s.run_id,
                mem.lineage_id,
                mem.text,
                mem.category,
                json.dumps(mem.metadata),
                mem.hash,
                at,
                at,
                mem.valid_from,
                json.dumps(mem.source_message_ids),
                mem.expires_at,
                mem.index_text,
            ),
        )
        rowid = db.last_insert_rowid()
        partition = partition_of(tenant_id, s.user_id)
        db.execute(
            "INSERT INTO memory_vectors (memory_rowid, partition, embedding, agent_id, run_id, valid_from, "
            "valid_to, facets) VALUES (?,?,?,?,?,?,?,?)",
            (
                rowid,
                partition,
                to_blob(mem.embedding),
                s.agent_id or "",
                s.run_id or "",
                mem.valid_from,
                OPEN_END,
                facets_blob(mem.facets),
            ),
        )
        self._index(db, rowid, partition, mem.index_text or mem.text, True)
        return partition

    def _end_validity(self, db: Any, tenant_id: str, id: str, valid_to: int, at: int, superseded_by: str | None) -> str:
        """Close a current memory's validity; returns its partition."""
        row = db.execute(
            "SELECT rowid, user_id, coalesce(index_text, text) FROM memories "
            "WHERE id = ? AND tenant_id = ? AND valid_to IS NULL",
            (id, tenant_id),
        ).fetchone()
        if row is None:
            raise StoreError(f"Memory {id!r} is not current any more (changed concurrently); retry the operation.")
        rowid, user_id, text = row
        db.execute(
            "UPDATE memories SET valid_to = ?, superseded_by = ?, updated_at = ? WHERE rowid = ?",
            (valid_to, superseded_by, at, rowid),
        )
        db.execute("UPDATE memory_vectors SET valid_to = ? WHERE memory_rowid = ?", (valid_to, rowid))
        partition = partition_of(tenant_id, user_id)
        self._unindex(db, rowid, partition, text, True)
        self._index(db, rowid, partition, text, False)
        return partition

    def record_access(self, tenant_id: str, counts: dict[str, int], at: int) -> None:
        if not counts:
            return
        with self._write() as db:
            db.executemany(
                "UPDATE memories SET access_count = access_count + ?, "
                "last_accessed_at = max(coalesce(last_accessed_at, 0), ?) WHERE id = ? AND tenant_id = ?",
                [(n, at, id, tenant_id) for id, n in counts.items()],
            )

    # -- reads ------------------------------------------------------------------------

    def get(self, tenant_id: str, ids: Sequence[str]) -> list[MemoryRecord]:
        if not ids:
            return []
        rows = (
            self._db()
            .execute(
                f"SELECT {_MEMORY_COLUMNS} FROM memories m WHERE +m.tenant_id = ? "
                "AND m.id IN (SELECT value FROM json_each(?))",
                (tenant_id, json.dumps(list(ids))),
            )
            .fetchall()
        )
        return _rows.in_order(ids, rows, _record)

    def origins(self, tenant_id: str, ids: Sequence[str]) -> dict[str, Origin]:
        # Three fields instead of whole records: building a MemoryRecord costs ~35 us, and the ranking
        # priors read 100 of them per search.
        if not ids:
            return {}
        db = self._db()
        found: dict[str, tuple[Any, ...]] = {}
        for id, (_, rows, row) in self._cached_rows(db, tenant_id, ids).items():
            assert rows.roles is not None and rows.names is not None
            found[id] = (id, rows.valid_from[row], rows.roles[row], rows.names[row])
        if rest := [id for id in ids if id not in found]:
            for r in db.execute(
                f"SELECT m.id, m.valid_from, {_ROLE_AND_NAME} "
                "FROM memories m WHERE +m.tenant_id = ? AND m.id IN (SELECT value FROM json_each(?))",
                (tenant_id, json.dumps(rest)),
            ):
                found[str(r[0])] = tuple(r)
        return {
            str(id): Origin(int(at), role if isinstance(role, str) else None, name if isinstance(name, str) else None)
            for id, at, role, name in found.values()
        }

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
            sql += " AND m.rowid < ?"
            params.append(after)
        rows = (
            self._db()
            .execute(
                f"SELECT {_MEMORY_COLUMNS}, m.rowid FROM memories m WHERE {sql} ORDER BY m.rowid DESC LIMIT ?",
                (*params, limit + 1),
            )
            .fetchall()
        )
        page = rows[:limit]
        next_after = int(page[-1][-1]) if len(rows) > limit else None
        return [_record(row) for row in page], next_after

    def vector_search(
        self, scope: Scope, vector: Vector, k: int, where: Filter | None, as_of: int | None, now: int
    ) -> list[Candidate]:
        db = self._db()
        names = self._partitions(db, scope)
        partitions = [load_partition(db, self._vectors, name, self.dimensions) for name in names]
        masks = [p.mask(scope.agent_id, scope.run_id, as_of) for p in partitions]
        if where is not None:
            ssql, sparams = _scope_sql(scope)
            fsql, fparams = _compile(where)
            allowed = np.fromiter(
                (
                    r[0]
                    for r in db.execute(f"SELECT m.rowid FROM memories m WHERE {ssql} AND {fsql}", sparams + fparams)
                ),
                dtype=np.int64,
            )
            masks = [mask & np.isin(p.rowids, allowed) for p, mask in zip(partitions, masks, strict=True)]
        query = np.frombuffer(to_blob(vector), dtype=np.float32)
        scored = top_k(partitions, masks, query, k)
        if scope.user_id is not None and as_of is None and scored:
            # The user's rows, when cached at this version, name the hits and hold their expiry.
            rows = self._vectors.get(POSTINGS_KEY + names[0], partitions[0].version)
            if isinstance(rows, UserPostings) and rows.ids is not None and rows.expires_at is not None:
                at = np.searchsorted(rows.rowids, [rowid for rowid, _ in scored])
                at[at == len(rows.rowids)] = 0
                if (rows.rowids[at] == [rowid for rowid, _ in scored]).all():
                    live = rows.expires_at[at] > now
                    names = rows.ids[at].tolist()
                    return [Candidate(names[i], score) for i, (_, score) in enumerate(scored) if live[i]]
        return self._candidates(db, scope, scored, now)

    def _partitions(self, db: Any, scope: Scope) -> list[str]:
        """The partitions a scope can reach: the user's, or every user's with memories in the scope."""
        if scope.user_id is not None:
            return [partition_of(scope.tenant_id, scope.user_id)]
        ssql, sparams = _scope_sql(scope)
        return [
            partition_of(scope.tenant_id, row[0])
            for row in db.execute(f"SELECT DISTINCT m.user_id FROM memories m WHERE {ssql}", sparams)
        ]

    def keyword_search(
        self, scope: Scope, query: str, k: int, where: Filter | None, as_of: int | None, now: int
    ) -> list[Candidate]:
        tokens = list(dict.fromkeys(self._tokens(query)))[:MAX_QUERY_TERMS]
        if not tokens:
            return []
        db = self._db()
        if scope.user_id is not None and as_of is None:  # BM25 in numpy over the user's cached postings
            postings = self._postings(db, scope.tenant_id, scope.user_id)
            keep = postings.mask(scope.agent_id, scope.run_id, None, now)
            if where is not None:
                keep &= np.isin(postings.rowids, self._allowed(db, scope, where))
            return [Candidate(id, score) for id, score in keyword_index.partition_top_k(postings, keep, tokens, k)]
        partitions = self._partitions(db, scope)
        ssql, sparams = _scope_sql(scope)
        validity, vparams = _validity_sql(as_of)
        extra, eparams = ("", []) if where is None else _compile(where)
        scored: list[tuple[int, float]] = []
        validity_free = as_of is None and where is None
        pool = max(RESCORE_FACTOR * k, RESCORE_MIN)
        for start in range(0, len(partitions), PARTITIONS_PER_QUERY):
            prefixes = [term_prefix(p, True) for p in partitions[start : start + PARTITIONS_PER_QUERY]]
            if as_of is not None:
                prefixes += [term_prefix(p, False) for p in partitions[start : start + PARTITIONS_PER_QUERY]]
            phrases, params = self._phrases(db, prefixes, tokens)
            if not phrases:
                continue
            match = " OR ".join(f'"{phrase}"' for phrase in phrases)
            if scope.user_id is not None and scope.agent_id is None and scope.run_id is None and validity_free:
                # The prefix already pins tenant, user and "current"; _candidates re-checks scope and expiry.
                # FTS5 ranks by its own bm25() and sorts internally (ORDER BY rank), so retain_bm25 runs
                # only for the `pool` rows it keeps.
                scored += db.execute(
                    "SELECT rowid, retain_bm25(memory_fts, ?) FROM memory_fts WHERE memory_fts MATCH ? "
                    "ORDER BY rank LIMIT ?",
                    (params, match, pool),
                ).fetchall()
                continue
            sql = (
                "SELECT m.rowid, retain_bm25(memory_fts, ?) FROM memory_fts JOIN memories m "
                f"ON m.rowid = memory_fts.rowid WHERE memory_fts MATCH ? AND {ssql} AND {validity}"
                + (f" AND {extra}" if extra else "")
                + " ORDER BY bm25(memory_fts) LIMIT ?"
            )
            scored += db.execute(sql, (params, match, *sparams, *vparams, *eparams, pool)).fetchall()
        scored.sort(key=lambda pair: -pair[1])
        return self._candidates(db, scope, scored[:k], now)

    def _postings(self, db: Any, tenant_id: str, user_id: str) -> UserPostings:
        """The keyword postings of a user's current memories, from the cache when they are current.

        Validated by the partition's version row like its vectors, and brought up to date the same way
        (`load_partition`): when the user only gained memories since the cached copy, just those are read,
        tokenised and appended; when memories were also ended or purged, the copy keeps those still
        current (their rowids read from an index). The memories are tokenised as `_index` tokenised them,
        so the scores are the FTS5 path's (keyword_index.py).
        """
        name = partition_of(tenant_id, user_id)
        key = POSTINGS_KEY + name
        cacheable = not db.in_transaction
        sql = (
            "SELECT m.rowid, m.id, m.agent_id, m.run_id, m.expires_at, "
            f"coalesce(nullif(m.index_text, ''), m.text), m.valid_from, {_ROLE_AND_NAME}, m.category "
            "FROM memories m WHERE m.tenant_id = ? AND m.user_id = ? AND m.valid_to IS NULL"
        )
        with db:  # one snapshot for the version and the rows
            version, reset, ended = versions_of(db, name)
            cached = self._vectors.get(key, version)
            if isinstance(cached, UserPostings):
                return cached
            base = self._vectors.peek(key)
            if not isinstance(base, UserPostings) or base.version > version or base.reset != reset:
                base = None
            if base is not None and base.ended != ended:  # memories ended or purged: keep those still current
                current = np.fromiter(
                    (
                        r[0]
                        for r in db.execute(
                            "SELECT memory_rowid FROM memory_vectors WHERE partition = ? AND valid_to = ? "
                            "AND memory_rowid <= ?",
                            (name, OPEN_END, base.max_seq),
                        )
                    ),
                    dtype=np.int64,
                )
                keep = np.isin(base.rowids, current)
                if int(keep.sum()) == len(current):
                    base = base.masked(keep, np.full(len(current), OPEN_END, dtype=np.int64))
                else:  # a row is current again: read it all
                    base = None
            if base is None:
                rows = db.execute(sql + " ORDER BY m.rowid", (tenant_id, user_id)).fetchall()
            else:
                rows = db.execute(sql + " AND m.rowid > ? ORDER BY m.rowid", (tenant_id, user_id, base.max_seq))
                rows = rows.fetchall()
        n = len(rows)
        rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        postings = keyword_index.from_tokens(
            version,
            rowids=rowids,
            ids=np.array([r[1] for r in rows], dtype=object),
            agent=np.array([r[2] for r in rows], dtype=object),
            run=np.array([r[3] for r in rows], dtype=object),
            expires_at=np.fromiter((NO_EXPIRY if r[4] is None else r[4] for r in rows), dtype=np.int64, count=n),
            valid_from=np.fromiter((r[6] for r in rows), dtype=np.int64, count=n),
            tokens=[self._tokens(r[5]) for r in rows],
            cls=UserPostings,
            roles=np.array([r[7] for r in rows], dtype=object),
            names=np.array([r[8] for r in rows], dtype=object),
            seqs=rowids,
            categories=np.array([r[9] for r in rows], dtype=object),
            reset=reset,
            ended=ended,
            max_seq=int(rows[-1][0]) if rows else 0,
        )
        if base is not None:
            postings = base.extended(postings)
        assert isinstance(postings, UserPostings)
        if cacheable:
            self._vectors.put(key, postings)
        return postings

    def _cached_rows(self, db: Any, tenant_id: str, ids: Sequence[str]) -> dict[str, tuple[str, UserPostings, int]]:
        """Where `ids` are among this tenant's recently used cached users' current memories, still current:
        id -> (partition, that user's rows, row). A search's candidates are in the user it just searched,
        so its follow-up reads need one primary-key lookup of the version instead of reading each row."""
        prefix = f"{POSTINGS_KEY}{tenant_id}\x1f"
        wanted, found = set(ids), {}
        for key, rows in self._vectors.recent(prefix, RECENT_PARTITIONS):
            if not isinstance(rows, UserPostings) or rows.rows_by_id is None:
                continue
            for id in [id for id in wanted if id in rows.rows_by_id]:
                found[id] = (key[len(POSTINGS_KEY) :], rows, rows.rows_by_id[id])
                wanted.discard(id)
            if not wanted:
                break
        if not found:
            return {}
        versions = dict(
            db.execute(
                "SELECT partition, version FROM partition_versions WHERE partition IN (SELECT value FROM json_each(?))",
                (json.dumps(sorted({name for name, _, _ in found.values()})),),
            ).fetchall()
        )
        return {id: hit for id, hit in found.items() if versions.get(hit[0], 0) == hit[1].version}

    @staticmethod
    def _allowed(db: Any, scope: Scope, where: Filter) -> npt.NDArray[np.int64]:
        """The rowids of the scope's current memories that pass `where`."""
        ssql, sparams = _scope_sql(scope)
        fsql, fparams = _compile(where)
        rows = db.execute(
            f"SELECT m.rowid FROM memories m WHERE {ssql} AND m.valid_to IS NULL AND {fsql}", sparams + fparams
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    @staticmethod
    def _phrases(db: Any, prefixes: list[str], tokens: list[str]) -> tuple[list[str], str]:
        """The prefixed query terms that occur, and each one's BM25 parameters [idf, average length] as JSON.

        IDF and average length come from the term's own partition (its prefix), not the whole table.
        """
        terms = [prefix + token for prefix in prefixes for token in tokens]
        stats = {
            r[0]: (int(r[1]), int(r[2]))
            for r in db.execute(
                "SELECT prefix, docs, tokens FROM keyword_stats WHERE prefix IN (SELECT value FROM json_each(?))",
                (json.dumps(prefixes),),
            )
        }
        found = dict(
            db.execute(
                "SELECT term, doc FROM memory_fts_vocab WHERE term IN (SELECT value FROM json_each(?))",
                (json.dumps(terms),),
            ).fetchall()
        )
        phrases, params = [], []
        for term in terms:
            docs, total = stats.get(term[: len(prefixes[0])], (0, 0))
            df = int(found.get(term, 0))
            if df and docs:
                phrases.append(term)
                params.append([math.log(1.0 + (docs - df + 0.5) / (df + 0.5)), max(total / docs, 1.0)])
        return phrases, json.dumps(params)

    def _candidates(self, db: Any, scope: Scope, scored: list[tuple[int, float]], now: int) -> list[Candidate]:
        """Map rowids to ids, re-checking scope and expiry (defence in depth for isolation)."""
        if not scored:
            return []
        ssql, sparams = _scope_sql(scope, lookup=True)
        rows = db.execute(
            f"SELECT m.rowid, m.id FROM memories m WHERE m.rowid IN (SELECT value FROM json_each(?)) "
            f"AND {ssql} AND (m.expires_at IS NULL OR m.expires_at > ?)",
            (json.dumps([rowid for rowid, _ in scored]), *sparams, now),
        ).fetchall()
        ids = dict(rows)
        return [Candidate(ids[rowid], float(score)) for rowid, score in scored if rowid in ids]

    def user_speakers(self, tenant_id: str, user_id: str) -> frozenset[str]:
        return self._postings(self._db(), tenant_id, user_id).speakers

    def adjacent(
        self, tenant_id: str, ids: Sequence[str], window: int, gap: int, now: int
    ) -> dict[str, list[tuple[str, int]]]:
        if not ids or window <= 0:
            return {}
        # Hits among a cached user's current memories: from their rowid order (2.0 ms p50 in SQL for 20
        # hits at 10k per user in a 1M file); the rest (and superseded or unknown ids) in SQL.
        db = self._db()
        out: dict[str, list[tuple[str, int]]] = {}
        held = self._cached_rows(db, tenant_id, ids)
        for id, (_, rows, row) in held.items():
            if turns := rows.neighbours(row, window, gap, now):
                out[id] = turns
        if rest := [id for id in ids if id not in held]:
            out |= self._adjacent_in_sql(db, tenant_id, rest, window, gap, now)
        return out

    @staticmethod
    def _adjacent_in_sql(
        db: Any, tenant_id: str, ids: Sequence[str], window: int, gap: int, now: int
    ) -> dict[str, list[tuple[str, int]]]:
        # For each hit, the user's nearest current rows on each side by rowid (an index range, bounded by
        # the superseded rows in between), then those that are turns of the same conversation.
        near = (
            "SELECT rowid FROM (SELECT rowid FROM memories WHERE tenant_id = h.tenant_id AND user_id IS h.user_id "
            "AND valid_to IS NULL AND rowid {side} h.rowid ORDER BY rowid {order} LIMIT :span)"
        )
        rows = db.execute(
            "SELECT h.id, n.id, n.rowid > h.rowid FROM memories h JOIN memories n ON n.rowid IN ("
            + near.format(side="<", order="DESC")
            + " UNION ALL "
            + near.format(side=">", order="ASC")
            + ") WHERE +h.tenant_id = :tenant AND h.id IN (SELECT value FROM json_each(:ids)) "
            "AND h.category IS NULL AND h.valid_to IS NULL "
            "AND n.agent_id IS h.agent_id AND n.run_id IS h.run_id AND n.category IS NULL "
            "AND n.valid_to IS NULL AND abs(n.valid_from - h.valid_from) <= :gap "
            "AND (n.expires_at IS NULL OR n.expires_at > :now) ORDER BY h.id, abs(n.rowid - h.rowid)",
            {"tenant": tenant_id, "ids": json.dumps(list(ids)), "span": 2 * window, "gap": gap, "now": now},
        ).fetchall()
        sides: dict[tuple[str, int], list[str]] = {}
        for hit, other, after in rows:
            sides.setdefault((hit, after), []).append(other)
        out: dict[str, list[tuple[str, int]]] = {}
        for (hit, _), others in sides.items():
            out.setdefault(hit, []).extend((other, distance) for distance, other in enumerate(others[:window], 1))
        return out

    def similarity(self, tenant_id: str, ids: Sequence[str], vector: Vector) -> dict[str, float]:
        query = np.frombuffer(to_blob(vector), dtype=np.float32)
        if not ids:
            return {}
        db = self._db()
        out: dict[str, float] = {}
        for partition, held, rows in self._cached_hits(db, tenant_id, ids):
            out |= dict(zip(held, partition.row_scores(rows, query).tolist(), strict=True))
        rest = [id for id in ids if id not in out]
        return out | stored_scores(self._stored_vectors(db, tenant_id, rest), query, self.dimensions)

    def vectors(self, tenant_id: str, ids: Sequence[str]) -> dict[str, Vector]:
        if not ids:
            return {}
        db = self._db()
        out: dict[str, Vector] = {}
        for partition, held, rows in self._cached_hits(db, tenant_id, ids):
            out |= dict(zip(held, partition.matrix[rows], strict=True))
        stored = self._stored_vectors(db, tenant_id, [id for id in ids if id not in out])
        return out | {id: vector for id, (vector, _) in stored.items()}

    def _cached_hits(
        self, db: Any, tenant_id: str, ids: Sequence[str]
    ) -> list[tuple[Partition, list[str], npt.NDArray[np.int64]]]:
        """Per user whose vectors the cache holds at its current version: that partition, the ids among `ids`
        it holds, and their positions in it."""
        by_user: dict[str, tuple[UserPostings, list[str], list[int]]] = {}
        for id, (name, rows, row) in self._cached_rows(db, tenant_id, ids).items():
            entry = by_user.setdefault(name, (rows, [], []))
            entry[1].append(id)
            entry[2].append(row)
        out = []
        for name, (rows, user_ids, user_rows) in by_user.items():
            # The user's vectors, when cached at the same version as its rows (both follow its version row).
            partition = self._vectors.get(name, rows.version)
            if partition is None or isinstance(partition, keyword_index.Postings):
                continue
            rowids = rows.rowids[user_rows]
            at = np.searchsorted(partition.rowids, rowids)
            at[at == len(partition.rowids)] = 0
            held = partition.rowids[at] == rowids
            out.append((partition, [id for id, ok in zip(user_ids, held.tolist(), strict=True) if ok], at[held]))
        return out

    def _stored_vectors(self, db: Any, tenant_id: str, ids: Sequence[str]) -> dict[str, tuple[Vector, bytes | None]]:
        """The stored vector and facets blob of each memory in `ids`, from the table."""
        if not ids:
            return {}
        rows = db.execute(
            "SELECT m.id, v.embedding, v.facets FROM memories m JOIN memory_vectors v ON v.memory_rowid = m.rowid "
            "WHERE +m.tenant_id = ? AND m.id IN (SELECT value FROM json_each(?))",
            (tenant_id, json.dumps(list(ids))),
        ).fetchall()
        return {id: (np.frombuffer(blob, dtype=np.float32).copy(), facets) for id, blob, facets in rows}

    def history(self, tenant_id: str, lineage_id: str) -> list[HistoryEntry]:
        rows = (
            self._db()
            .execute(
                "SELECT memory_id, event, old_text, new_text, reason, actor, source_message_ids, created_at "
                "FROM memory_events WHERE tenant_id = ? AND lineage_id = ? ORDER BY rowid",
                (tenant_id, lineage_id),
            )
            .fetchall()
        )
        return [
            HistoryEntry(
                memory_id=r[0],
                event=r[1],
                old_memory=r[2],
                new_memory=r[3],
                reason=r[4],
                actor=r[5],
                source_message_ids=json.loads(r[6]),
                created_at=from_micros(r[7]),
            )
            for r in rows
        ]

    # -- purges -----------------------------------------------------------------------

    def purge_lineage(self, tenant_id: str, lineage_id: str) -> PurgeCounts:
        with self._write() as db:
            rowids = [
                r[0]
                for r in db.execute(
                    "SELECT rowid FROM memories WHERE tenant_id = ? AND lineage_id = ?", (tenant_id, lineage_id)
                )
            ]
            counts = self._purge_rowids(db, rowids)
            db.execute("DELETE FROM memory_events WHERE tenant_id = ? AND lineage_id = ?", (tenant_id, lineage_id))
            return counts.model_copy(update={"events": db.changes()})

    def purge_scope(self, scope: Scope) -> PurgeCounts:
        ssql, sparams = _scope_sql(scope)
        with self._write() as db:
            lineages = json.dumps(
                [r[0] for r in db.execute(f"SELECT DISTINCT m.lineage_id FROM memories m WHERE {ssql}", sparams)]
            )
            rowids = [r[0] for r in db.execute(f"SELECT m.rowid FROM memories m WHERE {ssql}", sparams)]
            counts = self._purge_rowids(db, rowids)
            db.execute(
                "DELETE FROM memory_events WHERE tenant_id = ? AND lineage_id IN (SELECT value FROM json_each(?))",
                (scope.tenant_id, lineages),
            )
            events = db.changes()
            db.execute(f"DELETE FROM memory_events AS m WHERE {ssql}", sparams)  # events of already-purged memories
            events += db.changes()
            db.execute(f"DELETE FROM messages AS m WHERE {ssql}", sparams)
            messages = db.changes()
            db.execute(f"DELETE FROM jobs AS m WHERE {ssql}", sparams)
            jobs = db.changes()
            return counts.model_copy(update={"events": events, "messages": messages, "jobs": jobs})

    def _purge_rowids(self, db: Any, rowids: list[int]) -> PurgeCounts:
        ids = json.dumps(rowids)
        partitions = [
            r[0]
            for r in db.execute(
                "SELECT DISTINCT partition FROM memory_vectors WHERE memory_rowid IN (SELECT value FROM json_each(?))",
                (ids,),
            )
        ]
        db.execute("DELETE FROM memory_vectors WHERE memory_rowid IN (SELECT value FROM json_each(?))", (ids,))
        vectors = db.changes()
        bump_versions(db, partitions)
        keyword_rows = 0
        for rowid, tenant_id, user_id, text, valid_to in db.execute(
            "SELECT rowid, tenant_id, user_id, coalesce(index_text, text), valid_to FROM memories "
            "WHERE rowid IN (SELECT value FROM json_each(?))",
            (ids,),
        ).fetchall():
            self._unindex(db, rowid, partition_of(tenant_id, user_id), text, valid_to is None)
            keyword_rows += 1
        db.execute("DELETE FROM memories WHERE rowid IN (SELECT value FROM json_each(?))", (ids,))
        return PurgeCounts(memories=db.changes(), vectors=vectors, keyword_rows=keyword_rows)

    # -- messages ---------------------------------------------------------------------

    def messages(self, scope: Scope, limit: int | None) -> list[ChatMessage]:
        ssql, sparams = _scope_sql(scope)
        rows = (
            self._db()
            .execute(
                "SELECT m.id, m.role, m.content, m.name, m.user_id, m.agent_id, m.run_id, m.metadata, m.created_at "
                f"FROM messages m WHERE {ssql} ORDER BY m.rowid DESC LIMIT ?",
                (*sparams, -1 if limit is None else limit),
            )
            .fetchall()
        )
        return [_chat(r) for r in reversed(rows)]

    def delete_messages(self, scope: Scope) -> int:
        ssql, sparams = _scope_sql(scope)
        with self._write() as db:
            db.execute(f"DELETE FROM messages AS m WHERE {ssql}", sparams)
            return int(db.changes())

    def messages_by_id(self, tenant_id: str, ids: Sequence[str]) -> list[ChatMessage]:
        rows = (
            self._db()
            .execute(
                "SELECT m.id, m.role, m.content, m.name, m.user_id, m.agent_id, m.run_id, m.metadata, m.created_at "
                "FROM messages m WHERE +m.tenant_id = ? AND m.id IN (SELECT value FROM json_each(?))",
                (tenant_id, json.dumps(list(ids))),
            )
            .fetchall()
        )
        return _rows.in_order(ids, rows, _chat)

    # -- jobs -------------------------------------------------------------------------

    _JOB_COLUMNS = (
        "id, tenant_id, user_id, agent_id, run_id, kind, payload, status, attempts, max_attempts, run_after, "
        "last_error, result, created_at, updated_at"
    )

    def claim_job(self, now: int, lease: int, job_id: str | None = None) -> Job | None:
        with self._write() as db:
            row = db.execute(
                f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE ((status = 'queued' AND run_after <= ?) "
                "OR (status = 'running' AND locked_until < ?)) AND (? IS NULL OR id = ?) ORDER BY run_after LIMIT 1",
                (now, now, job_id, job_id),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', attempts = attempts + 1, locked_until = ?, updated_at = ? "
                "WHERE id = ?",
                (now + lease, now, row[0]),
            )
        job = _job(row)
        return Job(**{**job.__dict__, "status": "running", "attempts": job.attempts + 1})

    def release_job(self, job_id: str, error: str, retry_at: int | None, now: int) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = ?, run_after = coalesce(?, run_after), last_error = ?, "
                "locked_until = NULL, updated_at = ? WHERE id = ? AND status = 'running'",
                ("queued" if retry_at is not None else "dead", retry_at, error[:2000], now, job_id),
            )

    def list_jobs(self, tenant_id: str, status: str | None, limit: int) -> list[Job]:
        sql = f"SELECT {self._JOB_COLUMNS} FROM jobs WHERE tenant_id = ?"
        params: list[Any] = [tenant_id]
        if status is not None:
            sql += " AND status = ?"
            params.append(status)
        rows = self._db().execute(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)).fetchall()
        return [_job(r) for r in rows]

    def retry_job(self, tenant_id: str, job_id: str, now: int) -> bool:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, run_after = ?, updated_at = ? "
                "WHERE id = ? AND tenant_id = ? AND status IN ('dead', 'queued')",
                (now, now, job_id, tenant_id),
            )
            return bool(db.changes())

    def job_counts(self) -> dict[str, int]:
        rows = self._db().execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    # -- API keys ---------------------------------------------------------------------

    _KEY_COLUMNS = "id, tenant_id, name, prefix, admin, created_at, revoked_at"

    def create_api_key(self, key: ApiKey, secret_hash: str) -> None:
        with self._write() as db:
            if db.execute("SELECT 1 FROM api_keys WHERE id = ? OR secret_hash = ?", (key.id, secret_hash)).fetchone():
                raise StoreError(f"An API key with id {key.id!r} or the same secret already exists.")
            db.execute(
                f"INSERT INTO api_keys ({self._KEY_COLUMNS}, secret_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    key.tenant_id,
                    key.name,
                    key.prefix,
                    int(key.admin),
                    key.created_at,
                    key.revoked_at,
                    secret_hash,
                ),
            )

    def api_key_by_hash(self, secret_hash: str) -> ApiKey | None:
        row = (
            self._db()
            .execute(f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE secret_hash = ?", (secret_hash,))
            .fetchone()
        )
        return None if row is None else _api_key(row)

    def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        rows = (
            self._db()
            .execute(
                f"SELECT {self._KEY_COLUMNS} FROM api_keys WHERE ? IS NULL OR tenant_id = ? ORDER BY created_at, id",
                (tenant_id, tenant_id),
            )
            .fetchall()
        )
        return [_api_key(r) for r in rows]

    def revoke_api_key(self, key_id: str, at: int, tenant_id: str | None = None) -> bool:
        with self._write() as db:
            db.execute(
                "UPDATE api_keys SET revoked_at = ? "
                "WHERE id = ? AND revoked_at IS NULL AND (? IS NULL OR tenant_id = ?)",
                (at, key_id, tenant_id, tenant_id),
            )
            return bool(db.changes())

    # -- export and import ------------------------------------------------------------

    def export_rows(self, tenant_id: str) -> Iterator[dict[str, Any]]:
        db = self._db()
        db.execute("BEGIN")  # one snapshot for the whole export
        try:
            for r in db.execute(
                f"SELECT {_rows.columns(MEMORY_FIELDS, 'm.')}, v.embedding, v.facets "
                "FROM memories m JOIN memory_vectors v ON v.memory_rowid = m.rowid "
                "WHERE m.tenant_id = ? ORDER BY m.rowid",
                (tenant_id,),
            ):
                memory = _rows.exported("memory", MEMORY_FIELDS, r[:-2], json.loads)
                yield {**memory, "embedding": base64.b64encode(r[-2]).decode(), "facets": _rows.facets_b64(r[-1])}
            for kind, table, fields in (
                ("event", "memory_events", EVENT_FIELDS),
                ("message", "messages", MESSAGE_FIELDS),
            ):
                for r in db.execute(
                    f"SELECT {_rows.columns(fields)} FROM {table} WHERE tenant_id = ? ORDER BY rowid", (tenant_id,)
                ):
                    yield _rows.exported(kind, fields, r, json.loads)
        finally:
            db.execute("COMMIT")

    def import_rows(self, tenant_id: str, rows: Sequence[dict[str, Any]], embeddings: Vector) -> int:
        inserted = 0
        vectors = iter(embeddings)
        with self._write() as db:
            touched: set[str] = set()
            for row in rows:
                kind = row["type"]
                if kind == "memory":
                    touched.add(self._import_memory(db, tenant_id, row, next(vectors)))
                    inserted += 1
                elif kind == "event":
                    db.execute(_IMPORT_EVENT, _rows.imported(tenant_id, EVENT_FIELDS, row))
                    inserted += 1
                elif kind == "message":
                    db.execute(_IMPORT_MESSAGE, _rows.imported(tenant_id, MESSAGE_FIELDS, row))
                    inserted += db.changes()
            bump_versions(db, touched, reset=True)  # not only appends: imported rows may be of any age
        return inserted

    def _import_memory(self, db: Any, tenant_id: str, row: dict[str, Any], vector: Vector) -> str:
        db.execute(_IMPORT_MEMORY, _rows.imported(tenant_id, MEMORY_FIELDS, row))
        rowid = db.last_insert_rowid()
        partition = partition_of(tenant_id, row["user_id"])
        current = row["valid_to"] is None
        db.execute(
            "INSERT INTO memory_vectors (memory_rowid, partition, embedding, agent_id, run_id, valid_from, "
            "valid_to, facets) VALUES (?,?,?,?,?,?,?,?)",
            (
                rowid,
                partition,
                to_blob(vector),
                row["agent_id"] or "",
                row["run_id"] or "",
                row["valid_from"],
                OPEN_END if current else row["valid_to"],
                facets_blob(row.get("facets")),
            ),
        )
        self._index(db, rowid, partition, row.get("index_text") or row["text"], current)
        return partition

    # -- integrity --------------------------------------------------------------------

    def check_integrity(self) -> list[str]:
        db = self._db()
        problems = [f"sqlite: {r[0]}" for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
        checks = {
            "memory without a vector": "SELECT m.id FROM memories m WHERE NOT EXISTS "
            "(SELECT 1 FROM memory_vectors v WHERE v.memory_rowid = m.rowid)",
            "vector without a memory": "SELECT v.memory_rowid FROM memory_vectors v WHERE NOT EXISTS "
            "(SELECT 1 FROM memories m WHERE m.rowid = v.memory_rowid)",
            "memory without a keyword row": "SELECT m.id FROM memories m WHERE NOT EXISTS "
            "(SELECT 1 FROM memory_fts_docsize d WHERE d.id = m.rowid)",
            "keyword row without a memory": "SELECT d.id FROM memory_fts_docsize d WHERE NOT EXISTS "
            "(SELECT 1 FROM memories m WHERE m.rowid = d.id)",
            "memory without events": "SELECT m.id FROM memories m WHERE NOT EXISTS "
            "(SELECT 1 FROM memory_events e WHERE e.memory_id = m.id)",
            "superseded_by points nowhere": "SELECT m.id FROM memories m WHERE m.superseded_by IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM memories n WHERE n.id = m.superseded_by)",
            "vector validity differs from memory": "SELECT m.id FROM memories m JOIN memory_vectors v "
            f"ON v.memory_rowid = m.rowid WHERE v.valid_to != coalesce(m.valid_to, {OPEN_END})",
            "facets of the wrong size": "SELECT m.id FROM memories m JOIN memory_vectors v ON v.memory_rowid = m.rowid "
            f"WHERE v.facets IS NOT NULL AND (length(v.facets) = 0 OR length(v.facets) % {4 * self.dimensions} != 0)",
        }
        for label, sql in checks.items():
            problems += [f"{label}: {r[0]}" for r in db.execute(sql)]
        counted = {
            term_prefix(partition_of(tenant_id, user_id), bool(current)): int(n)
            for tenant_id, user_id, current, n in db.execute(
                "SELECT tenant_id, user_id, valid_to IS NULL, count(*) FROM memories GROUP BY 1, 2, 3"
            )
        }
        kept = {str(r[0]): int(r[1]) for r in db.execute("SELECT prefix, docs FROM keyword_stats WHERE docs != 0")}
        if counted != kept:
            problems.append("keyword statistics differ from the memories they count")
        return problems

    def counts(self) -> dict[str, int]:
        """Row counts per table, for diagnostics and tests."""
        db = self._db()
        return {
            table: int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
            for table in ("memories", "memory_events", "messages", "jobs", "memory_vectors", "memory_fts_docsize")
        }


def _count_stats(db: Any, prefix: str, docs: int, tokens: int) -> None:
    db.execute(
        "INSERT INTO keyword_stats VALUES (?, ?, ?) ON CONFLICT (prefix) DO UPDATE "
        "SET docs = docs + excluded.docs, tokens = tokens + excluded.tokens",
        (prefix, docs, tokens),
    )


def _bm25(api: apsw.FTS5ExtensionApi, *args: apsw.SQLiteValue) -> float:
    """BM25 (k1 = 1.2, b = 0.75) with per-phrase [idf, average length] passed in as JSON.

    FTS5's built-in bm25() takes N and the average length from the whole table, so a user's
    scores would shift as other users write; the caller computes them per partition from
    `keyword_stats` and the prefixed terms' document frequencies (see `SQLiteStore._phrases`).
    """
    params = api.aux_data
    if params is None:
        params = api.aux_data = json.loads(str(args[0]))
    norm = BM25_K1 * (1.0 - BM25_B), BM25_K1 * BM25_B * api.column_size(0)
    score = 0.0
    for i, (idf, avgdl) in enumerate(params):
        tf = len(api.phrase_locations(i)[0])
        if tf:
            score += idf * tf * (BM25_K1 + 1.0) / (tf + norm[0] + norm[1] / avgdl)
    return score


def _record(r: Sequence[Any]) -> MemoryRecord:
    return _rows.record(r, json.loads)


def _chat(r: Sequence[Any]) -> ChatMessage:
    return _rows.chat(r, json.loads)


def _job(r: Sequence[Any]) -> Job:
    return _rows.job(r, json.loads)


_api_key = _rows.api_key


def _scope_sql(scope: Scope, alias: str = "m", *, lookup: bool = False) -> tuple[str, list[Any]]:
    """The scope as SQL. With `lookup`, the columns are written `+col` so that SQLite keeps using the
    rowid/id lookup the query is built on instead of scanning a scope index (it has no statistics)."""
    plus = "+" if lookup else ""
    parts = [f"{plus}{alias}.tenant_id = ?"]
    params: list[Any] = [scope.tenant_id]
    for column in ("user_id", "agent_id", "run_id"):
        value = getattr(scope, column)
        if value is not None:
            parts.append(f"{plus}{alias}.{column} = ?")
            params.append(value)
    return "(" + " AND ".join(parts) + ")", params


def _validity_sql(as_of: int | None) -> tuple[str, list[Any]]:
    if as_of is None:
        return "m.valid_to IS NULL", []
    return "(m.valid_from <= ? AND (m.valid_to IS NULL OR m.valid_to > ?))", [as_of, as_of]


# -- filters -> SQL -------------------------------------------------------------------------


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
    return f"coalesce({sql}, 0)", params


def _compile_condition(c: Condition) -> tuple[str, list[Any]]:
    if c.column is not None:
        return _compile_column(c)
    path = "$" + "".join(f'."{segment}"' for segment in c.path)
    value_sql, type_sql = "json_extract(m.metadata, ?)", "json_type(m.metadata, ?)"
    if c.op in ("eq", "ne"):
        sql, params = _json_eq(value_sql, type_sql, path, c.value)
        return (sql, params) if c.op == "eq" else (f"(NOT {sql})", params)
    if c.op in ("in", "nin"):
        parts = [_json_eq(value_sql, type_sql, path, v) for v in c.value]
        sql = "(" + " OR ".join(s for s, _ in parts) + ")"
        params = [p for _, ps in parts for p in ps]
        return (sql, params) if c.op == "in" else (f"(NOT {sql})", params)
    if c.op == "contains":
        element, eparams = _json_eq("je.value", "je.type", None, c.value)
        sql = f"({type_sql} = 'array' AND EXISTS (SELECT 1 FROM json_each(m.metadata, ?) je WHERE {element}))"
        params = [path, path, *eparams]
        if isinstance(c.value, str):
            sql = f"(({type_sql} = 'text' AND instr({value_sql}, ?) > 0) OR {sql})"
            params = [path, path, c.value, *params]
        return sql, params
    operator = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
    types = "('integer', 'real')" if isinstance(c.value, int | float) else "('text')"
    return f"({type_sql} IN {types} AND {value_sql} {operator} ?)", [path, path, c.value]


def _json_eq(value_sql: str, type_sql: str, path: str | None, value: Any) -> tuple[str, list[Any]]:
    """Type-strict equality of a JSON value; `path` is bound once per placeholder when given."""
    bind = [] if path is None else [path]
    if value is None:
        return f"({type_sql} IS NULL OR {type_sql} = 'null')", bind * 2
    if isinstance(value, bool):
        return f"coalesce({type_sql} = '{'true' if value else 'false'}', 0)", bind
    types = "('integer', 'real')" if isinstance(value, int | float) else "('text')"
    return f"coalesce({type_sql} IN {types} AND {value_sql} = ?, 0)", [*bind, *bind, value]


def _compile_column(c: Condition) -> tuple[str, list[Any]]:
    column = f"m.{c.column}"
    if c.op == "eq":
        return f"({column} IS ?)", [c.value]
    if c.op == "ne":
        return f"({column} IS NOT ?)", [c.value]
    if c.op in ("in", "nin"):
        marks = ", ".join("?" for _ in c.value)
        sql = f"({column} IN ({marks}))"
        return (sql, list(c.value)) if c.op == "in" else (f"({column} IS NULL OR NOT {sql})", list(c.value))
    if c.op == "contains":
        return f"(instr({column}, ?) > 0)", [str(c.value)]
    operator = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}[c.op]
    return f"({column} {operator} ?)", [c.value]
