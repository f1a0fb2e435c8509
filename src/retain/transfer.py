"""Export and import as JSON Lines: lossless, including every version and event.

The first line is a header naming the embedder. Memory lines carry their
stored embedding (base64 float32), so importing into a store with the same
embedder needs no re-embedding; with a different embedder, texts are
re-embedded. Each line is validated before anything is written, and a
malformed line fails with its line number. Ids already in the target are
skipped together with their history, so importing twice is harmless.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, TextIO

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .errors import InvalidInputError
from .indexing import embedding_text
from .memory import Memory
from .models import Role

FORMAT = "retain-jsonl"
VERSION = 1
BATCH_ROWS = 500


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str | None
    agent_id: str | None
    run_id: str | None


class MemoryRow(_Row):
    type: Literal["memory"]
    id: str
    lineage_id: str
    text: str
    category: str | None
    metadata: dict[str, Any]
    hash: str
    created_at: int
    updated_at: int
    valid_from: int
    valid_to: int | None
    superseded_by: str | None
    source_message_ids: list[str]
    access_count: int
    last_accessed_at: int | None
    expires_at: int | None
    embedding: str
    #: What was keyword-indexed, when not `text` (absent in exports from before it existed).
    index_text: str | None = None
    #: The sentence vectors of a verbatim user turn, float32 rows in base64 (absent in older exports).
    facets: str | None = None

    @field_validator("embedding", "facets")
    @classmethod
    def _float32_values(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("not base64") from None
        if not raw or len(raw) % 4:
            raise ValueError("not float32 values")
        return value


class EventRow(_Row):
    type: Literal["event"]
    memory_id: str
    lineage_id: str
    event: str
    old_text: str | None
    new_text: str | None
    reason: str | None
    actor: str
    source_message_ids: list[str]
    created_at: int


class MessageRow(_Row):
    type: Literal["message"]
    id: str
    role: Role
    name: str | None
    content: str
    metadata: dict[str, Any]
    created_at: int


_ROW_TYPES: dict[str, type[_Row]] = {"memory": MemoryRow, "event": EventRow, "message": MessageRow}


def export_jsonl(memory: Memory, out: TextIO) -> int:
    """Write the tenant's whole store to `out`; returns the number of data lines."""
    header = {
        "type": "header",
        "format": FORMAT,
        "version": VERSION,
        "embedder": memory.embedder.model_id,
        "dimensions": memory.embedder.dimensions,
    }
    out.write(json.dumps(header) + "\n")
    count = 0
    for row in memory.store.export_rows(memory.tenant_id):
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        count += 1
    return count


def parse_jsonl(lines: Iterable[str]) -> tuple[dict[str, Any], list[_Row]]:
    """Validate every line; raise InvalidInputError naming the first bad line."""
    header: dict[str, Any] | None = None
    rows: list[_Row] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"line {number}: not JSON ({exc.msg}).") from None
        kind = data.get("type") if isinstance(data, dict) else None
        if header is None:
            if kind != "header" or data.get("format") != FORMAT:
                raise InvalidInputError(f"line {number}: expected a {FORMAT} header; is this a Retain export?")
            if data.get("version") != VERSION:
                raise InvalidInputError(f"line {number}: export version {data.get('version')} is not supported.")
            header = data
            continue
        model = _ROW_TYPES.get(str(kind))
        if model is None:
            raise InvalidInputError(f"line {number}: unknown row type {kind!r}.")
        try:
            rows.append(model.model_validate(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidInputError(f"line {number}: {where}: {first['msg']}.") from None
    if header is None:
        raise InvalidInputError("The file is empty: expected a Retain export.")
    return header, rows


def import_jsonl(memory: Memory, lines: Iterable[str], progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Import a Retain export into the memory's tenant; returns counts of imported and skipped rows."""
    header, rows = parse_jsonl(lines)
    same_space = header.get("embedder") == memory.embedder.model_id and header.get("dimensions") == (
        memory.embedder.dimensions
    )
    if same_space:
        _check_dimensions([r for r in rows if isinstance(r, MemoryRow)], memory.embedder.dimensions)
    memory_ids = [r.id for r in rows if isinstance(r, MemoryRow)]
    existing = set()
    for start in range(0, len(memory_ids), BATCH_ROWS):
        existing |= {r.id for r in memory.store.get(memory.tenant_id, memory_ids[start : start + BATCH_ROWS])}
    skipped_lineages = {r.lineage_id for r in rows if isinstance(r, MemoryRow) and r.id in existing}
    kept = [r for r in rows if not (isinstance(r, MemoryRow | EventRow) and r.lineage_id in skipped_lineages)]
    imported = reembedded = 0
    for batch in _batches(kept, BATCH_ROWS):
        texts = [embedding_text(r.text, r.index_text, r.metadata) for r in batch if isinstance(r, MemoryRow)]
        if same_space:
            vectors = np.array(
                [
                    np.frombuffer(base64.b64decode(r.embedding), dtype=np.float32)
                    for r in batch
                    if isinstance(r, MemoryRow)
                ],
                dtype=np.float32,
            ).reshape(len(texts), memory.embedder.dimensions)
        else:
            vectors = memory.embedder.embed(texts)
            reembedded += len(texts)
        memories = [r for r in batch if isinstance(r, MemoryRow)]
        facets = dict(zip((r.id for r in memories), _facets(memory, memories, vectors, same_space), strict=True))
        dumped = [r.model_dump() | ({"facets": facets[r.id]} if isinstance(r, MemoryRow) else {}) for r in batch]
        memory.store.import_rows(memory.tenant_id, dumped, vectors)
        imported += len(batch)
        if progress is not None:
            progress(len(batch))
    return {"imported": imported, "skipped": len(rows) - len(kept), "reembedded": reembedded}


def _check_dimensions(rows: list[MemoryRow], dims: int) -> None:
    """Every stored vector of `rows` has `dims` float32 values (before anything is written)."""
    for r in rows:
        if len(base64.b64decode(r.embedding)) != 4 * dims:
            raise InvalidInputError(f"memory {r.id}: the embedding does not have {dims} dimensions.")
        if r.facets is not None and len(base64.b64decode(r.facets)) % (4 * dims):
            raise InvalidInputError(f"memory {r.id}: the facets are not rows of {dims} dimensions.")


def _facets(memory: Memory, rows: list[MemoryRow], vectors: Any, same_space: bool) -> list[Any]:
    """Each row's facet vectors: as exported in the same embedding space, else embedded again from its
    sentences (`retain.indexing.facet_texts`; exports from before facets existed get them too)."""
    dims = memory.embedder.dimensions
    if same_space and all("facets" in r.model_fields_set for r in rows):
        return [
            None if r.facets is None else np.frombuffer(base64.b64decode(r.facets), dtype=np.float32).reshape(-1, dims)
            for r in rows
        ]
    return memory._embed_turns([], [_facet_sentences(memory, r) for r in rows], vectors)[1]


def _facet_sentences(memory: Memory, row: MemoryRow) -> list[str]:
    """The sentences a stored turn is faceted by, as `Memory.add(infer=False)` chose them (by its role)."""
    role = row.metadata.get("role")
    return memory._facet_texts(row.text, role if isinstance(role, str) else None)


def _batches(rows: list[_Row], size: int) -> Iterator[list[_Row]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]
