"""`add(infer=True)`: from stored messages to reconciled memories, in one LLM call.

The steps are plain functions with I/O at the edges:

1. the messages are already stored (with a job row) before this runs, so an
   LLM failure loses nothing and the job can be retried;
2. `similar_memories` retrieves current memories like the new messages (hybrid
   search over the user's scope, ignoring the session) and numbers them;
3. one LLM call extracts facts and decides ADD/UPDATE/DELETE/NOOP; an invalid
   reply is retried once with the validation error, then fails loudly;
4. `plan` turns the operations into one `WriteBatch`: UPDATE writes a new version
   and supersedes the old, DELETE invalidates, NOOP touches; new facts are
   marked for semantic dedup, which the store does inside the write transaction;
5. the batch commits together with the job's completion, so a job's effects
   land exactly once even if a worker dies mid-way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .async_bridge import offload
from .embedders import Embedder
from .errors import ProviderError
from .extraction import (
    Known,
    Operation,
    Turn,
    anchor_relative_dates,
    extraction_messages,
    parse_operations,
    response_schema,
    retry_messages,
)
from .llm.base import LLM
from .models import ChatMessage, MemoryEvent, MemoryRecord, Scope, Usage
from .store.base import Invalidate, NewEvent, NewMemory, Supersede, WriteBatch, WriteOutcome
from .timeutil import from_micros, to_micros


@dataclass(frozen=True)
class InferenceInput:
    scope: Scope
    messages: list[ChatMessage]
    context: list[ChatMessage]
    existing: list[MemoryRecord]
    observed_at: int
    metadata: dict[str, Any]
    categories: Sequence[str]
    instructions: str | None


@dataclass
class Decision:
    """The validated operations and what the LLM calls cost."""

    operations: list[Operation]
    usage: Usage = field(default_factory=Usage)


def decide(llm: LLM, data: InferenceInput) -> Decision:
    """The one LLM call (plus at most one corrective retry)."""
    prompt = extraction_messages(
        [Turn(m.role, m.content, m.name) for m in data.messages],
        [Known(i, r.memory, r.category) for i, r in enumerate(data.existing, start=1)],
        observed_at=from_micros(data.observed_at),
        context=[Turn(m.role, m.content, m.name) for m in data.context],
        categories=data.categories,
        instructions=data.instructions,
    )
    schema = response_schema(data.categories, len(data.existing))
    known = set(range(1, len(data.existing) + 1))
    usage = Usage()
    error = ""
    for attempt in range(2):
        completion = offload(llm.complete, prompt, schema)
        usage = Usage(
            prompt_tokens=usage.prompt_tokens + completion.usage.prompt_tokens,
            completion_tokens=usage.completion_tokens + completion.usage.completion_tokens,
            llm_calls=usage.llm_calls + 1,
        )
        try:
            return Decision(parse_operations(completion.text, known, data.categories), usage)
        except ValueError as exc:
            error = str(exc)
            if attempt == 0:
                prompt = retry_messages(prompt, completion.text, error)
    raise ProviderError(
        f"The LLM's extraction reply was invalid twice ({error}); the messages are stored and the job can be retried.",
        provider=llm.name,
        retryable=True,
    )


def plan(
    data: InferenceInput,
    decision: Decision,
    embedder: Embedder,
    *,
    at: int,
    new_id: Callable[[], str],
    text_hash: Callable[[str], str],
) -> tuple[WriteBatch, list[MemoryEvent]]:
    """The write batch for the decided operations, and the events to report (before dedup)."""
    batch = WriteBatch(at=at)
    events: list[MemoryEvent] = []
    sources = [m.id for m in data.messages]
    day = from_micros(data.observed_at)
    texts = {
        id(op): anchor_relative_dates(op.text.strip(), day) for op in decision.operations if op.op in ("ADD", "UPDATE")
    }
    vectors = dict(zip(texts, offload(embedder.embed, list(texts.values())), strict=True))
    for op in decision.operations:
        old = data.existing[op.id - 1] if op.id is not None and op.op != "ADD" else None
        reason = op.reason.strip() or None
        if op.op == "ADD":
            memory = _memory(
                data, op, texts[id(op)], vectors[id(op)], sources, new_id(), text_hash, lineage=None, dedup=True
            )
            batch.memories.append(memory)
            batch.events.append(
                _event(data.scope, memory.id, memory.lineage_id, "ADD", None, memory.text, reason, sources)
            )
            events.append(MemoryEvent(id=memory.id, memory=memory.text, event="ADD", reason=reason))
        elif op.op == "UPDATE" and old is not None:
            memory = _memory(
                data,
                op,
                texts[id(op)],
                vectors[id(op)],
                sources,
                new_id(),
                text_hash,
                lineage=old.lineage_id,
                dedup=False,
            )
            batch.memories.append(memory)
            batch.supersede.append(Supersede(old.id, memory.id, max(data.observed_at, _micros(old))))
            batch.events.append(
                _event(data.scope, memory.id, memory.lineage_id, "UPDATE", old.memory, memory.text, reason, sources)
            )
            events.append(
                MemoryEvent(id=memory.id, memory=memory.text, event="UPDATE", previous_memory=old.memory, reason=reason)
            )
        elif op.op == "DELETE" and old is not None:
            batch.invalidate.append(Invalidate(old.id, max(data.observed_at, _micros(old))))
            batch.events.append(_event(data.scope, old.id, old.lineage_id, "DELETE", old.memory, None, reason, sources))
            events.append(MemoryEvent(id=old.id, memory=old.memory, event="DELETE", reason=reason))
        elif op.op == "NOOP" and old is not None:
            batch.touch.append(old.id)
            batch.events.append(
                _event(data.scope, old.id, old.lineage_id, "NOOP", old.memory, old.memory, reason, sources)
            )
            events.append(MemoryEvent(id=old.id, memory=old.memory, event="NOOP", reason=reason))
    return batch, events


def apply_outcome(events: list[MemoryEvent], outcome: WriteOutcome, texts: dict[str, str]) -> list[MemoryEvent]:
    """Report deduplicated ADDs as NOOPs on the memory they matched."""
    out = []
    for event in events:
        if event.id in outcome.duplicates:
            existing_id, _ = outcome.duplicates[event.id]
            out.append(
                MemoryEvent(
                    id=existing_id,
                    memory=texts.get(existing_id, event.memory),
                    event="NOOP",
                    reason=f"already remembered ({event.reason})" if event.reason else "already remembered",
                )
            )
        else:
            out.append(event)
    return out


def _micros(record: MemoryRecord) -> int:
    return to_micros(record.valid_from)


def _memory(
    data: InferenceInput,
    op: Operation,
    text: str,
    vector: Any,
    sources: list[str],
    id: str,
    text_hash: Callable[[str], str],
    *,
    lineage: str | None,
    dedup: bool,
) -> NewMemory:
    return NewMemory(
        id=id,
        lineage_id=lineage or id,
        scope=data.scope,
        text=text,
        category=op.category or (data.categories[0] if data.categories else None),
        metadata=dict(data.metadata),
        hash=text_hash(text),
        valid_from=data.observed_at,
        source_message_ids=sources,
        embedding=vector,
        dedup=dedup,
    )


def _event(
    scope: Scope,
    memory_id: str,
    lineage_id: str,
    event: str,
    old: str | None,
    new: str | None,
    reason: str | None,
    sources: list[str],
) -> NewEvent:
    return NewEvent(
        memory_id=memory_id,
        lineage_id=lineage_id,
        scope=scope,
        event=event,
        old_text=old,
        new_text=new,
        reason=reason,
        actor="llm",
        source_message_ids=sources,
    )
