from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
