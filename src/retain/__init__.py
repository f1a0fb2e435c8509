"""Retain: long-term memory for LLM applications.

Search before the LLM call, add after it. See README.md.
"""

from .async_memory import AsyncMemory
from .errors import ConfigError, ConflictError, InvalidInputError, NotFoundError, ProviderError, RetainError, StoreError
from .memory import Memory
from .models import (
    AddResult,
    ChatMessage,
    HistoryEntry,
    Hit,
    MemoryEvent,
    MemoryPage,
    MemoryRecord,
    Message,
    PurgeCounts,
    SearchResult,
)
from .settings import Settings

__all__ = [
    "AddResult",
    "AsyncMemory",
    "ChatMessage",
    "ConfigError",
    "ConflictError",
    "HistoryEntry",
    "Hit",
    "InvalidInputError",
    "Memory",
    "MemoryEvent",
    "MemoryPage",
    "MemoryRecord",
    "Message",
    "NotFoundError",
    "ProviderError",
    "PurgeCounts",
    "RetainError",
    "SearchResult",
    "Settings",
    "StoreError",
]
