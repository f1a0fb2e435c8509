"""Rows as every backend reads and writes them: one column order, one mapping to models.

SQLite hands JSON columns back as text and PostgreSQL (jsonb) as decoded values, so the
mappers take the backend's `decode`; everything else is the same on both.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..models import ChatMessage, MemoryRecord, Scope
from ..timeutil import from_micros, opt_from_micros
from .base import ApiKey, Job

Decode = Callable[[Any], Any]

#: The columns of an exported memory, event and message, in export order (without tenant and vector).
MEMORY_FIELDS = (
    "id", "user_id", "agent_id", "run_id", "lineage_id", "text", "category", "metadata", "hash", "created_at",
    "updated_at", "valid_from", "valid_to", "superseded_by", "source_message_ids", "access_count",
    "last_accessed_at", "expires_at", "index_text",
)  # fmt: skip
EVENT_FIELDS = (
    "memory_id", "lineage_id", "user_id", "agent_id", "run_id", "event", "old_text", "new_text", "reason", "actor",
    "source_message_ids", "created_at",
)  # fmt: skip
MESSAGE_FIELDS = ("id", "user_id", "agent_id", "run_id", "role", "name", "content", "metadata", "created_at")
#: What an export holds besides memories: (row type, table, fields).
OTHER_EXPORTS = (("event", "memory_events", EVENT_FIELDS), ("message", "messages", MESSAGE_FIELDS))
_JSON_FIELDS = frozenset({"metadata", "source_message_ids"})
#: Absent from exports made before the field existed.
_OPTIONAL_FIELDS = frozenset({"index_text"})


T = TypeVar("T")


def facets_b64(blob: bytes | None) -> str | None:
    """A memory's stored facet vectors as an export carries them (None for none)."""
    return base64.b64encode(blob).decode() if blob else None


def in_order(ids: Sequence[str], rows: Sequence[Sequence[Any]], decode: Callable[[Sequence[Any]], T]) -> list[T]:
    """Decode rows whose first column is the id, in the order of `ids`; ids without a row are left out."""
    by_id = {row[0]: decode(row) for row in rows}
    return [by_id[i] for i in ids if i in by_id]


def columns(fields: Sequence[str], alias: str = "") -> str:
    return ", ".join(alias + f for f in fields)


def exported(kind: str, fields: Sequence[str], values: Sequence[Any], decode: Decode) -> dict[str, Any]:
    """One export row: `values` are the `fields` columns as the backend returned them."""
    row = {f: decode(v) if f in _JSON_FIELDS else v for f, v in zip(fields, values, strict=True)}
    return {"type": kind, **row}


def imported(tenant_id: str, fields: Sequence[str], row: Mapping[str, Any]) -> tuple[Any, ...]:
    """Values for `INSERT (tenant_id, <fields>)` from one export row; JSON fields as JSON text."""
    values = (row.get(f) if f in _OPTIONAL_FIELDS else row[f] for f in fields)
    return (tenant_id, *(json.dumps(v) if f in _JSON_FIELDS else v for f, v in zip(fields, values, strict=True)))


def api_key(r: Sequence[Any]) -> ApiKey:
    return ApiKey(id=r[0], tenant_id=r[1], name=r[2], prefix=r[3], admin=bool(r[4]), created_at=r[5], revoked_at=r[6])


def chat(r: Sequence[Any], decode: Decode) -> ChatMessage:
    return ChatMessage(
        id=r[0],
        role=r[1],
        content=r[2],
        name=r[3],
        user_id=r[4],
        agent_id=r[5],
        run_id=r[6],
        metadata=decode(r[7]),
        created_at=from_micros(r[8]),
    )


def job(r: Sequence[Any], decode: Decode) -> Job:
    return Job(
        id=r[0],
        scope=Scope(tenant_id=r[1], user_id=r[2], agent_id=r[3], run_id=r[4]),
        kind=r[5],
        payload=decode(r[6]),
        status=r[7],
        attempts=r[8],
        max_attempts=r[9],
        run_after=r[10],
        last_error=r[11],
        result=None if r[12] is None else decode(r[12]),
        created_at=r[13],
        updated_at=r[14],
    )


def record(r: Sequence[Any], decode: Decode) -> MemoryRecord:
    return MemoryRecord(
        id=r[0],
        memory=r[1],
        category=r[2],
        metadata=decode(r[3]),
        user_id=r[4],
        agent_id=r[5],
        run_id=r[6],
        lineage_id=r[7],
        hash=r[8],
        created_at=from_micros(r[9]),
        updated_at=from_micros(r[10]),
        valid_from=from_micros(r[11]),
        valid_to=opt_from_micros(r[12]),
        superseded_by=r[13],
        source_message_ids=decode(r[14]),
        access_count=r[15],
        last_accessed_at=opt_from_micros(r[16]),
        expires_at=opt_from_micros(r[17]),
    )
