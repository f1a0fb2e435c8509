"""A recorded `sleep` for the retry tests."""

from __future__ import annotations

import pytest
from llm_http_fakes import Sleeps


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()
