"""Every error Retain raises, as one tree.

    RetainError                      root; catch this to catch everything Retain raises
    ├── InvalidInputError(ValueError) a caller passed something Retain cannot accept
    │   └── ConflictError             ... because of the current state (e.g. updating a superseded memory)
    ├── NotFoundError(LookupError)    an id that does not exist in the caller's scope
    ├── ConfigError                   settings or a provider are missing or inconsistent
    ├── ProviderError                 an embedder or LLM failed or answered nonsense
    └── StoreError                    the store failed or its file is not a Retain store

Each message says what went wrong and how to fix it. Errors carry their data as
attributes so callers (and the HTTP layer) never parse messages.
"""

from __future__ import annotations


class RetainError(Exception):
    """Root of every error Retain raises."""


class InvalidInputError(RetainError, ValueError):
    """The caller passed something Retain cannot accept."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ConflictError(InvalidInputError):
    """The request is well formed but conflicts with the current state (e.g. updating an old version)."""


class NotFoundError(RetainError, LookupError):
    """An id does not exist, or not in the caller's scope (the two are indistinguishable)."""

    def __init__(self, kind: str, id: str) -> None:
        super().__init__(f"No {kind} with id {id!r} in this scope. Check the id, or list ids with get_all().")
        self.kind = kind
        self.id = id


class ConfigError(RetainError):
    """Settings or providers are missing or do not fit together."""


class ProviderError(RetainError):
    """An embedder or LLM failed, timed out, or returned output that failed validation."""

    def __init__(self, message: str, *, provider: str | None = None, retryable: bool = True) -> None:
        super().__init__(message)
        self.provider = provider
        self.retryable = retryable


class StoreError(RetainError):
    """The store failed, or a file is not a store this version of Retain can open."""
