"""The data that crosses Retain's public edges, as pydantic models.

Result shapes follow Mem0's (`results`, `memory`, `event`) so that code written
for Mem0 can move over by changing the import.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

EventKind = Literal["ADD", "UPDATE", "DELETE", "NOOP"]
Role = Literal["user", "assistant", "system", "tool"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Scope(_Model):
    """Who a memory belongs to. At least one of user, agent or run is always set."""

    tenant_id: str = "default"
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None


class Message(_Model):
    """One chat turn as the caller passes it in."""

    role: Role = "user"
    content: str
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ChatMessage(_Model):
    """One stored chat turn."""

    id: str
    role: Role
    content: str
    name: str | None
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    metadata: dict[str, Any]
    created_at: datetime


class MemoryRecord(_Model):
    """One version of a memory. A current version has `valid_to=None`."""

    id: str
    memory: str
    category: str | None
    metadata: dict[str, Any]
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    #: The id of the first version; every version of one memory shares it.
    lineage_id: str
    hash: str
    created_at: datetime
    updated_at: datetime
    valid_from: datetime
    valid_to: datetime | None
    superseded_by: str | None
    source_message_ids: list[str]
    access_count: int
    last_accessed_at: datetime | None
    expires_at: datetime | None

    @property
    def is_current(self) -> bool:
        return self.valid_to is None


class MemoryEvent(_Model):
    """What one add did to one memory."""

    id: str
    memory: str
    event: EventKind
    previous_memory: str | None = None
    reason: str | None = None


class Usage(_Model):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_calls: int = 0


class AddResult(_Model):
    results: list[MemoryEvent]
    message_ids: list[str] = Field(default_factory=list)
    job_id: str | None = None
    usage: Usage | None = None


class Hit(_Model):
    """One search result. `scores` holds the per-signal scores when `explain=True`."""

    id: str
    memory: str
    score: float
    category: str | None
    metadata: dict[str, Any]
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    created_at: datetime
    valid_from: datetime
    valid_to: datetime | None
    source: list[str]
    scores: dict[str, float] | None = None


class SearchResult(_Model):
    results: list[Hit]


class JobInfo(_Model):
    """A background extraction job as `Memory.jobs()` reports it."""

    id: str
    kind: str
    status: Literal["queued", "running", "done", "dead"]
    attempts: int
    max_attempts: int
    user_id: str | None
    agent_id: str | None
    run_id: str | None
    run_after: datetime
    last_error: str | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime


class HistoryEntry(_Model):
    """One row of a memory's audit trail."""

    memory_id: str
    event: str
    old_memory: str | None
    new_memory: str | None
    reason: str | None
    actor: str
    source_message_ids: list[str]
    created_at: datetime


class MemoryPage(_Model):
    results: list[MemoryRecord]
    next_cursor: str | None = None


class PurgeCounts(_Model):
    """What a delete removed, by kind of row."""

    memories: int = 0
    vectors: int = 0
    keyword_rows: int = 0
    events: int = 0
    messages: int = 0
    jobs: int = 0
