"""`Memory`: the library's front door.

It validates input, embeds outside any transaction, builds one `WriteBatch`
per operation and hands it to the store, which commits it atomically. Search
fuses exact vector KNN with BM25 by reciprocal rank. `AsyncMemory` (in
`retain.async_memory`) is derived from this class, not copied.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections import Counter
from datetime import datetime
from functools import lru_cache
from types import TracebackType
from typing import Any

import numpy as np

from .async_bridge import offload
from .dates import query_windows
from .embedders import Embedder, embedder_from_spec
from .embedders.base import Vectors
from .errors import ConfigError, ConflictError, InvalidInputError, NotFoundError, RetainError
from .filters import Filter, parse_filters
from .indexing import facet_texts, index_texts, keyword_query, split_facets, turn_line
from .inputs import (
    MAX_LIMIT,
    MessagesInput,
    check_id,
    check_limit,
    check_metadata,
    check_text,
    make_scope,
    normalise_messages,
    time_or_now,
)
from .llm.base import LLM
from .llm.registry import llm_from_spec
from .models import (
    AddResult,
    ChatMessage,
    HistoryEntry,
    Hit,
    JobInfo,
    MemoryEvent,
    MemoryPage,
    MemoryRecord,
    Message,
    PurgeCounts,
    Scope,
    SearchResult,
)
from .pipeline import InferenceInput, apply_outcome, decide, plan
from .ranking import (
    Fused,
    asked_role,
    boost_in_windows,
    boost_speakers,
    diversify,
    fuse,
    lift_neighbours,
    named_speakers,
    prefer_role,
    voices,
    without_speakers,
)
from .sessions import Session
from .settings import Settings
from .store import Store, open_store
from .store.base import Job, NewEvent, NewJob, NewMemory, NewMessage, Supersede, Vector, WriteBatch
from .timeutil import from_micros, now_micros, to_micros
from .worker import Worker

logger = logging.getLogger(__name__)

#: Candidates taken from each signal before fusion, at least.
CANDIDATE_POOL = 50
#: Candidates the speaker, time and role priors look at, at least.
PRIOR_POOL = 100
#: Candidates re-ordered by maximal marginal relevance, at least.
MMR_POOL = 50
#: Earlier turns of the same session shown to the extraction call as context.
CONTEXT_MESSAGES = 6
#: How much of the new messages (from the end) forms the query for similar memories.
QUERY_CHARS = 4000
MAX_BACKOFF_SECONDS = 3600.0
JOB_STATUSES = ("queued", "running", "done", "dead")


_last_id = 0
_id_lock = threading.Lock()


def new_id() -> str:
    """A UUIDv7: time-ordered, and strictly increasing within a process (RFC 9562, monotonic).

    Search breaks score ties by id, so ids made in the same millisecond must keep their
    creation order too: otherwise equal scores (the two neighbours a hit lifts) are ordered
    at random and the same search over the same turns ranks differently from run to run.
    """
    global _last_id
    ms = now_micros() // 1000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62)
    value |= rand & ((1 << 62) - 1)
    with _id_lock:
        if value <= _last_id:
            value = _last_id + 1
        _last_id = value
    return str(uuid.UUID(int=value))


def text_hash(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode()).hexdigest()


class Memory:
    """Long-term memory over one store. Thread-safe; share one instance per process."""

    def __init__(
        self,
        store: Store | str | None = None,
        embedder: Embedder | str | None = None,
        *,
        llm: LLM | str | None = None,
        settings: Settings | None = None,
        tenant_id: str = "default",
    ) -> None:
        self.settings = settings or Settings.from_env()
        if isinstance(llm, str) or (llm is None and self.settings.llm):
            llm = llm_from_spec(llm or self.settings.llm)
        self.llm: LLM | None = llm
        if embedder is None or isinstance(embedder, str):
            embedder = embedder_from_spec(embedder or self.settings.embedder, self.settings)
        self.embedder = embedder
        if store is None or isinstance(store, str):
            store = open_store(
                store or self.settings.store,
                dimensions=embedder.dimensions,
                embedder_id=embedder.model_id,
                cache_bytes=self.settings.vector_cache_mb * 1024 * 1024,
            )
        self.store = store
        self.tenant_id = make_scope(tenant_id, None, None, None, require=False).tenant_id
        self._access = _AccessRecorder(store) if self.settings.track_access else None
        self._embed_query = lru_cache(maxsize=512)(self._embed_query_uncached)
        #: The in-process worker (at most one), shared with every `for_tenant` view of this Memory.
        self._workers: list[Worker] = []
        self._worker_lock = threading.Lock()

    @classmethod
    def from_config(cls, settings: Settings, *, tenant_id: str = "default") -> Memory:
        return cls(settings=settings, tenant_id=tenant_id)

    def for_tenant(self, tenant_id: str) -> Memory:
        """A view of the same store and embedder that sees only `tenant_id`'s data."""
        view = object.__new__(Memory)
        view.__dict__.update(self.__dict__)
        view.tenant_id = make_scope(tenant_id, None, None, None, require=False).tenant_id
        return view

    # -- writes -----------------------------------------------------------------------

    def add(
        self,
        messages: MessagesInput,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        infer: bool = True,
        background: bool = False,
        at: datetime | str | None = None,
        instructions: str | None = None,
    ) -> AddResult:
        """Remember `messages`.

        With `infer=True` one LLM call extracts facts and reconciles them with what is
        already known (ADD, UPDATE, DELETE, NOOP). The messages are stored first, so an
        LLM failure loses nothing: the add raises `ProviderError` and its job stays
        queued for retry. `background=True` stores the messages, queues the job and
        returns at once (`AddResult.job_id`). With `infer=False` each message is stored
        verbatim as one memory, with no LLM call.
        """
        scope = self._scope(user_id, agent_id, run_id)
        parsed = normalise_messages(
            messages, max_chars=self.settings.max_message_chars, max_count=self.settings.max_messages_per_add
        )
        base_metadata = check_metadata(metadata)
        observed = time_or_now(at, field="at")
        if instructions is not None and not isinstance(instructions, str):
            raise InvalidInputError("instructions must be a string.", field="instructions")
        if infer:
            return self._add_inferred(scope, parsed, base_metadata, observed, background, instructions)
        if background:
            raise InvalidInputError("background=True needs infer=True; verbatim adds are already fast.")
        turns = self.settings.index_context_turns
        indexed = index_texts(parsed, self._conversation_before(scope, observed, turns), turns)
        vectors, facets = self._embed_turns(
            [turn_line(m.content, m.name) for m in parsed], [self._facet_texts(m.content, m.role) for m in parsed]
        )
        batch = WriteBatch(at=now_micros())
        results: list[MemoryEvent] = []
        for message, vector, index_text, facet in zip(parsed, vectors, indexed, facets, strict=True):
            stored = self._new_message(scope, message, observed)
            batch.messages.append(stored)
            meta = {**base_metadata, **message.metadata, "role": message.role}
            if message.name is not None:
                meta["name"] = message.name
            memory = self._new_memory(
                scope, message.content, None, meta, observed, [stored.id], vector, index_text=index_text, facets=facet
            )
            batch.memories.append(memory)
            reason = "stored verbatim (infer=False)"
            batch.events.append(self._event(memory, "ADD", None, message.content, reason, [stored.id]))
            results.append(MemoryEvent(id=memory.id, memory=memory.text, event="ADD", reason=reason))
        self.store.write(self.tenant_id, batch)
        return AddResult(results=results, message_ids=[m.id for m in batch.messages])

    def update(
        self,
        id: str,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        *,
        reason: str | None = None,
    ) -> MemoryEvent:
        """Write a new version of a current memory; the old version stays in its history."""
        old = self.get(id)
        if text is None and metadata is None:
            raise InvalidInputError("update() needs text= or metadata= (or both).", field="text")
        if old.valid_to is not None:
            raise ConflictError(
                f"Memory {id!r} is no longer current (superseded by {old.superseded_by!r}); update that one.",
                field="id",
            )
        new_text = (
            old.memory if text is None else check_text(text, field="text", max_chars=self.settings.max_message_chars)
        )
        new_meta = old.metadata if metadata is None else check_metadata(metadata)
        role = new_meta.get("role")
        sentences = self._facet_texts(new_text, role if isinstance(role, str) else None)
        if new_text == old.memory:
            vector = self.store.vectors(self.tenant_id, [id])[id]
            facets = self._embed_turns([], [sentences], np.asarray([vector]))[1][0]
        else:
            (vector,), (facets,) = self._embed_turns([new_text], [sentences])
        now = now_micros()
        scope = Scope(tenant_id=self.tenant_id, user_id=old.user_id, agent_id=old.agent_id, run_id=old.run_id)
        memory = self._new_memory(
            scope,
            new_text,
            old.category,
            new_meta,
            now,
            old.source_message_ids,
            vector,
            lineage=old.lineage_id,
            facets=facets,
        )
        why = reason or "updated through the API"
        batch = WriteBatch(
            at=now,
            memories=[memory],
            supersede=[Supersede(old_id=id, new_id=memory.id, valid_to=now)],
            events=[self._event(memory, "UPDATE", old.memory, new_text, why, [])],
        )
        self.store.write(self.tenant_id, batch)
        return MemoryEvent(id=memory.id, memory=new_text, event="UPDATE", previous_memory=old.memory, reason=why)

    def delete(self, id: str) -> PurgeCounts:
        """Purge a memory: every version, its vectors, keyword rows and history."""
        return self.store.purge_lineage(self.tenant_id, self.get(id).lineage_id)

    def delete_all(
        self, *, user_id: str | None = None, agent_id: str | None = None, run_id: str | None = None
    ) -> PurgeCounts:
        """Purge everything in the scope: memories, history, vectors, keyword rows, messages and jobs."""
        return self.store.purge_scope(self._scope(user_id, agent_id, run_id))

    # -- reads ------------------------------------------------------------------------

    def get(self, id: str) -> MemoryRecord:
        records = self.store.get(self.tenant_id, [check_id(id)])
        if not records:
            raise NotFoundError("memory", id)
        return records[0]

    def get_all(
        self,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        filters: dict[str, Any] | None = None,
        include_superseded: bool = False,
        limit: int = 100,
        cursor: str | None = None,
    ) -> MemoryPage:
        """Memories in scope, newest first, a page at a time (pass `next_cursor` back as `cursor`)."""
        scope = self._scope(user_id, agent_id, run_id)
        after = None
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor.isdigit():
                raise InvalidInputError(f"cursor {cursor!r} is not one that get_all returned.", field="cursor")
            after = int(cursor)
        records, next_after = self.store.list_memories(
            scope, parse_filters(filters), include_superseded, check_limit(limit), after
        )
        return MemoryPage(results=records, next_cursor=None if next_after is None else str(next_after))

    def search(
        self,
        query: str,
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        filters: dict[str, Any] | None = None,
        limit: int = 10,
        threshold: float | None = None,
        as_of: datetime | str | None = None,
        at: datetime | str | None = None,
        explain: bool = False,
    ) -> SearchResult:
        """The memories most relevant to `query` in scope.

        `threshold` is the minimum cosine similarity between query and memory, as the vector search scores
        it: without the speakers the query names (the speaker boost weighs those), and for a turn embedded
        by sentence too, its best sentence. `as_of` searches the memories that were valid at that time
        instead of the current ones. `at` is when the query is asked (default: now), the day that dates in
        it such as "last Saturday" or "two weeks ago" count from; unlike `as_of` it does not change which
        memories are searched. `explain=True` fills `Hit.scores` with each signal.
        """
        scope = self._scope(user_id, agent_id, run_id)
        check_text(query, field="query", max_chars=self.settings.max_message_chars)
        limit = check_limit(limit)
        where = parse_filters(filters)
        if threshold is not None and (isinstance(threshold, bool) or not -1.0 <= float(threshold) <= 1.0):
            raise InvalidInputError(f"threshold must be a number from -1 to 1, got {threshold!r}.", field="threshold")
        as_of_us = None if as_of is None else time_or_now(as_of, field="as_of")
        asked = time_or_now(at, field="at")
        hits = []
        for f, record, similarity in self._rank(scope, query, limit, where, as_of_us, threshold, asked):
            scores = None
            if explain:
                scores = {"rrf": f.score, "vector": similarity}
                if f.vector is not None:
                    scores["vector_rank"] = float(f.vector)
                if f.keyword is not None:
                    scores["keyword_rank"] = float(f.keyword)
                    scores["bm25"] = f.bm25 or 0.0
            hits.append(_hit(record, f.score, scores))
        if self._access is not None:
            self._access.record(self.tenant_id, [h.id for h in hits])
        return SearchResult(results=hits)

    def _rank(
        self,
        scope: Scope,
        query: str,
        limit: int,
        where: Filter | None = None,
        as_of: int | None = None,
        threshold: float | None = None,
        asked: int | None = None,
    ) -> list[tuple[Fused, MemoryRecord, float]]:
        """Hybrid retrieval: vector KNN and BM25 in scope, fused by reciprocal rank."""
        now = now_micros()
        st = self.settings
        # One snapshot of the user's index for every stage; keyword search first, since its round trip
        # (the query's lexemes on PostgreSQL) also reads the version the others then use.
        with self.store.snapshot():
            pool = max(CANDIDATE_POOL, 2 * limit)
            sparse = self.store.keyword_search(scope, keyword_query(query), pool, where, as_of, now)
            # Speakers the query names are left to the speaker boost; both signals match what it asks about.
            speakers = self.store.speakers(scope, [c.id for c in sparse]) if st.speaker_boost > 0 else frozenset()
            named = named_speakers(query, speakers)
            content = without_speakers(query, named)
            if content != query:
                sparse = self.store.keyword_search(scope, keyword_query(content), pool, where, as_of, now)
            vector = self._embed_query(content)
            dense = self.store.vector_search(scope, vector, pool, where, as_of, now)
            fused = fuse(dense, sparse, keyword_weight=st.keyword_weight)
            weights = st.neighbour_weights
            if max(weights) > 0:
                gap = int(st.conversation_gap_seconds * 1_000_000)
                sources = [f.id for f in fused[: 2 * limit]]
                adjacent = self.store.adjacent(self.tenant_id, sources, len(weights), gap, now)
                # With filters or as_of a neighbour may fall outside them, so only candidates are lifted.
                fused = lift_neighbours(fused, adjacent, weights, new_ok=where is None and as_of is None)
            windows = query_windows(query, from_micros(now if asked is None else asked)) if st.time_boost > 0 else []
            if named or st.role_prior > 0 or windows:
                # Priors on who spoke and when: they scale scores by a few times at most, so only the head can
                # reach the results.
                head = fused[: max(PRIOR_POOL, 2 * limit)]
                origins = self.store.origins(self.tenant_id, [f.id for f in head])
                if named:
                    head = boost_speakers(head, origins, voices(query, named), st.speaker_boost)
                if windows:
                    spans = [(to_micros(start), to_micros(end)) for start, end in windows]
                    head = boost_in_windows(head, origins, spans, st.time_boost)
                if st.role_prior > 0:
                    head = prefer_role(head, origins, asked_role(query), st.role_prior)
                fused = head + fused[len(head) :]
            missing = [f.id for f in fused if f.vector is None]
            similarities = {c.id: c.score for c in dense} | self.store.similarity(self.tenant_id, missing, vector)
            if threshold is not None:
                fused = [f for f in fused if similarities.get(f.id, -1.0) >= threshold]
            if self.settings.mmr_lambda < 1.0 and len(fused) > 1:
                head = fused[: max(MMR_POOL, 2 * limit)]
                fused = diversify(
                    head, self.store.vectors(self.tenant_id, [f.id for f in head]), self.settings.mmr_lambda
                )
            fused = fused[:limit]
            records = {r.id: r for r in self.store.get(self.tenant_id, [f.id for f in fused])}
            # A record can vanish between the index read and this fetch if it was purged meanwhile.
            return [(f, records[f.id], similarities.get(f.id, 0.0)) for f in fused if f.id in records]

    def history(self, id: str) -> list[HistoryEntry]:
        """Every event of every version of the memory, oldest first."""
        return self.store.history(self.tenant_id, self.get(id).lineage_id)

    def sources(self, id: str) -> list[ChatMessage]:
        """The chat messages a memory was learned from (those still stored), oldest first."""
        return self.store.messages_by_id(self.tenant_id, self.get(id).source_message_ids)

    # -- inference and jobs -----------------------------------------------------------

    def _add_inferred(
        self,
        scope: Scope,
        parsed: list[Message],
        metadata: dict[str, Any],
        observed: int,
        background: bool,
        instructions: str | None,
    ) -> AddResult:
        self._require_llm()
        stored = [self._new_message(scope, m, observed) for m in parsed]
        return self._extract(scope, stored, [m.id for m in stored], metadata, observed, background, instructions)

    def extract(
        self,
        message_ids: list[str],
        *,
        user_id: str | None = None,
        agent_id: str | None = None,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        background: bool = True,
        instructions: str | None = None,
    ) -> AddResult:
        """Learn from chat messages that are already stored (through a session or the chat loop).

        Works like `add(infer=True)` over those messages. They must exist in this scope.
        """
        scope = self._scope(user_id, agent_id, run_id)
        if not isinstance(message_ids, list) or not message_ids:
            raise InvalidInputError("message_ids must be a non-empty list of message ids.", field="message_ids")
        ids = [check_id(i) for i in message_ids]
        found = {m.id: m for m in self.store.messages_by_id(self.tenant_id, ids)}
        for i in ids:
            m = found.get(i)
            if m is None or any(
                want is not None and have != want
                for want, have in ((scope.user_id, m.user_id), (scope.agent_id, m.agent_id), (scope.run_id, m.run_id))
            ):
                raise NotFoundError("message", i)
        if instructions is not None and not isinstance(instructions, str):
            raise InvalidInputError("instructions must be a string.", field="instructions")
        self._require_llm()
        observed = to_micros(max(found[i].created_at for i in ids))
        return self._extract(scope, [], ids, check_metadata(metadata), observed, background, instructions)

    def _require_llm(self) -> None:
        if self.llm is None:
            raise ConfigError(
                "add(infer=True) needs an LLM to extract facts: set RETAIN_LLM=openai:gpt-4o-mini (or "
                "local:qwen2.5-1.5b), pass llm=..., or call add(..., infer=False) to store the messages verbatim."
            )

    def _extract(
        self,
        scope: Scope,
        new_messages: list[NewMessage],
        message_ids: list[str],
        metadata: dict[str, Any],
        observed: int,
        background: bool,
        instructions: str | None,
    ) -> AddResult:
        """Queue one extraction job over `message_ids` (storing `new_messages` in the same transaction)."""
        payload = {
            "message_ids": message_ids,
            "metadata": metadata,
            "observed_at": observed,
            "instructions": instructions if instructions is not None else self.settings.instructions,
        }
        job = NewJob(new_id(), scope, "extract", payload, self.settings.job_max_attempts)
        self.store.write(self.tenant_id, WriteBatch(at=now_micros(), messages=new_messages, jobs=[job]))
        if background:
            if self.settings.in_process_worker:
                self.start_worker()
            return AddResult(results=[], message_ids=message_ids, job_id=job.id)
        claimed = self.store.claim_job(now_micros(), self._lease, job_id=job.id)
        if claimed is None:  # a worker took it first; it will finish it
            return AddResult(results=[], message_ids=message_ids, job_id=job.id)
        return self.process_job(claimed)

    @property
    def _lease(self) -> int:
        return int(self.settings.job_lease_seconds * 1_000_000)

    def process_job(self, job: Job) -> AddResult:
        """Run one claimed job. On failure it is requeued with backoff (or dead-lettered) and the error raised."""
        memory = self if job.scope.tenant_id == self.tenant_id else self.for_tenant(job.scope.tenant_id)
        try:
            return memory._infer(job)
        except Exception as exc:  # release the lease whatever failed, then let the caller see the error
            now = now_micros()
            if job.attempts >= job.max_attempts:
                retry_at = None
            else:
                delay = self.settings.job_backoff_seconds * 2 ** (job.attempts - 1)
                retry_at = now + int(min(delay, MAX_BACKOFF_SECONDS) * 1_000_000)
            self.store.release_job(job.id, f"{type(exc).__name__}: {exc}", retry_at, now)
            raise

    def _infer(self, job: Job) -> AddResult:
        assert self.llm is not None
        payload = job.payload
        ids: list[str] = payload["message_ids"]
        messages = self.store.messages_by_id(self.tenant_id, ids)
        if len(messages) != len(ids):  # purged by delete_all since it was queued: nothing left to learn from
            self.store.write(self.tenant_id, WriteBatch(at=now_micros(), finish_job=(job.id, {"skipped": True})))
            return AddResult(results=[], message_ids=[m.id for m in messages], job_id=job.id)
        scope = job.scope
        context: list[ChatMessage] = []
        if scope.run_id is not None:
            recent = self.store.messages(scope, len(ids) + CONTEXT_MESSAGES)
            context = [m for m in recent if m.id not in set(ids)][-CONTEXT_MESSAGES:]
        reconcile = scope.model_copy(update={"run_id": None}) if scope.user_id or scope.agent_id else scope
        query = "\n".join(m.content for m in messages)[-QUERY_CHARS:]
        existing = [r for _, r, _ in self._rank(reconcile, query, self.settings.similar_memories)]
        data = InferenceInput(
            scope=scope,
            messages=messages,
            context=context,
            existing=existing,
            observed_at=payload["observed_at"],
            metadata=payload["metadata"],
            categories=self.settings.categories,
            instructions=payload.get("instructions"),
        )
        decision = decide(self.llm, data)
        batch, events = plan(data, decision, self.embedder, at=now_micros(), new_id=new_id, text_hash=text_hash)
        batch.dedup_threshold = self.settings.dedup_threshold
        usage = decision.usage
        batch.finish_job = (job.id, {"usage": usage.model_dump(), "operations": len(decision.operations)})
        outcome = self.store.write(self.tenant_id, batch)
        matched = [existing_id for existing_id, _ in outcome.duplicates.values()]
        texts = {r.id: r.memory for r in self.store.get(self.tenant_id, matched)}
        return AddResult(results=apply_outcome(events, outcome, texts), message_ids=ids, job_id=job.id, usage=usage)

    def run_jobs(self, max_jobs: int | None = None) -> int:
        """Process due background jobs in this thread until none is due; returns how many ran."""
        done = 0
        while max_jobs is None or done < max_jobs:
            job = self.store.claim_job(now_micros(), self._lease)
            if job is None:
                break
            try:
                self.process_job(job)
            except RetainError as exc:
                logger.warning("job %s failed (attempt %d/%d): %s", job.id, job.attempts, job.max_attempts, exc)
            done += 1
        return done

    def jobs(self, *, status: str | None = None, limit: int = 50) -> list[JobInfo]:
        """Background jobs of this tenant, newest first (`status`: queued, running, done or dead)."""
        if status is not None and status not in JOB_STATUSES:
            raise InvalidInputError(f"status must be one of {', '.join(JOB_STATUSES)}, got {status!r}.", field="status")
        return [_job_info(j) for j in self.store.list_jobs(self.tenant_id, status, check_limit(limit))]

    def retry_job(self, job_id: str) -> JobInfo:
        """Requeue a dead-lettered (or waiting) job to run now with fresh attempts."""
        if not self.store.retry_job(self.tenant_id, check_id(job_id), now_micros()):
            raise NotFoundError("retryable job", job_id)
        if self.settings.in_process_worker:
            self.start_worker()
        for job in self.jobs(limit=MAX_LIMIT):
            if job.id == job_id:
                return job
        raise NotFoundError("job", job_id)

    def start_worker(self) -> None:
        """Run background jobs in a thread of this process (started by the first background add)."""
        with self._worker_lock:
            if not self._workers:
                self._workers.append(Worker(self, poll_seconds=self.settings.worker_poll_seconds))
                self._workers[0].start()
            else:
                self._workers[0].wake()

    # -- chat history -----------------------------------------------------------------

    def sessions(self, run_id: str, *, user_id: str | None = None, agent_id: str | None = None) -> Session:
        """The chat history of one session (`run_id`), optionally narrowed to a user or agent."""
        return Session(self, self._scope(user_id, agent_id, run_id))

    def messages(self, scope: Scope, limit: int | None = None) -> list[ChatMessage]:
        if limit is not None:
            check_limit(limit)
        return self.store.messages(scope, limit)

    def add_message(
        self, scope: Scope, role: str, content: str, name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ChatMessage:
        (message,) = normalise_messages(
            {"role": role, "content": content, "name": name, "metadata": check_metadata(metadata)},
            max_chars=self.settings.max_message_chars,
            max_count=1,
        )
        now = now_micros()
        stored = self._new_message(scope, message, now)
        self.store.write(self.tenant_id, WriteBatch(at=now, messages=[stored]))
        return _chat_message(stored)

    def clear_messages(self, scope: Scope) -> int:
        return self.store.delete_messages(scope)

    # -- lifecycle --------------------------------------------------------------------

    def close(self) -> None:
        for worker in self._workers:
            worker.stop()
        if self._access is not None:
            self._access.close()
        self.store.close()

    def __enter__(self) -> Memory:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- helpers ----------------------------------------------------------------------

    def _scope(self, user_id: str | None, agent_id: str | None, run_id: str | None) -> Scope:
        return make_scope(self.tenant_id, user_id, agent_id, run_id)

    def _conversation_before(self, scope: Scope, at: int, turns: int) -> list[ChatMessage]:
        """The last `turns` stored messages in scope, if they belong to the conversation happening at `at`."""
        if turns <= 0:
            return []
        earlier = self.store.messages(scope, turns)
        gap = int(self.settings.conversation_gap_seconds * 1_000_000)
        while earlier and not 0 <= at - to_micros(earlier[0].created_at) <= gap:
            earlier = earlier[1:]
        return earlier

    def _embed_query_uncached(self, query: str) -> Vector:
        vector: Vector = offload(self.embedder.embed, [query])[0]
        vector.setflags(write=False)
        return vector

    @staticmethod
    def _new_message(scope: Scope, message: Message, at: int) -> NewMessage:
        return NewMessage(
            id=new_id(),
            scope=scope,
            role=message.role,
            content=message.content,
            name=message.name,
            metadata=message.metadata,
            created_at=at,
        )

    def _facet_texts(self, content: str, role: str | None) -> list[str]:
        """The sentences a verbatim turn is faceted by, when the settings index facets."""
        return facet_texts(content, role) if self.settings.index_facets else []

    def _embed_turns(
        self, texts: list[str], sentences: list[list[str]], known: Vectors | None = None
    ) -> tuple[Vectors, list[Vector | None]]:
        """The vectors of `texts` (or the `known` ones, given no texts), and of each turn's facet `sentences`
        (None for none), in one embedder call."""
        flat = [s for own in sentences for s in own]
        if not texts and not flat:
            return np.zeros((0, self.embedder.dimensions), dtype=np.float32), [None] * len(sentences)
        embedded = offload(self.embedder.embed, [*texts, *flat])
        turns = embedded[: len(texts)] if known is None else known
        return turns, split_facets(embedded[len(texts) :], sentences, turns)

    @staticmethod
    def _new_memory(
        scope: Scope,
        text: str,
        category: str | None,
        metadata: dict[str, Any],
        valid_from: int,
        sources: list[str],
        vector: Vector,
        *,
        lineage: str | None = None,
        index_text: str | None = None,
        facets: Vector | None = None,
    ) -> NewMemory:
        id = new_id()
        return NewMemory(
            id=id,
            lineage_id=lineage or id,
            scope=scope,
            text=text,
            category=category,
            metadata=metadata,
            hash=text_hash(text),
            valid_from=valid_from,
            source_message_ids=sources,
            embedding=vector,
            index_text=index_text,
            facets=facets,
        )

    @staticmethod
    def _event(
        memory: NewMemory, event: str, old: str | None, new: str | None, reason: str, sources: list[str]
    ) -> NewEvent:
        return NewEvent(
            memory_id=memory.id,
            lineage_id=memory.lineage_id,
            scope=memory.scope,
            event=event,
            old_text=old,
            new_text=new,
            reason=reason,
            actor="api",
            source_message_ids=sources,
        )


def _job_info(job: Job) -> JobInfo:
    return JobInfo(
        id=job.id,
        kind=job.kind,
        status=job.status,  # type: ignore[arg-type]
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        user_id=job.scope.user_id,
        agent_id=job.scope.agent_id,
        run_id=job.scope.run_id,
        run_after=from_micros(job.run_after),
        last_error=job.last_error,
        result=job.result,
        created_at=from_micros(job.created_at),
        updated_at=from_micros(job.updated_at),
    )


def _hit(record: MemoryRecord, score: float, scores: dict[str, float] | None) -> Hit:
    return Hit(
        id=record.id,
        memory=record.memory,
        score=score,
        category=record.category,
        metadata=record.metadata,
        user_id=record.user_id,
        agent_id=record.agent_id,
        run_id=record.run_id,
        created_at=record.created_at,
        valid_from=record.valid_from,
        valid_to=record.valid_to,
        source=record.source_message_ids,
        scores=scores,
    )


def _chat_message(stored: NewMessage) -> ChatMessage:
    s = stored.scope
    return ChatMessage(
        id=stored.id,
        role=stored.role,
        content=stored.content,
        name=stored.name,
        user_id=s.user_id,
        agent_id=s.agent_id,
        run_id=s.run_id,
        metadata=stored.metadata,
        created_at=from_micros(stored.created_at),
    )


class _AccessRecorder:
    """Counts search hits and writes them in the background, so a search never waits on a write lock."""

    FLUSH_SECONDS = 1.0

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: dict[str, Counter[str]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def record(self, tenant_id: str, ids: list[str]) -> None:
        if not ids:
            return
        with self._lock:
            self._pending.setdefault(tenant_id, Counter()).update(ids)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="retain-access", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.FLUSH_SECONDS)
            try:
                self.flush()
            except RetainError as exc:  # counters are best-effort; searches must not fail for them
                logger.warning("could not record memory access counts: %s", exc)

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        now = now_micros()
        for tenant_id, counts in pending.items():
            self._store.record_access(tenant_id, dict(counts), now)

    def close(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
