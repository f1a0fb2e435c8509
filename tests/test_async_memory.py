from __future__ import annotations

import asyncio
import contextlib
import inspect
from pathlib import Path

import pytest

from retain import AsyncMemory, Memory, Settings, StoreError
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


# -- native async on PostgreSQL ----------------------------------------------------------


def _postgres_memory(dsn: str, pool_max: int = 4) -> Memory:
    from retain.store.postgres import PostgresStore

    store = PostgresStore(dsn, dimensions=32, embedder_id="hash:32", pool_max=pool_max)
    return Memory(store, HashEmbedder(32), settings=Settings(track_access=False, in_process_worker=False))


@pytest.mark.postgres
def test_async_memory_on_postgres_runs_on_the_async_pool_and_matches_sync(postgres_dsn: str) -> None:
    sync = _postgres_memory(postgres_dsn)
    amem = AsyncMemory.wrap(_postgres_memory(postgres_dsn))
    texts = ["I love tea", "My cat is Tom", "I live in Oslo"]

    async def run() -> None:
        sync_pool_before = amem.sync.store._pool.get_stats().get("requests_num", 0)  # type: ignore[attr-defined]
        a_add = await amem.add(texts, user_id="a", infer=False)
        a_hits = (await amem.search("cat", user_id="a")).results
        s_hits = sync.search("cat", user_id="a").results  # the same rows, read through the sync pool
        assert [(h.memory, round(h.score, 6)) for h in a_hits] == [(h.memory, round(h.score, 6)) for h in s_hits]
        updated = await amem.update(a_add.results[0].id, text="I love coffee")
        assert [h.event for h in await amem.history(updated.id)] == ["ADD", "UPDATE"]
        assert (await amem.get(updated.id)).memory == "I love coffee"
        session = amem.sessions("s1", user_id="a")
        await session.aadd_message("user", "hello")
        assert [m.content for m in await session.aget_messages()] == ["hello"]
        stats = amem.sync.store._async_pool.stats()  # type: ignore[attr-defined]
        # Each of the 7 calls above took one connection from psycopg's async pool and kept it for
        # all its statements ...
        assert stats["requests_num"] == 7, stats
        sync_pool_after = amem.sync.store._pool.get_stats().get("requests_num", 0)  # type: ignore[attr-defined]
        assert sync_pool_after == sync_pool_before  # ... and none went through the threaded sync pool
        assert (await amem.delete_all(user_id="a")).memories == 4
        await amem.close()

    asyncio.run(run())
    sync.close()


@pytest.mark.postgres
def test_many_concurrent_async_calls_share_a_small_pool(postgres_dsn: str) -> None:
    amem = AsyncMemory.wrap(_postgres_memory(postgres_dsn, pool_max=2))

    async def run() -> None:
        adds = [amem.add(f"user {i} likes item {i}", user_id=f"u{i}", infer=False) for i in range(20)]
        added = await asyncio.gather(*adds)
        searches = [amem.search(f"item {i}", user_id=f"u{i}") for i in range(20)]
        found = await asyncio.gather(*searches)
        for i, (add, hits) in enumerate(zip(added, found, strict=True)):
            assert [h.id for h in hits.results] == [add.results[0].id], i  # each user sees only its own memory
        stats = amem.sync.store._async_pool.stats()  # type: ignore[attr-defined]
        assert stats["pool_max"] == 2 and stats["requests_num"] >= 40
        await amem.close()

    asyncio.run(run())


@pytest.mark.postgres
def test_async_memory_survives_lost_connections_and_loses_nothing(postgres_dsn: str) -> None:
    import psycopg

    amem = AsyncMemory.wrap(_postgres_memory(postgres_dsn, pool_max=3))

    async def run() -> None:
        acknowledged: list[str] = []
        for round in range(3):
            acknowledged += [e.id for e in (await amem.add(f"fact {round}", user_id="u", infer=False)).results]
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            with contextlib.suppress(StoreError):  # allowed, but the next call must work
                acknowledged += [e.id for e in (await amem.add(f"after {round}", user_id="u", infer=False)).results]
            acknowledged += [e.id for e in (await amem.add(f"next {round}", user_id="u", infer=False)).results]
        stored = {r.id for r in (await amem.get_all(user_id="u", limit=100)).results}
        assert set(acknowledged) <= stored
        await amem.close()

    asyncio.run(run())


@pytest.mark.postgres
def test_a_cancelled_async_call_releases_its_connection(postgres_dsn: str) -> None:
    import psycopg

    amem = AsyncMemory.wrap(_postgres_memory(postgres_dsn, pool_max=1))

    async def run() -> None:
        await amem.add("I love tea", user_id="u", infer=False)
        with psycopg.connect(postgres_dsn) as admin:  # holds the table lock until the block ends
            admin.execute("LOCK TABLE memories IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(amem.search("tea", user_id="u"), timeout=0.5)
        # The only connection came back to the pool in a usable state.
        hits = await asyncio.wait_for(amem.search("tea", user_id="u"), timeout=10)
        assert [h.memory for h in hits.results] == ["I love tea"]
        await amem.close()

    asyncio.run(run())


@pytest.mark.postgres
def test_async_memory_names_the_fix_when_used_from_a_second_event_loop(postgres_dsn: str) -> None:
    amem = AsyncMemory.wrap(_postgres_memory(postgres_dsn))
    asyncio.run(amem.add("I love tea", user_id="u", infer=False))
    with pytest.raises(StoreError, match="one AsyncMemory per event loop"):
        asyncio.run(amem.search("tea", user_id="u"))
