"""The store contract every backend implements, and the rows that cross it.

A store is the single source of truth: memories, their vectors and keyword
index, the append-only event log, chat messages and jobs. `write` applies a
whole `WriteBatch` in one transaction, so an add is either entirely there or
entirely absent. Every read takes the tenant (and usually a `Scope`) and a
backend must never return a row outside it.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..filters import Filter
from ..models import ChatMessage, HistoryEntry, MemoryRecord, PurgeCounts, Role, Scope
from ..timeutil import to_micros

Vector = npt.NDArray[np.float32]


@dataclass(frozen=True)
class NewMessage:
    id: str
    scope: Scope
    role: Role
    content: str
    name: str | None
    metadata: dict[str, Any]
    created_at: int


@dataclass(frozen=True)
class NewMemory:
    id: str
    lineage_id: str
    scope: Scope
    text: str
    category: str | None
    metadata: dict[str, Any]
    hash: str
    valid_from: int
    source_message_ids: list[str]
    embedding: Vector
    expires_at: int | None = None
    #: Check inside the write transaction for a current duplicate in the same user/agent scope.
    dedup: bool = False
    #: What keyword search indexes, when it is not `text`: a verbatim turn with its speaker and the
    #: turns before it (see `retain.indexing`). Never returned as the memory.
    index_text: str | None = None
    #: The vectors of a verbatim turn's sentences (`retain.indexing.facet_texts`), one row each; None for none.
    facets: Vector | None = None


@dataclass(frozen=True)
class Supersede:
    """`old_id` stops being valid at `valid_to`; `new_id` (in the same batch) replaces it."""

    old_id: str
    new_id: str
    valid_to: int


@dataclass(frozen=True)
class Invalidate:
    id: str
    valid_to: int


@dataclass(frozen=True)
class NewEvent:
    memory_id: str
    lineage_id: str
    scope: Scope
    event: str
    old_text: str | None
    new_text: str | None
    reason: str | None
    actor: str
    source_message_ids: list[str]


@dataclass(frozen=True)
class NewJob:
    id: str
    scope: Scope
    kind: str
    payload: dict[str, Any]
    max_attempts: int


@dataclass(frozen=True)
class Job:
    id: str
    scope: Scope
    kind: str
    payload: dict[str, Any]
    status: str
    attempts: int
    max_attempts: int
    run_after: int
    last_error: str | None
    result: dict[str, Any] | None
    created_at: int
    updated_at: int


@dataclass
class WriteBatch:
    """Everything one operation changes, applied atomically at transaction time `at`."""

    at: int
    messages: list[NewMessage] = field(default_factory=list)
    memories: list[NewMemory] = field(default_factory=list)
    supersede: list[Supersede] = field(default_factory=list)
    invalidate: list[Invalidate] = field(default_factory=list)
    touch: list[str] = field(default_factory=list)
    events: list[NewEvent] = field(default_factory=list)
    jobs: list[NewJob] = field(default_factory=list)
    #: Cosine similarity at or above which a `dedup` memory counts as a duplicate.
    dedup_threshold: float = 0.95
    #: Marks this running job done in the same transaction, so its effects land exactly once.
    finish_job: tuple[str, dict[str, Any]] | None = None


@dataclass(frozen=True)
class WriteOutcome:
    """What the store decided inside the transaction: new memory id -> the existing duplicate it matched."""

    duplicates: dict[str, tuple[str, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ApiKey:
    """An API key's public record; the secret itself is only ever stored as a hash."""

    id: str
    tenant_id: str
    name: str
    #: The first characters of the key, so people can tell their keys apart in listings.
    prefix: str
    admin: bool
    created_at: int
    revoked_at: int | None = None


@dataclass(frozen=True)
class Candidate:
    """A memory id with one signal's score; higher is better for every signal."""

    id: str
    score: float


@dataclass(frozen=True)
class Origin:
    """When a memory was said and by whom: what the ranking priors read (see `Store.origins`)."""

    #: `valid_from`, microseconds: the `at` a verbatim turn was added with.
    at: int
    #: metadata `role` and `name` of a verbatim turn (None for other memories).
    role: str | None
    name: str | None


class Store(ABC):
    """The contract. One contract test suite runs against every implementation."""

    dimensions: int
    #: True when the store's I/O can be awaited natively from bridged code (`retain.async_bridge`);
    #: `AsyncMemory` then runs on the event loop instead of in worker threads.
    native_async: bool = False

    @abstractmethod
    def write(self, tenant_id: str, batch: WriteBatch) -> WriteOutcome:
        """Apply the batch in one transaction, or raise and apply nothing.

        A memory marked `dedup` that matches a current memory in the same user and
        agent (same text hash, or cosine >= `dedup_threshold`) is not inserted: the
        match is touched, its events become NOOPs on the match, and the outcome
        reports it.
        """

    @abstractmethod
    def get(self, tenant_id: str, ids: Sequence[str]) -> list[MemoryRecord]:
        """The records for `ids` that exist in the tenant, in the order of `ids`."""

    def origins(self, tenant_id: str, ids: Sequence[str]) -> dict[str, Origin]:
        """Each existing memory's `Origin`. This default reads whole records; a backend may read less."""
        return {r.id: origin_of(r) for r in self.get(tenant_id, ids)}

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one version of each user's cached index, read once. A search's stages then
        agree with each other, and a backend whose version checks are round trips (PostgreSQL) pays for
        one per user instead of one per stage. Writes inside are not allowed. This default adds nothing.
        """
        yield

    def listen_for_jobs(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Call `wake` when any process may have queued a job, until `stop` is set; blocks, so run it in a
        thread. This default returns at once: workers of a store without push notifications poll."""
        return

    @abstractmethod
    def list_memories(
        self, scope: Scope, where: Filter | None, include_superseded: bool, limit: int, after: int | None
    ) -> tuple[list[MemoryRecord], int | None]:
        """Newest first; returns the page and a position to continue after (None at the end)."""

    @abstractmethod
    def vector_search(
        self, scope: Scope, vector: Vector, k: int, where: Filter | None, as_of: int | None, now: int
    ) -> list[Candidate]:
        """Exact nearest neighbours in scope; score is cosine similarity."""

    @abstractmethod
    def keyword_search(
        self, scope: Scope, query: str, k: int, where: Filter | None, as_of: int | None, now: int
    ) -> list[Candidate]:
        """BM25 matches in scope; score is the BM25 relevance (higher is better)."""

    def speakers(self, scope: Scope, among: Sequence[str]) -> frozenset[str]:
        """The names (metadata `name`) verbatim turns were added with: of all of the scope's user's current
        turns, or, in a scope across users (which has no cached rows to read them from), of the memories
        `among` (a search's candidates)."""
        if scope.user_id is not None:
            return self.user_speakers(scope.tenant_id, scope.user_id)
        return frozenset(o.name for o in self.origins(scope.tenant_id, among).values() if o.name)

    @abstractmethod
    def user_speakers(self, tenant_id: str, user_id: str) -> frozenset[str]:
        """The names a user's current verbatim turns were added with, from the rows its keyword search caches."""

    @abstractmethod
    def adjacent(
        self, tenant_id: str, ids: Sequence[str], window: int, gap: int, now: int
    ) -> dict[str, list[tuple[str, int]]]:
        """The turns next to each verbatim memory in `ids`, with their distance: for a current memory
        without a category, of the user's 2 x `window` current memories stored nearest before it and after
        it (insertion order), the unexpired ones without a category in the same agent and run with
        `valid_from` within `gap` of its own, at most `window` a side, each as (id, distance): distance 1
        for the nearest on its side. Ids outside the tenant, superseded or categorised ones map to nothing.
        """

    @abstractmethod
    def similarity(self, tenant_id: str, ids: Sequence[str], vector: Vector) -> dict[str, float]:
        """Cosine similarity of `vector` to each stored memory in `ids`: its best over its own vector and its
        facets, as `vector_search` scores it."""

    @abstractmethod
    def vectors(self, tenant_id: str, ids: Sequence[str]) -> dict[str, Vector]:
        """The stored embedding of each memory in `ids`."""

    @abstractmethod
    def record_access(self, tenant_id: str, counts: dict[str, int], at: int) -> None:
        """Add to the access counters of memories (ids outside the tenant are ignored)."""

    @abstractmethod
    def history(self, tenant_id: str, lineage_id: str) -> list[HistoryEntry]:
        """Every event of every version of one memory, oldest first."""

    @abstractmethod
    def purge_lineage(self, tenant_id: str, lineage_id: str) -> PurgeCounts:
        """Remove every version of one memory with its vectors, keyword rows and events."""

    @abstractmethod
    def purge_scope(self, scope: Scope) -> PurgeCounts:
        """Remove everything stored in the scope: memories, vectors, keyword rows, events, messages, jobs."""

    @abstractmethod
    def messages(self, scope: Scope, limit: int | None) -> list[ChatMessage]:
        """Chat messages in scope, oldest first; with `limit`, the newest `limit` of them."""

    @abstractmethod
    def delete_messages(self, scope: Scope) -> int:
        """Remove the chat messages in scope and return how many there were."""

    @abstractmethod
    def messages_by_id(self, tenant_id: str, ids: Sequence[str]) -> list[ChatMessage]:
        """The stored messages with these ids, in the order of `ids`."""

    @abstractmethod
    def claim_job(self, now: int, lease: int, job_id: str | None = None) -> Job | None:
        """Lease the next due job (queued, or running with an expired lease) until `now + lease`.

        With `job_id`, lease that job only, if it is due.
        """

    @abstractmethod
    def release_job(self, job_id: str, error: str, retry_at: int | None, now: int) -> None:
        """Record a failed attempt: requeue at `retry_at`, or dead-letter when it is None."""

    @abstractmethod
    def list_jobs(self, tenant_id: str, status: str | None, limit: int) -> list[Job]:
        """The tenant's jobs, newest first, optionally of one status."""

    @abstractmethod
    def retry_job(self, tenant_id: str, job_id: str, now: int) -> bool:
        """Requeue a failed or dead job now, with fresh attempts; False if there is no such job to retry."""

    @abstractmethod
    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status, across tenants (for monitoring)."""

    @abstractmethod
    def create_api_key(self, key: ApiKey, secret_hash: str) -> None:
        """Store a new key under the hash of its secret; StoreError if the id or hash exists."""

    @abstractmethod
    def api_key_by_hash(self, secret_hash: str) -> ApiKey | None:
        """The key whose secret hashes to `secret_hash`, revoked or not; None if there is none."""

    @abstractmethod
    def list_api_keys(self, tenant_id: str | None) -> list[ApiKey]:
        """Keys of one tenant (or of all tenants), oldest first."""

    @abstractmethod
    def revoke_api_key(self, key_id: str, at: int, tenant_id: str | None = None) -> bool:
        """Revoke a key (only within `tenant_id` when given); False if no such active key."""

    @abstractmethod
    def export_rows(self, tenant_id: str) -> Iterator[dict[str, Any]]:
        """Every memory version, event and message in the tenant as plain JSON-able dicts."""

    @abstractmethod
    def import_rows(self, tenant_id: str, rows: Sequence[dict[str, Any]], embeddings: Vector) -> int:
        """Insert exported rows in one transaction; memories take `embeddings` in order, and their `facets`
        (a matrix of sentence vectors, or None) from the row. Ids must be new."""

    @abstractmethod
    def check_integrity(self) -> list[str]:
        """Problems found (empty when the store is consistent)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Further use is an error."""


def origin_of(record: MemoryRecord) -> Origin:
    role, name = record.metadata.get("role"), record.metadata.get("name")
    return Origin(
        to_micros(record.valid_from),
        role if isinstance(role, str) else None,
        name if isinstance(name, str) else None,
    )
