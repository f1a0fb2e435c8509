from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

from retain import AsyncMemory, Memory
from retain.testing import HashEmbedder

PUBLIC = [name for name, _ in inspect.getmembers(Memory, inspect.isfunction) if not name.startswith("_")]
SYNC_ONLY = {"from_config", "for_tenant", "sessions", "start_worker"}


def test_every_public_method_has_an_async_twin_with_the_same_signature() -> None:
    for name in PUBLIC:
        if name in SYNC_ONLY:
            continue
        twin = getattr(AsyncMemory, name, None)
        assert twin is not None, f"AsyncMemory lacks {name}"
        assert inspect.iscoroutinefunction(twin), name
        assert inspect.signature(twin) == inspect.signature(getattr(Memory, name)), name


def test_async_results_match_sync(tmp_path: Path) -> None:
    sync = Memory(str(tmp_path / "a.db"), HashEmbedder())
    amem = AsyncMemory(str(tmp_path / "b.db"), HashEmbedder())

    async def run() -> None:
        texts = ["I love tea", "My cat is Tom", "I live in Oslo"]
        s_add = sync.add(texts, user_id="u", infer=False)
        a_add = await amem.add(texts, user_id="u", infer=False)
        assert [e.memory for e in s_add.results] == [e.memory for e in a_add.results]
        s_hits = sync.search("cat", user_id="u").results
        a_hits = (await amem.search("cat", user_id="u")).results
        assert [(h.memory, round(h.score, 6)) for h in s_hits] == [(h.memory, round(h.score, 6)) for h in a_hits]
        updated = await amem.update(a_add.results[0].id, text="I love coffee")
        history = await amem.history(updated.id)
        assert [h.event for h in history] == ["ADD", "UPDATE"]
        session = amem.sessions("s1", user_id="u")
        await session.aadd_message("user", "hello")
        assert [m.content for m in await session.aget_messages()] == ["hello"]
        counts = await amem.delete_all(user_id="u")
        assert counts.memories == 4
        await amem.close()

    asyncio.run(run())
    sync.close()
