from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres_server import database_factory, server_dsn

from retain import Memory, Settings
from retain.testing import HashEmbedder


@pytest.fixture
def settings() -> Settings:
    return Settings(track_access=True)


@pytest.fixture
def memory(tmp_path: Path, settings: Settings) -> Iterator[Memory]:
    m = Memory(store=str(tmp_path / "retain.db"), embedder=HashEmbedder(), settings=settings)
    yield m
    m.close()


@pytest.fixture(scope="session")
def minilm():  # type: ignore[no-untyped-def]
    from retain.embedders.minilm import MiniLMEmbedder

    return MiniLMEmbedder()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A superuser DSN to the session's PostgreSQL (skips the test when there is none)."""
    yield from server_dsn()


@pytest.fixture
def new_postgres_database(postgres_server: str) -> Iterator[Callable[[], str]]:
    """Call it to get the DSN of a new, empty database; all are dropped after the test."""
    yield from database_factory(postgres_server)


@pytest.fixture
def postgres_dsn(new_postgres_database: Callable[[], str]) -> str:
    """The DSN of a fresh database for this test."""
    return new_postgres_database()
