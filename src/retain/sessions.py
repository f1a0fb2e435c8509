"""Chat history per session, shaped like LangChain's BaseChatMessageHistory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .async_bridge import run_async
from .models import ChatMessage, Scope

if TYPE_CHECKING:
    from .memory import Memory


class Session:
    """The messages of one run (`run_id`). Adding messages here stores them; it extracts no memories."""

    def __init__(self, memory: Memory, scope: Scope) -> None:
        self._memory = memory
        self.scope = scope
        self._native = memory.store.native_async

    @property
    def messages(self) -> list[ChatMessage]:
        return self._memory.messages(self.scope)

    def recent(self, limit: int) -> list[ChatMessage]:
        """The newest `limit` messages, oldest first."""
        return self._memory.messages(self.scope, limit)

    def add_message(
        self, role: str, content: str, *, name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ChatMessage:
        return self._memory.add_message(self.scope, role, content, name, metadata)

    def clear(self) -> int:
        """Delete this session's messages; returns how many there were."""
        return self._memory.clear_messages(self.scope)

    async def aget_messages(self) -> list[ChatMessage]:
        return await run_async(self._native, self._memory.messages, self.scope)

    async def aadd_message(
        self, role: str, content: str, *, name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ChatMessage:
        return await run_async(self._native, self._memory.add_message, self.scope, role, content, name, metadata)

    async def aclear(self) -> int:
        return await run_async(self._native, self._memory.clear_messages, self.scope)
