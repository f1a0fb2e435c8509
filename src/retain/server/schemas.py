"""Request and response bodies of the HTTP API (the library's models are reused for responses)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..chat import ChatMode


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MessageIn(_Body):
    role: Literal["user", "assistant", "system", "tool"] = "user"
    content: str
    name: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ScopeIn(_Body):
    user_id: str | None = None
    agent_id: str | None = None
    run_id: str | None = None


class AddRequest(ScopeIn):
    messages: str | list[MessageIn] = Field(description="A string (one user message) or a list of messages.")
    metadata: dict[str, Any] | None = None
    infer: bool = Field(True, description="Extract facts with the LLM (true) or store each message verbatim (false).")
    background: bool = Field(True, description="With infer: queue the extraction and return at once.")
    at: datetime | None = Field(None, description="When the messages happened (default: now).")
    instructions: str | None = None


class SearchRequest(ScopeIn):
    query: str
    filters: dict[str, Any] | None = None
    limit: int = Field(10, ge=1, le=1000)
    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    as_of: datetime | None = Field(None, description="Search the memories that were valid then (history).")
    at: datetime | None = Field(
        None, description='When the query is asked (default: now): dates in it such as "last week" count from it.'
    )
    explain: bool = False


class UpdateRequest(_Body):
    text: str | None = None
    metadata: dict[str, Any] | None = None
    reason: str | None = None


class SessionMessageIn(_Body):
    role: Literal["user", "assistant", "system", "tool"]
    content: str
    name: str | None = None
    metadata: dict[str, Any] | None = None
    user_id: str | None = None
    agent_id: str | None = None


class ChatRequest(_Body):
    user_id: str
    session_id: str
    message: str
    mode: ChatMode = "simple"


class Deleted(BaseModel):
    deleted: int


class KeyCreate(_Body):
    tenant_id: str
    name: str = ""
    admin: bool = False


class KeyOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    prefix: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    secret: str = Field(description="The key itself. It is shown only now; store it safely.")


class Info(BaseModel):
    tenant_id: str
    auth: bool
    admin: bool
    llm: str | None = Field(description="The model chat and extraction use, or null when none is configured.")
    llm_help: str | None
    embedder: str
    store: str


class ErrorBody(BaseModel):
    type: str
    message: str
    field: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
