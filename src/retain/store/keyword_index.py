"""Per-user BM25 in numpy over a per-process cache of each user's term postings.

Both stores use it for searches of a user's current memories (scopes without a
user, and SQLite's `as_of` searches, stay in SQL).

BM25 needs every memory of the user that holds a query term: its document
frequency and average length come from all of them. In SQL that means reading
each match's `tsvector` from the heap and ranking it, and a common word matches
thousands of a large user's memories (measured at 10k memories per user: 18 ms
p50, 47 ms p95 per keyword search). Instead the store loads a user's lexemes
and their counts once into postings (CSR arrays) and keeps them in the same
LRU cache as the vectors, validated by the same version row (see
vector_index.py). A warm search is one round trip (the version and the query's
lexemes) and a few array operations over the query terms' postings.

The scores are the ones `postgres._bm25_sql` computes (it still serves scopes
without a user): Okapi BM25 with k1 = 1.2 and b = 0.75, N the number of memory
versions in scope, document frequency and average length over the matches that
pass the filters, document length the number of distinct lexemes. Term
frequencies are exact here, where the SQL recovers them from `ts_rank`.

SQLite (`partition_top_k`) scores as its FTS5 path's `retain_bm25` does, from the
postings of the user's current memories tokenised as they were indexed
(`from_tokens`): N, the document frequencies and the average length are over
all of them (what the `keyword_stats` row and the prefixed terms in
`memory_fts_vocab` count), whatever the scope's agent, run, filters and expiry
then drop, and a document's length counts every token. Where FTS5 only
rescores the 200 rows its table-wide bm25() ranks first, this ranks every
match, so a common word cannot push a better match out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt

from .sqlite_schema import OPEN_END
from .vector_index import NO_EXPIRY, Partition, joined

K1 = 1.2
B = 0.75


@dataclass(frozen=True)
class Postings(Partition):
    """A user's memory versions (rows, as in `Partition`, with no vectors) and their term postings."""

    #: Lexeme -> its position in `offsets`.
    vocabulary: dict[str, int] | None = None
    #: Postings of lexeme i: rows `docs[offsets[i]:offsets[i + 1]]`, with counts `counts[...]`.
    offsets: npt.NDArray[np.int64] | None = None
    docs: npt.NDArray[np.int32] | None = None
    counts: npt.NDArray[np.float32] | None = None
    #: Distinct lexemes per row.
    lengths: npt.NDArray[np.float32] | None = None

    @property
    def nbytes(self) -> int:
        assert self.docs is not None and self.vocabulary is not None
        return super().nbytes + self.docs.nbytes * 2 + len(self.vocabulary) * 100 + len(self.rowids) * 4

    def extended(self, extra: Partition) -> Postings:
        """These postings with `extra`'s rows appended: the vocabularies merged, the CSR arrays rebuilt."""
        assert isinstance(extra, Postings) and extra.vocabulary is not None and extra.offsets is not None
        assert self.vocabulary is not None and self.offsets is not None and self.docs is not None
        assert extra.docs is not None and self.counts is not None and extra.counts is not None
        assert self.lengths is not None and extra.lengths is not None
        vocabulary = dict(self.vocabulary)
        remap = np.fromiter((vocabulary.setdefault(lexeme, len(vocabulary)) for lexeme in extra.vocabulary), np.int64)
        codes = np.concatenate(
            [
                np.repeat(np.arange(len(self.vocabulary), dtype=np.int64), np.diff(self.offsets)),
                remap[np.repeat(np.arange(len(extra.vocabulary), dtype=np.int64), np.diff(extra.offsets))],
            ]
        )
        order = np.argsort(codes, kind="stable")
        offsets = np.zeros(len(vocabulary) + 1, dtype=np.int64)
        np.cumsum(np.bincount(codes, minlength=len(vocabulary)), out=offsets[1:])
        rows = super().extended(extra)
        assert isinstance(rows, Postings)
        return replace(
            rows,
            vocabulary=vocabulary,
            offsets=offsets,
            docs=np.concatenate([self.docs, extra.docs + len(self.rowids)])[order],
            counts=np.concatenate([self.counts, extra.counts])[order],
            lengths=np.concatenate([self.lengths, extra.lengths]),
        )

    def masked(self, keep: npt.NDArray[np.bool_], valid_to: npt.NDArray[np.int64]) -> Postings:
        """As `Partition.masked`, with the dropped rows' postings removed."""
        assert self.vocabulary is not None and self.offsets is not None and self.docs is not None
        assert self.counts is not None and self.lengths is not None
        rows = super().masked(keep, valid_to)
        assert isinstance(rows, Postings)
        position = np.cumsum(keep) - 1
        entries = keep[self.docs]
        codes = np.repeat(np.arange(len(self.vocabulary), dtype=np.int64), np.diff(self.offsets))[entries]
        offsets = np.zeros(len(self.vocabulary) + 1, dtype=np.int64)
        np.cumsum(np.bincount(codes, minlength=len(self.vocabulary)), out=offsets[1:])
        return replace(
            rows,
            offsets=offsets,
            docs=position[self.docs[entries]].astype(np.int32),
            counts=self.counts[entries],
            lengths=self.lengths[keep],
        )

    def postings(self, lexeme: str) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.float32]] | None:
        assert self.vocabulary is not None and self.offsets is not None
        assert self.docs is not None and self.counts is not None
        i = self.vocabulary.get(lexeme)
        if i is None:
            return None
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.docs[start:end], self.counts[start:end]


def build(
    version: int,
    rows: Sequence[tuple[Any, ...]],
    reset: int = 0,
    max_seq: int = 0,
    cls: type[Postings] = Postings,
    **extra: Any,
) -> Postings:
    """From rows of (id, agent_id, run_id, valid_from, valid_to, expires_at, lexemes, counts).

    `cls` and `extra`: a subclass that carries more columns, and their values (as in `from_tokens`).
    """
    n = len(rows)
    vocabulary: dict[str, int] = {}
    codes = [vocabulary.setdefault(lexeme, len(vocabulary)) for r in rows for lexeme in r[6] or ()]
    lengths = np.fromiter((len(r[6] or ()) for r in rows), dtype=np.int64, count=n)
    docs = np.repeat(np.arange(n, dtype=np.int32), lengths)
    counts = np.fromiter((c for r in rows for c in r[7] or ()), dtype=np.float32, count=len(codes))
    order = np.argsort(np.asarray(codes, dtype=np.int64), kind="stable")
    offsets = np.zeros(len(vocabulary) + 1, dtype=np.int64)
    np.cumsum(np.bincount(np.asarray(codes, dtype=np.int64), minlength=len(vocabulary)), out=offsets[1:])
    return cls(
        version=version,
        rowids=np.arange(n, dtype=np.int64),
        matrix=np.zeros((n, 0), dtype=np.float32),
        agent=np.array([r[1] for r in rows], dtype=object),
        run=np.array([r[2] for r in rows], dtype=object),
        valid_from=np.fromiter((r[3] for r in rows), dtype=np.int64, count=n),
        valid_to=np.fromiter((OPEN_END if r[4] is None else r[4] for r in rows), dtype=np.int64, count=n),
        ids=np.array([r[0] for r in rows], dtype=object),
        expires_at=np.fromiter((NO_EXPIRY if r[5] is None else r[5] for r in rows), dtype=np.int64, count=n),
        vocabulary=vocabulary,
        offsets=offsets,
        docs=docs[order],
        counts=counts[order],
        lengths=lengths.astype(np.float32),
        reset=reset,
        max_seq=max_seq,
        positional=True,
        **extra,
    )


def top_k(
    postings: Postings, keep: npt.NDArray[np.bool_], in_scope: int, lexemes: Sequence[str], k: int
) -> list[tuple[str, float]]:
    """The `k` best (id, BM25) pairs among the rows in `keep` that hold a lexeme; ties by id."""
    assert postings.ids is not None and postings.lengths is not None
    found = []
    matched = np.zeros(len(keep), dtype=np.bool_)
    for lexeme in dict.fromkeys(lexemes):
        hit = postings.postings(lexeme)
        if hit is None:
            continue
        docs, counts = hit
        allowed = keep[docs]
        docs, counts = docs[allowed], counts[allowed]
        if len(docs):
            found.append((docs, counts))
            matched[docs] = True
    rows = np.flatnonzero(matched)
    if not len(rows):
        return []
    norm = K1 * ((1 - B) + B * postings.lengths / postings.lengths[rows].mean())
    score = np.zeros(len(keep), dtype=np.float64)
    for docs, counts in found:
        df = len(docs)
        idf = np.log(1 + (in_scope - df + 0.5) / (df + 0.5))
        score[docs] += idf * counts * (K1 + 1) / (counts + norm[docs])
    return _best(postings, rows, score, k)


def from_tokens(
    version: int,
    *,
    rowids: npt.NDArray[np.int64],
    ids: npt.NDArray[np.object_],
    agent: npt.NDArray[np.object_],
    run: npt.NDArray[np.object_],
    valid_from: npt.NDArray[np.int64],
    expires_at: npt.NDArray[np.int64],
    tokens: Sequence[Sequence[str]],
    cls: type[Postings] = Postings,
    **extra: Any,
) -> Postings:
    """Postings of current memories from their tokens in order; a row's length counts every token.

    `cls` and `extra`: a subclass that carries more columns, and their values.
    """
    n = len(tokens)
    vocabulary: dict[str, int] = {}
    codes = np.fromiter((vocabulary.setdefault(t, len(vocabulary)) for ts in tokens for t in ts), dtype=np.int64)
    lengths = np.fromiter((len(ts) for ts in tokens), dtype=np.int64, count=n)
    docs = np.repeat(np.arange(n, dtype=np.int64), lengths)
    # One entry per (lexeme, row), sorted by lexeme then row, with its number of occurrences.
    keys, counts = np.unique(codes * max(n, 1) + docs, return_counts=True)
    offsets = np.zeros(len(vocabulary) + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // max(n, 1), minlength=len(vocabulary)), out=offsets[1:])
    return cls(
        version=version,
        rowids=rowids,
        matrix=np.zeros((n, 0), dtype=np.float32),
        agent=agent,
        run=run,
        valid_from=valid_from,
        valid_to=np.full(n, OPEN_END, dtype=np.int64),
        ids=ids,
        expires_at=expires_at,
        rows_by_id={id: row for row, id in enumerate(ids.tolist())},
        **extra,
        vocabulary=vocabulary,
        offsets=offsets,
        docs=(keys % max(n, 1)).astype(np.int32),
        counts=counts.astype(np.float32),
        lengths=lengths.astype(np.float32),
    )


def partition_top_k(
    postings: Postings, keep: npt.NDArray[np.bool_], lexemes: Sequence[str], k: int
) -> list[tuple[str, float]]:
    """The `k` best (id, BM25) pairs among the rows in `keep`, scored as SQLite's `retain_bm25` scores them.

    N, document frequency and average length are over every row of `postings` (the partition's current
    memories); the arithmetic is `sqlite._bm25`'s, operation for operation, so the scores are equal to
    the last bit.
    """
    assert postings.lengths is not None
    n = len(postings.lengths)
    if not n:
        return []
    lengths = postings.lengths.astype(np.float64)
    avgdl = max(float(lengths.sum()) / n, 1.0)
    norm0, norm1 = K1 * (1.0 - B), (K1 * B) * lengths / avgdl
    score = np.zeros(n, dtype=np.float64)
    matched = np.zeros(n, dtype=np.bool_)
    for lexeme in dict.fromkeys(lexemes):
        hit = postings.postings(lexeme)
        if hit is None:
            continue
        docs, counts = hit
        df = len(docs)
        idf = math.log(1.0 + (n - df + 0.5) / (df + 0.5))
        allowed = keep[docs]
        docs, tf = docs[allowed], counts[allowed].astype(np.float64)
        score[docs] += idf * tf * (K1 + 1.0) / (tf + norm0 + norm1[docs])
        matched[docs] = True
    return _best(postings, np.flatnonzero(matched), score, k)


def _best(
    postings: Postings, rows: npt.NDArray[np.int64], score: npt.NDArray[np.float64], k: int
) -> list[tuple[str, float]]:
    """The `k` best of `rows` by `score` as (id, score), ties by id."""
    assert postings.ids is not None
    if not len(rows):
        return []
    scores = score[rows]
    if len(rows) > k:  # the k best, and whatever ties the k-th (the order among ties is by id)
        cut = np.partition(scores, len(scores) - k)[len(scores) - k]
        rows, scores = rows[scores >= cut], scores[scores >= cut]
    ranked = sorted(zip(postings.ids[rows].tolist(), scores.tolist(), strict=True), key=lambda p: (-p[1], p[0]))
    return ranked[:k]


@dataclass(frozen=True)
class UserPostings(Postings):
    """A user's cached memory versions: keyword postings, and the metadata role and name `origins` reads
    (with `valid_from`), by row. Kept aligned with the rows through appends and refreshes.

    With each row's `seq` (SQLite: its rowid) and category, `neighbours` answers `Store.adjacent`
    from them.
    """

    roles: npt.NDArray[np.object_] | None = None
    names: npt.NDArray[np.object_] | None = None
    seqs: npt.NDArray[np.int64] | None = None
    categories: npt.NDArray[np.object_] | None = None

    @property
    def nbytes(self) -> int:
        # Two references a row (the strings are shared), and the seq and category when held.
        return super().nbytes + len(self.rowids) * (16 if self.seqs is None else 32)

    def extended(self, extra: Partition) -> UserPostings:
        assert isinstance(extra, UserPostings) and extra.roles is not None and extra.names is not None
        assert self.roles is not None and self.names is not None
        rows = super().extended(extra)
        assert isinstance(rows, UserPostings)
        return replace(
            rows,
            roles=np.concatenate([self.roles, extra.roles]),
            names=np.concatenate([self.names, extra.names]),
            seqs=joined(self.seqs, extra.seqs),
            categories=joined(self.categories, extra.categories),
        )

    def masked(self, keep: npt.NDArray[np.bool_], valid_to: npt.NDArray[np.int64]) -> UserPostings:
        assert self.roles is not None and self.names is not None
        rows = super().masked(keep, valid_to)
        assert isinstance(rows, UserPostings)
        return replace(
            rows,
            roles=self.roles[keep],
            names=self.names[keep],
            seqs=None if self.seqs is None else self.seqs[keep],
            categories=None if self.categories is None else self.categories[keep],
        )

    @cached_property
    def speakers(self) -> frozenset[str]:
        """The names the current rows were spoken by."""
        assert self.names is not None
        return frozenset(name for name in self.names[self.valid_to == OPEN_END].tolist() if name)

    @cached_property
    def _seq_order(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The current rows in `seq` order, and each current row's place in it (-1 for the others)."""
        assert self.seqs is not None
        current = np.flatnonzero(self.valid_to == OPEN_END)
        order = current[np.argsort(self.seqs[current], kind="stable")]
        place = np.full(len(self.rowids), -1, dtype=np.int64)
        place[order] = np.arange(len(order))
        return order, place

    def neighbours(self, row: int, window: int, gap: int, now: int) -> list[tuple[str, int]]:
        """`Store.adjacent` for the memory at `row`: of the user's 2 x `window` current rows nearest it by
        `seq` on each side, the unexpired turns (no category) of the same agent and run with `valid_from`
        within `gap` of the row's, at most `window` a side, as (id, distance), distance 1 the nearest on
        its side. Nothing for a row that is not itself a current turn."""
        assert self.ids is not None and self.seqs is not None and self.categories is not None
        assert self.expires_at is not None
        if self.categories[row] is not None or self.valid_to[row] != OPEN_END:
            return []
        order, place = self._seq_order
        at = int(place[row])
        out: list[tuple[str, int]] = []
        for side in (order[max(0, at - 2 * window) : at][::-1], order[at + 1 : at + 1 + 2 * window]):
            kept = [
                int(r)
                for r in side
                if self.categories[r] is None
                and self.agent[r] == self.agent[row]
                and self.run[r] == self.run[row]
                and abs(int(self.valid_from[r]) - int(self.valid_from[row])) <= gap
                and self.expires_at[r] > now
            ]
            out += [(str(self.ids[r]), distance) for distance, r in enumerate(kept[:window], 1)]
        return out
