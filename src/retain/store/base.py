"""The store contract every backend implements, and the rows that cross it.

A store is the single source of truth: memories, their vectors and keyword
index, the append-only event log, chat messages and jobs. `write` applies a
whole `WriteBatch` in one transaction, so an add is either entirely there or
entirely absent. Every read takes the tenant (and usually a `Scope`) and a
backend must never return a row outside it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..filters import Filter
from ..models import ChatMessage, HistoryEntry, MemoryRecord, PurgeCounts, Role, Scope

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


@dataclass(frozen=True)
class Candidate:
    """A memory id with one signal's score; higher is better for every signal."""

    id: str
    score: float


class Store(ABC):
    """The contract. One contract test suite runs against every implementation."""

    dimensions: int

    @abstractmethod
    def write(self, tenant_id: str, batch: WriteBatch) -> None:
        """Apply the batch in one transaction, or raise and apply nothing."""

    @abstractmethod
    def get(self, tenant_id: str, ids: Sequence[str]) -> list[MemoryRecord]:
        """The records for `ids` that exist in the tenant, in the order of `ids`."""

    @abstractmethod
    def lineage_id(self, tenant_id: str, id: str) -> str | None:
        """The id of the first version of the memory `id`, or None if it does not exist."""

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

    @abstractmethod
    def similarity(self, tenant_id: str, ids: Sequence[str], vector: Vector) -> dict[str, float]:
        """Cosine similarity of `vector` to each stored memory in `ids`."""

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
    def export_rows(self, tenant_id: str) -> Iterator[dict[str, Any]]:
        """Every memory version, event and message in the tenant as plain JSON-able dicts."""

    @abstractmethod
    def import_rows(self, tenant_id: str, rows: Sequence[dict[str, Any]], embeddings: Vector) -> int:
        """Insert exported rows in one transaction; memories take `embeddings` in order. Ids must be new."""

    @abstractmethod
    def check_integrity(self) -> list[str]:
        """Problems found (empty when the store is consistent)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections. Further use is an error."""
