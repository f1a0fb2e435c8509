"""Chat history per session, shaped like LangChain's BaseChatMessageHistory."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from .async_bridge import run_async
from .models import ChatMessage, Scope

P = ParamSpec("P")
T = TypeVar("T")

if TYPE_CHECKING:
    from .memory import Memory


class Session:
    """The messages of one run (`run_id`). Adding messages here stores them; it extracts no memories."""

    def __init__(self, memory: Memory, scope: Scope) -> None:
        self._memory = memory
        self.scope = scope

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

    async def _awaited(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn` as `AsyncMemory` runs it: on the event loop over PostgreSQL, in a thread over SQLite."""
        return await run_async(self._memory.store.native_async, fn, *args, **kwargs)

    async def aget_messages(self) -> list[ChatMessage]:
        return await self._awaited(self._memory.messages, self.scope)

    async def aadd_message(
        self, role: str, content: str, *, name: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ChatMessage:
        return await self._awaited(self._memory.add_message, self.scope, role, content, name, metadata)

    async def aclear(self) -> int:
        return await self._awaited(self._memory.clear_messages, self.scope)
