"""The HTTP routes. Each is thin: check the caller, call `Memory` or `Chat`, return its model.

Routes are plain `def`s, so FastAPI runs them in its thread pool; `Memory` is
thread-safe and its store calls block briefly. The tenant always comes from the
caller's key, so a route cannot reach another tenant's data whatever ids or
user ids a request names: such ids are simply not found (404).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from ..chat import Chat, ChatEvent, event_json
from ..memory import Memory
from ..models import (
    AddResult,
    ChatMessage,
    HistoryEntry,
    JobInfo,
    MemoryEvent,
    MemoryPage,
    MemoryRecord,
    PurgeCounts,
    SearchResult,
)
from ..store.base import ApiKey
from ..timeutil import from_micros, opt_from_micros
from .metrics import Metrics
from .schemas import (
    AddRequest,
    ChatRequest,
    Deleted,
    Info,
    KeyCreate,
    KeyCreated,
    KeyOut,
    SearchRequest,
    SessionMessageIn,
    UpdateRequest,
)
from .security import Caller, Forbidden

router = APIRouter()

Limit = Annotated[int, Query(ge=1, le=1000)]
ScopeId = Annotated[str | None, Query(max_length=256)]


def caller(request: Request, authorization: Annotated[str | None, Header()] = None) -> Caller:
    found: Caller = request.app.state.auth.caller(authorization)
    request.state.tenant_id = found.tenant_id
    return found


CallerDep = Annotated[Caller, Depends(caller)]


def memory_for(request: Request, who: CallerDep) -> Memory:
    base: Memory = request.app.state.memory
    return base.for_tenant(who.tenant_id)


MemoryDep = Annotated[Memory, Depends(memory_for)]


def admin(who: CallerDep) -> Caller:
    if not who.admin:
        raise Forbidden("This needs an admin key (retain keys create --tenant NAME --admin).")
    return who


AdminDep = Annotated[Caller, Depends(admin)]


# -- memories -------------------------------------------------------------------------


@router.post("/v1/memories", tags=["memories"])
def add_memories(body: AddRequest, memory: MemoryDep) -> AddResult:
    """Remember messages: extract facts with the LLM (queued by default) or store them verbatim."""
    messages: Any = body.messages if isinstance(body.messages, str) else [m.model_dump() for m in body.messages]
    return memory.add(
        messages,
        user_id=body.user_id,
        agent_id=body.agent_id,
        run_id=body.run_id,
        metadata=body.metadata,
        infer=body.infer,
        background=body.background and body.infer,
        at=body.at,
        instructions=body.instructions,
    )


@router.post("/v1/memories/search", tags=["memories"])
def search_memories(body: SearchRequest, memory: MemoryDep) -> SearchResult:
    """The memories most relevant to a query, in scope; `explain` adds each signal's score."""
    return memory.search(
        body.query,
        user_id=body.user_id,
        agent_id=body.agent_id,
        run_id=body.run_id,
        filters=body.filters,
        limit=body.limit,
        threshold=body.threshold,
        as_of=body.as_of,
        at=body.at,
        explain=body.explain,
    )


@router.get("/v1/memories", tags=["memories"])
def list_memories(
    memory: MemoryDep,
    user_id: ScopeId = None,
    agent_id: ScopeId = None,
    run_id: ScopeId = None,
    include_superseded: bool = False,
    limit: Limit = 100,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> MemoryPage:
    """Memories in scope, newest first; pass `next_cursor` back as `cursor` for the next page."""
    return memory.get_all(
        user_id=user_id,
        agent_id=agent_id,
        run_id=run_id,
        include_superseded=include_superseded,
        limit=limit,
        cursor=cursor,
    )


@router.delete("/v1/memories", tags=["memories"])
def delete_all_memories(
    memory: MemoryDep, user_id: ScopeId = None, agent_id: ScopeId = None, run_id: ScopeId = None
) -> PurgeCounts:
    """Purge everything in the scope: memories, history, messages and jobs."""
    return memory.delete_all(user_id=user_id, agent_id=agent_id, run_id=run_id)


@router.get("/v1/memories/{memory_id}", tags=["memories"])
def get_memory(memory_id: str, memory: MemoryDep) -> MemoryRecord:
    return memory.get(memory_id)


@router.patch("/v1/memories/{memory_id}", tags=["memories"])
def update_memory(memory_id: str, body: UpdateRequest, memory: MemoryDep) -> MemoryEvent:
    """Write a new version; the old one stays in the history (409 if it is not the current version)."""
    return memory.update(memory_id, text=body.text, metadata=body.metadata, reason=body.reason)


@router.delete("/v1/memories/{memory_id}", tags=["memories"])
def delete_memory(memory_id: str, memory: MemoryDep) -> PurgeCounts:
    """Purge one memory: every version and its history."""
    return memory.delete(memory_id)


@router.get("/v1/memories/{memory_id}/history", tags=["memories"])
def memory_history(memory_id: str, memory: MemoryDep) -> list[HistoryEntry]:
    """Every change to the memory, oldest first, with reasons and source messages."""
    return memory.history(memory_id)


@router.get("/v1/memories/{memory_id}/sources", tags=["memories"])
def memory_sources(memory_id: str, memory: MemoryDep) -> list[ChatMessage]:
    """The chat messages the memory was learned from."""
    return memory.sources(memory_id)


# -- sessions -------------------------------------------------------------------------


@router.get("/v1/sessions/{session_id}/messages", tags=["sessions"])
def session_messages(
    session_id: str,
    memory: MemoryDep,
    user_id: ScopeId = None,
    agent_id: ScopeId = None,
    limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
) -> list[ChatMessage]:
    """The session's messages, oldest first (with `limit`, the newest `limit`)."""
    session = memory.sessions(session_id, user_id=user_id, agent_id=agent_id)
    return session.messages if limit is None else session.recent(limit)


@router.post("/v1/sessions/{session_id}/messages", tags=["sessions"], status_code=201)
def add_session_message(session_id: str, body: SessionMessageIn, memory: MemoryDep) -> ChatMessage:
    """Store one chat message in the session (this extracts no memories)."""
    session = memory.sessions(session_id, user_id=body.user_id, agent_id=body.agent_id)
    return session.add_message(body.role, body.content, name=body.name, metadata=body.metadata)


@router.delete("/v1/sessions/{session_id}/messages", tags=["sessions"])
def clear_session(session_id: str, memory: MemoryDep, user_id: ScopeId = None, agent_id: ScopeId = None) -> Deleted:
    return Deleted(deleted=memory.sessions(session_id, user_id=user_id, agent_id=agent_id).clear())


# -- chat -----------------------------------------------------------------------------


@router.post(
    "/v1/chat",
    tags=["chat"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events, one JSON each."}},
)
def chat(body: ChatRequest, request: Request, who: CallerDep) -> StreamingResponse:
    """Reply with memory: search before the LLM call, stream the reply, learn after it (in the background).

    Events: `memories` (what was injected; `memory_status` says whether memory was available),
    `tool` (agent mode), `token`, then `done` or `error`.
    """
    base: Chat = request.app.state.chat
    events = base.for_tenant(who.tenant_id).stream(
        body.message, user_id=body.user_id, session_id=body.session_id, mode=body.mode
    )
    metrics: Metrics = request.app.state.metrics
    return StreamingResponse(
        _sse(events, metrics),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _sse(events: Iterator[ChatEvent], metrics: Metrics) -> Iterator[str]:
    for event in events:
        if event.memory_status == "unavailable":
            metrics.chat_without_memory.inc()
        yield f"event: {event.type}\ndata: {event_json(event)}\n\n"


# -- jobs -----------------------------------------------------------------------------


@router.get("/v1/jobs", tags=["jobs"])
def list_jobs(
    memory: MemoryDep, status: Annotated[str | None, Query(max_length=20)] = None, limit: Limit = 50
) -> list[JobInfo]:
    """Background extraction jobs, newest first."""
    return memory.jobs(status=status, limit=limit)


@router.post("/v1/jobs/{job_id}/retry", tags=["jobs"])
def retry_job(job_id: str, memory: MemoryDep) -> JobInfo:
    """Requeue a dead-lettered job with fresh attempts."""
    return memory.retry_job(job_id)


# -- about the service ----------------------------------------------------------------


@router.get("/v1/info", tags=["service"])
def info(request: Request, who: CallerDep) -> Info:
    """What this server runs on, and which LLM (if any) chat and extraction use."""
    memory: Memory = request.app.state.memory
    llm = request.app.state.chat.llm
    return Info(
        tenant_id=who.tenant_id,
        auth=request.app.state.auth.enabled,
        admin=who.admin,
        llm=None if llm is None else llm.model,
        llm_help=None
        if llm is not None
        else "No LLM is configured, so chat and fact extraction are off (memory CRUD and search work). "
        "Restart with RETAIN_LLM=local:qwen2.5-1.5b (pip install 'retain[local]') or "
        "RETAIN_LLM=openai:gpt-4o-mini with OPENAI_API_KEY set.",
        embedder=memory.embedder.model_id,
        store=type(memory.store).__name__,
    )


# -- admin ----------------------------------------------------------------------------


@router.post("/v1/admin/keys", tags=["admin"], status_code=201)
def create_key(body: KeyCreate, request: Request, _: AdminDep) -> KeyCreated:
    """Make an API key for a tenant. The secret is in this response only."""
    key, secret = request.app.state.auth.keys.create(body.tenant_id, name=body.name, admin=body.admin)
    return KeyCreated(**_key_out(key).model_dump(), secret=secret)


@router.get("/v1/admin/keys", tags=["admin"])
def list_keys(request: Request, _: AdminDep, tenant_id: ScopeId = None) -> list[KeyOut]:
    return [_key_out(k) for k in request.app.state.auth.keys.list(tenant_id)]


@router.delete("/v1/admin/keys/{key_id}", tags=["admin"], status_code=204)
def revoke_key(key_id: str, request: Request, _: AdminDep) -> Response:
    """Revoke a key; requests with it get 401 from now on."""
    request.app.state.auth.keys.revoke(key_id)
    return Response(status_code=204)


def _key_out(key: ApiKey) -> KeyOut:
    return KeyOut(
        id=key.id,
        tenant_id=key.tenant_id,
        name=key.name,
        prefix=key.prefix,
        admin=key.admin,
        created_at=from_micros(key.created_at),
        revoked_at=opt_from_micros(key.revoked_at),
    )
