"""The whole add(infer=True) loop with the real local LLM and the real embedder (marked local_llm)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from retain import Memory, Settings

pytestmark = pytest.mark.local_llm

CHAT = [
    {"role": "user", "content": "Hi, I'm vegetarian, so please keep that in mind."},
    {"role": "assistant", "content": "Noted! How can I help you today?"},
    {"role": "user", "content": "My order #1234 hasn't arrived yet."},
    {"role": "user", "content": "Also, I moved to Berlin last month."},
    {"role": "user", "content": "And I'm allergic to peanuts."},
]


def test_support_chat_yields_memories_that_search_retrieves(tmp_path: Path, minilm) -> None:  # type: ignore[no-untyped-def]
    if importlib.util.find_spec("xllamacpp") is None:
        pytest.skip('the local LLM is not installed: pip install -e ".[local]"')
    settings = Settings(track_access=False, in_process_worker=False)
    m = Memory(str(tmp_path / "local.db"), minilm, llm="local:qwen2.5-1.5b", settings=settings)
    result = m.add(CHAT, user_id="customer", at="2024-06-15T10:00:00Z")
    assert result.usage is not None and result.usage.llm_calls in (1, 2)
    facts = [e.memory for e in result.results if e.event == "ADD"]
    assert len(facts) >= 3, facts

    def top(query: str) -> str:
        return " | ".join(h.memory.lower() for h in m.search(query, user_id="customer", limit=3).results)

    cooking = top("what should I cook for this user")
    assert "vegetarian" in cooking or "peanut" in cooking, cooking
    assert "1234" in top("order status")
    assert all("last month" not in f or "(May 2024)" in f for f in facts), facts
    m.close()
