"""Store backends and the factory that picks one from a URL."""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import ConfigError
from .base import Store
from .sqlite import SQLiteStore
from .vector_index import DEFAULT_CACHE_BYTES

__all__ = ["SQLiteStore", "Store", "open_store", "sqlite_path"]

#: A libpq "host=... dbname=..." string; taken for a file name it would create a SQLite file of that name.
_LIBPQ_KEYWORDS = re.compile(r"^\s*(host|hostaddr|port|dbname|user|password|service|sslmode)\s*=")


def sqlite_path(url: str) -> Path:
    """`sqlite:///relative.db`, `sqlite:////absolute.db`, or a plain file path."""
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if _LIBPQ_KEYWORDS.match(url):
        raise ConfigError(
            f"{url!r} looks like a PostgreSQL key=value DSN; write it as a URL: "
            "postgresql://user:password@host:5432/dbname."
        )
    if "://" in url:
        raise ConfigError(f"{url!r} is not a SQLite URL; use sqlite:///path/to/retain.db or a file path.")
    return Path(url)


def open_store(url: str, *, dimensions: int, embedder_id: str, cache_bytes: int = DEFAULT_CACHE_BYTES) -> Store:
    """Open (and migrate) the store named by `url`: `sqlite:///path`, a file path, or `postgresql://...`.

    `cache_bytes` bounds the per-process cache of users' vectors and keyword postings."""
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ConfigError(
                f"RETAIN_STORE is a PostgreSQL URL but psycopg is not installed ({exc}); "
                'install the extra: pip install "retain[postgres]".'
            ) from exc
        return PostgresStore.from_url(
            url, dimensions=dimensions, embedder_id=embedder_id, vector_cache_bytes=cache_bytes
        )
    path = sqlite_path(url)
    if str(path) in ("", ":memory:"):
        raise ConfigError("An in-memory SQLite store cannot be shared across threads; give a file path.")
    return SQLiteStore(path, dimensions=dimensions, embedder_id=embedder_id, vector_cache_bytes=cache_bytes)
