"""Exact per-user vector search in numpy over a per-process cache, validated by a version row.

Both stores work this way. A search loads the user's partition (tenant and
user) into a numpy matrix once and keeps it in a per-process LRU cache; every
write bumps the partition's row in `partition_versions` in the same
transaction, and each search reads that version (a primary-key lookup) before
trusting its cached copy. So processes sharing the database stay consistent,
and a warm search is one matrix-vector product: about 0.5 ms for 10k x 384 on
one core, where sqlite-vec's vec0 scan took 16-30 ms from the same file and
PostgreSQL's exact scan of the user's index entries ~12 ms. The search is
exact: no approximate index, no recall loss.

In SQLite the vectors live in the `memory_vectors` table, one row per memory
version, with its partition, agent, run and validity, and a partition holds
every version (so `as_of` searches use it too). PostgreSQL caches a user's
current memories only, with their ids and expiry, so a warm search needs no
query besides the version's; `as_of` searches run in SQL (postgres.py).

A partition cached at an earlier version is brought up to date rather than read
again when the user only gained memories since: writers that delete, purge,
import or rewrite memories also set the row's `reset` to the new version,
so while `reset` stays what the cached copy saw, the rows numbered above its
`max_seq` are all that changed, and are read and appended (`Partition.extended`;
the chat loop "search, add, search" then reads one row, not the user's
partition). Memories that were only ended (superseded, invalidated) do not move
`reset`: SQLite's triggers mark them in `ended` (sqlite_schema `_m007`; purges
too since `_m008`, as rowids are never given twice) and a cached copy re-reads
its rows' validity from an index (`Partition.revalidated`, `Partition.masked`);
PostgreSQL's writers log them with the version (postgres_schema `_m005`) and a
cached copy applies the log (`Partition.with_ended`). After any other change
SQLite reads the partition again and PostgreSQL reads which memories remain
(`Partition.restricted`).

A verbatim user turn may carry facets, the vectors of its sentences
(`retain.indexing.facet_texts`): a partition holds them beside its rows and a
row scores as its best vector (`Partition.scores`, `Partition.row_scores`),
and so does a memory read from the table (`stored_scores`). Only PostgreSQL's
searches across users (exact KNN in SQL) use each memory's own vector alone.

The cache's lock guards only the dictionary: partitions are read from the
database outside it and swapped in under it, so no thread (or greenlet) ever
holds it across I/O.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from .sqlite_schema import OPEN_END

DEFAULT_CACHE_BYTES = 512 * 1024 * 1024
NO_EXPIRY = np.iinfo(np.int64).max


@dataclass(frozen=True)
class Partition:
    """One partition's vectors and the columns a search filters on."""

    version: int
    rowids: npt.NDArray[np.int64]
    matrix: npt.NDArray[np.float32]
    agent: npt.NDArray[np.object_]
    run: npt.NDArray[np.object_]
    valid_from: npt.NDArray[np.int64]
    valid_to: npt.NDArray[np.int64]
    #: The memory ids by row, when the store answers from the cache without mapping rowids in SQL.
    ids: npt.NDArray[np.object_] | None = None
    #: Expiry times by row (NO_EXPIRY for none), when the store checks expiry here rather than in SQL.
    expires_at: npt.NDArray[np.int64] | None = None
    #: Row of each id in `ids`, to answer lookups of stored vectors by id.
    rows_by_id: dict[str, int] | None = None
    #: The version of the partition's last change that was not an append, and the highest row number
    #: held (PostgreSQL's `seq`, SQLite's rowid). While the first stays put, the partition is brought up
    #: to date by appending the rows numbered above the second.
    reset: int = 0
    max_seq: int = 0
    #: SQLite: the version of the partition's last change that only ended rows (set their `valid_to`). While
    #: `reset` stays put and this moves, the rows are the same and only their validity is read again.
    ended: int = 0
    #: Whether `rowids` are positions (0..n-1, renumbered when rows are appended or dropped) rather than
    #: the store's own row numbers (kept as they are).
    positional: bool = False
    #: Facet vectors (one per sentence of a memory of several, see `retain.indexing.facet_texts`) and the
    #: row each belongs to, in row order; a row scores as its best vector.
    facets: npt.NDArray[np.float32] | None = None
    facet_rows: npt.NDArray[np.int64] | None = None

    @property
    def nbytes(self) -> int:
        per_row = 16 + (0 if self.ids is None else 80) + (0 if self.expires_at is None else 8)
        per_row += 0 if self.rows_by_id is None else 100
        facets = 0 if self.facets is None or self.facet_rows is None else self.facets.nbytes + self.facet_rows.nbytes
        return int(self.matrix.nbytes + self.rowids.nbytes * 3 + len(self.rowids) * per_row + facets)

    def extended(self, extra: Partition) -> Partition:
        """This partition with `extra`'s rows appended (a later version of the same partition, its rows
        numbered above `max_seq`); `extra` gives the version and `reset`."""
        n = len(self.rowids)
        rows_by_id = None
        if self.rows_by_id is not None and extra.rows_by_id is not None:
            rows_by_id = self.rows_by_id | {id: n + row for id, row in extra.rows_by_id.items()}
        return replace(
            extra,
            rowids=np.concatenate([self.rowids, extra.rowids + (n if self.positional else 0)]),
            matrix=np.concatenate([self.matrix, extra.matrix]),
            agent=np.concatenate([self.agent, extra.agent]),
            run=np.concatenate([self.run, extra.run]),
            valid_from=np.concatenate([self.valid_from, extra.valid_from]),
            valid_to=np.concatenate([self.valid_to, extra.valid_to]),
            ids=joined(self.ids, extra.ids),
            expires_at=joined(self.expires_at, extra.expires_at),
            rows_by_id=rows_by_id,
            max_seq=max(self.max_seq, extra.max_seq),
            positional=self.positional,
            facets=joined_facets(self.facets, extra.facets),
            facet_rows=joined_facets(self.facet_rows, None if extra.facet_rows is None else extra.facet_rows + n),
        )

    def revalidated(self, ends: Sequence[tuple[int, int]]) -> Partition | None:
        """These rows with the (rowid, valid_to) of `ends`, the rows read again in rowid order, and without
        the rows `ends` no longer has (purged); None if `ends` has a row these do not (then read the partition
        whole)."""
        rowids = np.fromiter((r[0] for r in ends), dtype=np.int64, count=len(ends))
        valid_to = np.fromiter((r[1] for r in ends), dtype=np.int64, count=len(ends))
        if np.array_equal(rowids, self.rowids):
            return replace(self, valid_to=valid_to)
        keep = np.isin(self.rowids, rowids)
        return self.masked(keep, valid_to) if int(keep.sum()) == len(rowids) else None

    def restricted(self, valid_to: dict[str, int | None]) -> Partition:
        """The rows whose id is in `valid_to`, with that validity end (None: current); the rest dropped."""
        assert self.ids is not None
        keep = np.fromiter((id in valid_to for id in self.ids.tolist()), dtype=np.bool_, count=len(self.ids))
        ends = (OPEN_END if valid_to[id] is None else valid_to[id] for id in self.ids[keep].tolist())
        return self.masked(keep, np.fromiter(ends, dtype=np.int64, count=int(keep.sum())))

    def with_ended(self, ends: dict[str, int | None], keep: bool) -> Partition:
        """These rows once the memories in `ends` (id -> valid_to; None: removed) were ended: kept with that
        validity end (`keep`: a partition of every version) or dropped (a partition of current memories, and
        removed ones always)."""
        assert self.ids is not None and self.rows_by_id is not None
        held = [id for id in ends if id in self.rows_by_id]
        if not held:
            return self
        valid_to = self.valid_to.copy()
        left = np.ones(len(self.rowids), dtype=np.bool_)
        for id in held:
            end, row = ends[id], self.rows_by_id[id]
            if keep and end is not None:
                valid_to[row] = end
            else:
                left[row] = False
        return replace(self, valid_to=valid_to) if left.all() else self.masked(left, valid_to[left])

    def masked(self, keep: npt.NDArray[np.bool_], valid_to: npt.NDArray[np.int64]) -> Partition:
        """The rows in `keep`, with the validity ends `valid_to` (one per kept row); the rest dropped."""
        ids = None if self.ids is None else self.ids[keep]
        facets, facet_rows = self.facets, self.facet_rows
        if facets is not None and facet_rows is not None:
            kept = keep[facet_rows]
            facets, facet_rows = facets[kept], (np.cumsum(keep) - 1)[facet_rows[kept]]
        return replace(
            self,
            rowids=np.arange(int(keep.sum()), dtype=np.int64) if self.positional else self.rowids[keep],
            matrix=self.matrix[keep],
            agent=self.agent[keep],
            run=self.run[keep],
            valid_from=self.valid_from[keep],
            valid_to=valid_to,
            ids=ids,
            expires_at=None if self.expires_at is None else self.expires_at[keep],
            rows_by_id=None if ids is None or self.rows_by_id is None else {id: r for r, id in enumerate(ids.tolist())},
            facets=facets,
            facet_rows=facet_rows,
        )

    def scores(
        self, query: npt.NDArray[np.float32], mask: npt.NDArray[np.bool_] | None = None
    ) -> npt.NDArray[np.float32]:
        """Each row's cosine to `query` (of the rows in `mask`, when given): its best over the memory's vector
        and its facets."""
        if self.facets is None or self.facet_rows is None:
            return _scores(self.matrix if mask is None else self.matrix[mask], query)
        out = _scores(self.matrix, query)
        np.maximum.at(out, self.facet_rows, _scores(self.facets, query))
        return out if mask is None else out[mask]

    def row_scores(self, rows: npt.NDArray[np.int64], query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """The cosine to `query` of the rows at positions `rows` (distinct), each scored as `scores` does."""
        out = _scores(self.matrix[rows], query)
        if self.facets is not None and self.facet_rows is not None and len(rows):
            held = np.isin(self.facet_rows, rows)
            if held.any():
                order = np.argsort(rows)
                place = order[np.searchsorted(rows[order], self.facet_rows[held])]
                np.maximum.at(out, place, _scores(self.facets[held], query))
        return out

    def mask(
        self, agent_id: str | None, run_id: str | None, as_of: int | None, now: int | None = None
    ) -> npt.NDArray[np.bool_]:
        if as_of is None:
            keep: npt.NDArray[np.bool_] = self.valid_to == OPEN_END
        else:
            keep = (self.valid_from <= as_of) & (self.valid_to > as_of)
        if now is not None and self.expires_at is not None:
            keep &= self.expires_at > now
        return keep & self.scope_mask(agent_id, run_id)

    def scope_mask(self, agent_id: str | None, run_id: str | None) -> npt.NDArray[np.bool_]:
        """The rows of the agent and run (each when given), whatever their validity."""
        keep = np.ones(len(self.rowids), dtype=np.bool_)
        if agent_id is not None:
            keep &= self.agent == agent_id
        if run_id is not None:
            keep &= self.run == run_id
        return keep


def current_partition(
    version: int,
    matrix: npt.NDArray[np.float32],
    *,
    ids: npt.NDArray[np.object_],
    agent: npt.NDArray[np.object_],
    run: npt.NDArray[np.object_],
    expires_at: npt.NDArray[np.int64],
    reset: int = 0,
    max_seq: int = 0,
) -> Partition:
    """A partition of current memories only, rows named by position (`ids[rowid]`)."""
    n = len(matrix)
    return Partition(
        version=version,
        rowids=np.arange(n, dtype=np.int64),
        matrix=matrix,
        agent=agent,
        run=run,
        valid_from=np.zeros(n, dtype=np.int64),
        valid_to=np.full(n, OPEN_END, dtype=np.int64),
        ids=ids,
        expires_at=expires_at,
        rows_by_id={id: row for row, id in enumerate(ids.tolist())},
        reset=reset,
        max_seq=max_seq,
        positional=True,
    )


def joined(a: npt.NDArray[Any] | None, b: npt.NDArray[Any] | None) -> npt.NDArray[Any] | None:
    """Two optional columns one after the other (None when either partition lacks the column)."""
    return None if a is None or b is None else np.concatenate([a, b])


def joined_facets(a: npt.NDArray[Any] | None, b: npt.NDArray[Any] | None) -> npt.NDArray[Any] | None:
    """Two partitions' facet columns one after the other (either may have none)."""
    return b if a is None else a if b is None else np.concatenate([a, b])


def facet_columns(
    blobs: Sequence[bytes | None], dimensions: int
) -> tuple[npt.NDArray[np.float32] | None, npt.NDArray[np.int64] | None]:
    """The facet matrix and owning rows of a partition's rows, from each row's stored facets (None: none).

    Facets of the wrong size (a damaged row, which `check_integrity` reports) are left out, so the
    user's searches go on with that memory's own vector."""
    stride = 4 * dimensions
    held = [(row, blob) for row, blob in enumerate(blobs) if blob and len(blob) % stride == 0]
    if not held:
        return None, None
    matrix = np.frombuffer(b"".join(blob for _, blob in held), dtype=np.float32).reshape(-1, dimensions)
    counts = [len(blob) // stride for _, blob in held]
    rows = np.repeat(np.fromiter((row for row, _ in held), dtype=np.int64, count=len(held)), counts)
    return matrix, rows


def stored_scores(
    stored: dict[str, tuple[npt.NDArray[np.float32], bytes | None]], query: npt.NDArray[np.float32], dimensions: int
) -> dict[str, float]:
    """The cosine to `query` of memories read from the store (id: their vector and stored facets), computed
    as `Partition.scores` computes it (damaged facets left out as `facet_columns` leaves them)."""
    if not stored:
        return {}
    vectors = np.array([vector for vector, _ in stored.values()], dtype=np.float32).reshape(-1, dimensions)
    out = _scores(vectors, query)
    matrix, rows = facet_columns([facets for _, facets in stored.values()], dimensions)
    if matrix is not None and rows is not None:
        np.maximum.at(out, rows, _scores(matrix, query))
    return dict(zip(stored, out.tolist(), strict=True))


def facets_blob(facets: npt.NDArray[np.floating] | None) -> bytes | None:
    """Facet vectors as stored: float32 rows, each unit length (None for none)."""
    if facets is None or len(facets) == 0:
        return None
    return b"".join(to_blob(v) for v in np.asarray(facets, dtype=np.float32))


class VectorCache:
    """Partitions by name, least recently used evicted beyond `max_bytes`. Thread-safe."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self._max = max_bytes
        self._entries: OrderedDict[str, Partition] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def max_bytes(self) -> int:
        return self._max

    @property
    def cached_bytes(self) -> int:
        return self._bytes

    def get(self, name: str, version: int) -> Partition | None:
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.version != version:
                return None
            self._entries.move_to_end(name)
            return entry

    def peek(self, name: str) -> Partition | None:
        """The cached partition, whatever its version (to bring it up to date)."""
        with self._lock:
            return self._entries.get(name)

    def recent(self, prefix: str, limit: int) -> list[tuple[str, Partition]]:
        """Up to `limit` cached partitions whose names start with `prefix`, most recently used first."""
        with self._lock:
            found = []
            for name in reversed(self._entries):
                if name.startswith(prefix):
                    found.append((name, self._entries[name]))
                    if len(found) == limit:
                        break
            return found

    def put(self, name: str, partition: Partition) -> None:
        with self._lock:
            current = self._entries.get(name)
            if current is not None and current.version > partition.version:
                return  # a concurrent search already cached a newer snapshot
            old = self._entries.pop(name, None)
            if old is not None:
                self._bytes -= old.nbytes
            if partition.nbytes > self._max:
                return
            self._entries[name] = partition
            self._bytes += partition.nbytes
            while self._bytes > self._max:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes


def version_of(db: Any, name: str) -> int:
    return versions_of(db, name)[0]


def versions_of(db: Any, name: str) -> tuple[int, int, int]:
    """The partition's version, `reset` (the version of its last change that did more than add or end rows)
    and `ended` (of its last change that ended rows; SQLite only)."""
    row = db.execute("SELECT version, reset, ended FROM partition_versions WHERE partition = ?", (name,)).fetchone()
    return (0, 0, 0) if row is None else (int(row[0]), int(row[1]), int(row[2]))


def bump_versions(db: Any, names: Iterable[str], *, reset: bool = False) -> None:
    """Mark partitions changed; call inside the write transaction that changed them.

    `reset`: the change did more than add rows, so a cached copy must not just be appended to. SQLite's
    triggers (sqlite_schema `_m006`-`_m008`) already mark every row rewritten, ended or deleted; writers
    pass it for changes the triggers cannot tell from additions (imports).
    """
    db.executemany(
        "INSERT INTO partition_versions (partition, version, reset) VALUES (?, 1, ?) "
        "ON CONFLICT (partition) DO UPDATE SET version = version + 1, "
        "reset = CASE WHEN excluded.reset = 0 THEN reset ELSE version + 1 END",
        [(name, int(reset)) for name in set(names)],
    )


def load_partition(db: Any, cache: VectorCache, name: str, dimensions: int) -> Partition:
    """The partition as of the connection's current snapshot, from the cache when it is current.

    When the cached copy is of an earlier version and the partition has only gained rows since (its
    `reset` has not moved), just the rows numbered above the copy's `max_seq` are read and appended:
    memories take rowids above every row there is or was (sqlite_schema `NEXT_MEMORY_ROWID`), so the
    partition's new rows are exactly those. If rows were also ended or purged since (`ended` moved), the
    validity of the copy's rows is read again too, and the purged ones dropped. Otherwise it is read
    whole. Inside a write transaction the result is not cached: it may hold rows that roll back.
    """
    cacheable = not db.in_transaction
    sql = (
        "SELECT memory_rowid, agent_id, run_id, valid_from, valid_to, embedding, facets FROM memory_vectors "
        "WHERE partition = ?"
    )
    with db:  # one snapshot for the version and the rows (a savepoint inside a write transaction)
        version, reset, ended = versions_of(db, name)
        cached = cache.get(name, version)
        if cached is not None:
            return cached
        base = cache.peek(name)
        if base is not None and (base.version > version or base.reset != reset):
            base = None
        if base is not None and base.ended != ended:
            ends = db.execute(
                "SELECT memory_rowid, valid_to FROM memory_vectors WHERE partition = ? AND memory_rowid <= ? "
                "ORDER BY memory_rowid",
                (name, base.max_seq),
            ).fetchall()
            base = base.revalidated(ends)
        if base is None:
            rows = db.execute(sql + " ORDER BY memory_rowid", (name,)).fetchall()
        else:
            rows = db.execute(sql + " AND memory_rowid > ? ORDER BY memory_rowid", (name, base.max_seq)).fetchall()
    matrix = np.frombuffer(b"".join(r[5] for r in rows), dtype=np.float32).reshape(len(rows), dimensions)
    facets, facet_rows = facet_columns([r[6] for r in rows], dimensions)
    partition = Partition(
        version=version,
        rowids=np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)),
        matrix=matrix,
        agent=np.array([r[1] for r in rows], dtype=object),
        run=np.array([r[2] for r in rows], dtype=object),
        valid_from=np.fromiter((r[3] for r in rows), dtype=np.int64, count=len(rows)),
        valid_to=np.fromiter((r[4] for r in rows), dtype=np.int64, count=len(rows)),
        reset=reset,
        ended=ended,
        max_seq=int(rows[-1][0]) if rows else 0,
        facets=facets,
        facet_rows=facet_rows,
    )
    if base is not None:
        partition = base.extended(partition)
    if cacheable:
        cache.put(name, partition)
    return partition


def top_k(
    partitions: list[Partition],
    masks: list[npt.NDArray[np.bool_]],
    query: npt.NDArray[np.float32],
    k: int,
) -> list[tuple[int, float]]:
    """The `k` most similar (rowid, cosine) pairs over the masked rows, best first."""
    rowids: list[npt.NDArray[np.int64]] = []
    scores: list[npt.NDArray[np.float32]] = []
    for partition, mask in zip(partitions, masks, strict=True):
        if mask.all():
            rowids.append(partition.rowids)
            scores.append(partition.scores(query))
        elif mask.any():
            rowids.append(partition.rowids[mask])
            scores.append(partition.scores(query, mask))
    if not rowids:
        return []
    all_rowids = np.concatenate(rowids)
    all_scores = np.concatenate(scores)
    best = np.argpartition(-all_scores, k - 1)[:k] if len(all_scores) > k else np.arange(len(all_scores))
    best = best[np.argsort(-all_scores[best], kind="stable")]
    return [(int(all_rowids[i]), float(all_scores[i])) for i in best]


#: OpenBLAS runs a matrix-vector product this small on one thread. Larger products fan out to every
#: core, and on a busy machine the threads wait on each other: measured here at load 5 on 2 cores,
#: 10k x 384 took 0.2 ms p50 but 8 ms p95 in one call, and 0.8 ms p50 / 1.3 ms p95 in 1024-row blocks.
GEMV_ROWS = 1024


def _scores(matrix: npt.NDArray[np.float32], query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    out = np.empty(len(matrix), dtype=np.float32)
    for start in range(0, len(matrix), GEMV_ROWS):
        np.matmul(matrix[start : start + GEMV_ROWS], query, out=out[start : start + GEMV_ROWS])
    return out


def to_blob(vector: npt.NDArray[np.floating]) -> bytes:
    """Stored vectors are float32 and unit length, so a dot product is the cosine.

    Embedders already return unit vectors; those are stored bit for bit (so export and import round-trip).
    """
    v = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(v))
    if norm > 0 and abs(norm - 1.0) > 1e-3:
        v = (v / norm).astype(np.float32)
    return v.tobytes()
