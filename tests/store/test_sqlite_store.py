from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from retain import ConfigError, Memory, Settings, StoreError
from retain.filters import Filter, parse_filters
from retain.memory import new_id, text_hash
from retain.models import Scope
from retain.store import open_store, sqlite_path
from retain.store.base import Invalidate, NewMemory, Supersede, WriteBatch
from retain.store.sqlite import SQLiteStore
from retain.store.sqlite_schema import MIGRATIONS, OPEN_END
from retain.testing import HashEmbedder
from retain.timeutil import now_micros

WRITER = textwrap.dedent(
    """
    import sys
    from retain import Memory, Settings
    from retain.testing import HashEmbedder
    path, batch, rounds, worker = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    m = Memory(path, HashEmbedder(32), settings=Settings(track_access=False))
    for r in range(rounds):
        texts = [f"worker {worker} round {r} message {i} about tea and berlin" for i in range(batch)]
        m.add(texts, user_id=f"user-{worker}", infer=False)
        hits = m.search("tea berlin", user_id=f"user-{worker}", limit=5).results
        assert hits and all(h.user_id == f"user-{worker}" for h in hits)
        print("committed", r, flush=True)
    m.close()
    """
)


def _spawn(*args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_migrations_are_recorded_and_reopening_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    for _ in range(2):
        store = SQLiteStore(path, dimensions=8, embedder_id="hash")
        rows = store._db().execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == sorted(MIGRATIONS)
        assert store.check_integrity() == []
        store.close()


def test_opening_with_another_embedder_names_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    SQLiteStore(path, dimensions=8, embedder_id="hash").close()
    with pytest.raises(StoreError, match="RETAIN_EMBEDDER") as info:
        SQLiteStore(path, dimensions=384, embedder_id="all-MiniLM-L6-v2-int8")
    assert "'hash' (8 dimensions)" in str(info.value)


def test_store_urls() -> None:
    assert sqlite_path("sqlite:////abs/r.db") == Path("/abs/r.db")
    assert sqlite_path("sqlite:///rel/r.db") == Path("rel/r.db")
    assert sqlite_path("plain.db") == Path("plain.db")
    with pytest.raises(ConfigError, match="sqlite:///"):
        sqlite_path("mysql://x")
    with pytest.raises(ConfigError, match="file path"):
        open_store(":memory:", dimensions=8, embedder_id="hash")


def test_vector_cache_budget_comes_from_settings_and_zero_turns_it_off(tmp_path: Path) -> None:
    sized = Memory(str(tmp_path / "a.db"), HashEmbedder(), settings=Settings(vector_cache_mb=3))
    assert isinstance(sized.store, SQLiteStore) and sized.store._vectors.max_bytes == 3 * 1024 * 1024
    sized.close()
    off = Memory(str(tmp_path / "b.db"), HashEmbedder(), settings=Settings(vector_cache_mb=0))
    off.add(["I drink green tea", "I live in Berlin"], user_id="u", infer=False)
    for _ in range(2):
        assert off.search("green tea", user_id="u", limit=1).results[0].memory == "I drink green tea"
    assert isinstance(off.store, SQLiteStore) and off.store._vectors.cached_bytes == 0
    off.close()


def test_closed_store_refuses_use(tmp_path: Path) -> None:
    m = Memory(str(tmp_path / "c.db"), HashEmbedder())
    m.close()
    with pytest.raises(StoreError, match="closed"):
        m.get_all(user_id="u")


def test_sigkill_mid_add_leaves_no_half_written_add(tmp_path: Path) -> None:
    path = tmp_path / "crash.db"
    batch = 400
    for attempt in range(3):
        proc = _spawn(path, batch, 1000, f"k{attempt}")
        assert proc.stdout is not None
        proc.stdout.readline()  # at least one add committed; the next ones are in flight
        time.sleep(0.05 + 0.07 * attempt)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
    store = SQLiteStore(path, dimensions=32, embedder_id="hash")
    assert store.check_integrity() == []
    counts = store.counts()
    assert counts["memories"] > 0
    assert counts["memories"] % batch == 0, "an add was half-written"
    assert counts["messages"] == counts["memories"] == counts["memory_events"] == counts["memory_vectors"]
    assert counts["memory_fts_docsize"] == counts["memories"]
    store.close()


def test_concurrent_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "busy.db"
    SQLiteStore(path, dimensions=32, embedder_id="hash").close()
    workers, batch, rounds = 4, 5, 25
    procs = [_spawn(path, batch, rounds, w) for w in range(workers)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "locked" not in err
        assert out.count("committed") == rounds
    m = Memory(str(path), HashEmbedder(32))
    for w in range(workers):
        assert len(m.get_all(user_id=f"user-{w}", limit=1000).results) == batch * rounds
    assert m.store.check_integrity() == []
    m.close()


def test_reads_by_id_never_scan_the_tenant(tmp_path: Path) -> None:
    """Without statistics SQLite may prefer a scope index over the id lookup; at 1M rows that cost seconds."""
    m = Memory(str(tmp_path / "plan.db"), HashEmbedder(16))
    for user in ("a", "b"):
        m.add([f"fact {i} about tea" for i in range(50)], user_id=user, infer=False)
    statements: list[str] = []
    db = m.store._db()  # type: ignore[attr-defined]
    db.exec_trace = lambda cursor, sql, bindings: statements.append(sql) or True
    hit = m.search("tea", user_id="a").results[0]
    m.get(hit.id)
    m.history(hit.id)
    m.store.similarity("default", [hit.id], m.embedder.embed(["tea"])[0])
    db.exec_trace = None
    assert statements
    for sql in statements:
        if "FROM memories m" in sql and "rowid IN" not in sql.split("FROM memories m")[0]:
            plan = " ".join(str(row) for row in db.execute("EXPLAIN QUERY PLAN " + sql, _dummy_bindings(sql)))
            assert "memories_hash" not in plan and "SCAN m" not in plan, (sql, plan)
    m.close()


def _dummy_bindings(sql: str) -> tuple[object, ...]:
    return tuple("[]" if i == 0 and "json_each" in sql else "x" for i in range(sql.count("?")))


def test_vector_cache_follows_writes_from_other_store_instances(tmp_path: Path) -> None:
    """Each store instance (like each process) caches partitions; versions keep the caches honest."""
    path = str(tmp_path / "shared.db")
    reader, writer = Memory(path, HashEmbedder()), Memory(path, HashEmbedder())
    (tea,) = writer.add("I love tea", user_id="u", infer=False).results
    assert [h.memory for h in reader.search("tea", user_id="u").results] == ["I love tea"]  # now cached
    writer.add("tea with milk please", user_id="u", infer=False)
    writer.update(tea.id, text="I hate tea")
    dense = reader.store.vector_search(
        reader._scope("u", None, None), reader.embedder.embed(["tea"])[0], 10, None, None, 0
    )
    assert {r.memory for r in reader.store.get("default", [c.id for c in dense])} == {
        "I hate tea",
        "tea with milk please",
    }
    writer.delete_all(user_id="u")
    assert reader.search("tea", user_id="u").results == []
    reader.close()
    writer.close()


def test_keyword_scores_use_the_users_own_statistics(tmp_path: Path) -> None:
    """BM25 of a user's memory must not change when other users add memories to the same store."""
    settings = Settings(track_access=False, index_context_turns=0)
    m = Memory(str(tmp_path / "bm25.db"), HashEmbedder(16), settings=settings)
    m.add(["pottery class on sunday", "went hiking with the dog", "pottery again"], user_id="a", infer=False)

    def scores() -> dict[str, float]:
        hits = m.search("pottery", user_id="a", explain=True).results
        return {h.memory: h.scores["bm25"] for h in hits if h.scores and "bm25" in h.scores}

    before = scores()
    assert set(before) == {"pottery class on sunday", "pottery again"}
    m.add([f"note {i} about the weather and pottery" for i in range(40)], user_id="b", infer=False)
    assert scores() == pytest.approx(before)
    assert m.store.check_integrity() == []
    m.close()


def test_keyword_statistics_follow_updates_and_purges(tmp_path: Path) -> None:
    m = Memory(str(tmp_path / "stats.db"), HashEmbedder(16), settings=Settings(track_access=False))
    ids = [e.id for e in m.add(["one two three", "four five"], user_id="a", infer=False).results]
    m.update(ids[0], text="one two three six")
    assert m.store.check_integrity() == []
    db = m.store._db()  # type: ignore[attr-defined]
    stats = sorted(tuple(r[1:]) for r in db.execute("SELECT * FROM keyword_stats"))
    # current: the update and "four five" (indexed with its context); historic: the old version
    assert stats[0] == (1, 3) and stats[1][0] == 2
    m.delete_all(user_id="a")
    assert [tuple(r[1:]) for r in db.execute("SELECT * FROM keyword_stats")] == [(0, 0), (0, 0)]
    assert m.store.check_integrity() == []
    m.close()


def test_m005_backfills_keyword_statistics(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    m = Memory(str(path), HashEmbedder(16), settings=Settings(track_access=False, index_context_turns=0))
    (first, _) = m.add(["alpha beta", "gamma"], user_id="a", infer=False).results
    m.update(first.id, text="alpha beta delta")
    m.close()
    db = apsw.Connection(str(path))  # roll the file back to before m005 (and the later ones, which use it)
    for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute(
        "DROP TABLE keyword_stats; DROP TABLE memory_fts_vocab; ALTER TABLE memories DROP COLUMN index_text; "
        "ALTER TABLE partition_versions DROP COLUMN reset; ALTER TABLE partition_versions DROP COLUMN ended; "
        "DROP INDEX memory_vectors_validity; CREATE INDEX memory_vectors_partition ON memory_vectors (partition); "
        "DROP TABLE retired_rowids; ALTER TABLE memory_vectors DROP COLUMN facets; "
        "DELETE FROM schema_migrations WHERE version >= 5"
    )
    db.close()
    reopened = Memory(str(path), HashEmbedder(16), settings=Settings(track_access=False))
    rows = reopened.store._db().execute("SELECT docs, tokens FROM keyword_stats ORDER BY tokens").fetchall()  # type: ignore[attr-defined]
    assert sorted(map(tuple, rows)) == [(1, 2), (2, 4)]  # historic "alpha beta"; current "gamma" + "alpha beta delta"
    assert reopened.store.check_integrity() == []
    assert reopened.search("delta", user_id="a").results[0].memory == "alpha beta delta"
    reopened.close()


def test_m006_to_m008_add_partition_resets_and_endings_set_by_triggers(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    m = Memory(str(path), HashEmbedder(16), settings=Settings(track_access=False, index_context_turns=0))
    (first, second) = m.add(["alpha beta", "gamma"], user_id="a", infer=False).results
    m.close()
    db = apsw.Connection(str(path))  # roll the file back to before m006
    for (trigger,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        db.execute(f"DROP TRIGGER {trigger}")
    db.execute(
        "ALTER TABLE partition_versions DROP COLUMN reset; ALTER TABLE partition_versions DROP COLUMN ended; "
        "DROP INDEX memory_vectors_validity; CREATE INDEX memory_vectors_partition ON memory_vectors (partition); "
        "DROP TABLE retired_rowids; ALTER TABLE memory_vectors DROP COLUMN facets; "
        "DELETE FROM schema_migrations WHERE version >= 6"
    )
    db.close()
    reopened = Memory(str(path), HashEmbedder(16), settings=Settings(track_access=False))
    store = reopened.store
    assert isinstance(store, SQLiteStore)

    indexes = {r[0] for r in store._db().execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "memory_vectors_validity" in indexes and "memory_vectors_partition" not in indexes

    def versions() -> tuple[int, int, int]:
        row = store._db().execute("SELECT version, reset, ended FROM partition_versions").fetchone()
        return int(row[0]), int(row[1]), int(row[2])

    version, reset, ended = versions()
    assert reset == ended == 0
    assert reopened.search("gamma", user_id="a").results[0].memory == "gamma"
    reopened.add("delta", user_id="a", infer=False)
    assert versions() == (version + 1, 0, 0)  # an add moves only the version
    before = version + 1
    reopened.update(first.id, text="alpha beta epsilon")
    version, reset, ended = versions()
    assert reset == 0 and version >= ended > before  # ending a memory (and adding one) marks it ended
    store._db().execute("UPDATE memories SET updated_at = 1, access_count = 5")  # bookkeeping: nothing cached
    store._db().execute("UPDATE memories SET valid_to = valid_to")  # no change: nothing either
    assert versions() == (version, reset, ended)
    store._db().execute("UPDATE memories SET text = 'gamma!' WHERE id = ?", (second.id,))  # any code, e.g. a tool
    version, reset, ended = versions()
    assert reset == version > ended
    store._db().execute("UPDATE memory_vectors SET valid_to = 7 WHERE valid_to = ?", (OPEN_END,))
    assert versions()[2] == versions()[0] > reset  # a vector's validity alone: ended
    store._db().execute("DELETE FROM memories WHERE id = ?", (second.id,))  # any code, e.g. an older Retain's
    version, reset_now, ended = versions()
    assert reset_now == reset < ended == version  # a purge marks it ended: rowids are never given twice
    (third,) = reopened.add("epsilon", user_id="a", infer=False).results
    rowids = dict(store._db().execute("SELECT id, rowid FROM memories").fetchall())
    assert rowids[third.id] > max(rowids[id] for id in rowids if id != third.id)
    high = store._db().execute("SELECT high FROM retired_rowids").fetchone()[0]
    assert rowids[third.id] > high > 0
    store._db().execute(  # SQLite's own choice after a purge of the highest row, as an older Retain makes it
        "INSERT INTO memories (rowid, id, tenant_id, user_id, lineage_id, text, hash, created_at, updated_at, "
        "valid_from) VALUES (?, 'old', 'default', 'a', 'old', 'reused', 'h', 1, 1, 1)",
        (high,),
    )
    version, reset, _ = versions()
    assert reset == version  # a rowid given twice marks it reset
    reopened.close()


def test_a_cached_user_after_endings_rereads_only_validity_and_answers_as_a_fresh_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After another process ends memories (an update, an invalidation as the pipeline's DELETE does), purges
    one and adds some, a process that cached the user reads their validity and the new rows only, not the user
    again, and searches exactly as one that reads it cold."""
    from retain.store import keyword_index, vector_index

    path = str(tmp_path / "m.db")
    settings = Settings(track_access=False)
    reader, writer = (
        Memory(path, HashEmbedder(16), settings=settings),
        Memory(path, HashEmbedder(16), settings=settings),
    )
    words = ["tea", "berlin", "coffee", "pottery", "dog", "rain", "piano", "lisbon"]
    texts = [f"turn {i} about {words[i % 8]} and {words[(3 * i) % 8]}" for i in range(40)]
    ids = [e.id for e in writer.add(texts, user_id="u", infer=False).results]
    queries = ["tea berlin", "dog rain", "piano lisbon coffee", "pottery"]
    reader.search("tea", user_id="u")  # caches the user
    tokenised: list[int] = []
    revalidated: list[bool] = []
    from_tokens, revalidate = keyword_index.from_tokens, vector_index.Partition.revalidated

    def count_tokens(*args: Any, **kwargs: Any) -> Any:
        tokenised.append(len(kwargs["tokens"]))
        return from_tokens(*args, **kwargs)

    def count_revalidated(self: Any, ends: Any) -> Any:
        out = revalidate(self, ends)
        revalidated.append(out is not None)
        return out

    monkeypatch.setattr(keyword_index, "from_tokens", count_tokens)
    monkeypatch.setattr(vector_index.Partition, "revalidated", count_revalidated)
    for round in range(2):
        writer.update(ids[3 + round], text=f"turn revised {round} about tea in lisbon")
        writer.store.write("default", WriteBatch(at=now_micros(), invalidate=[Invalidate(ids[10 + round], 1)]))
        writer.delete(ids[20 + round])  # a purge: its rows go
        writer.add([f"new turn {round} about dog and piano", "more tea"], user_id="u", infer=False)
        tokenised.clear()
        warm = [reader.search(q, user_id="u", limit=20, explain=True).results for q in queries]
        assert sum(tokenised) == 3 and revalidated == [True] * (round + 1)  # the revision and 2 new turns
        cold = Memory(path, HashEmbedder(16), settings=settings)
        assert warm == [cold.search(q, user_id="u", limit=20, explain=True).results for q in queries]
        cold.close()
    assert not {ids[10], ids[20], ids[21]} & {h.id for hits in warm for h in hits}
    reader.close()
    writer.close()


# -- keyword search over the cached postings (keyword_index.partition_top_k) ---------------------------

FAR_FUTURE = 1 << 61


def _memory(scope: Scope, text: str, at: int, **extra: Any) -> NewMemory:
    id = new_id()
    return NewMemory(
        id=id,
        lineage_id=id,
        scope=scope,
        text=text,
        category=None,
        metadata=extra.pop("metadata", {}),
        hash=text_hash(text),
        valid_from=at,
        source_message_ids=[],
        embedding=HashEmbedder(16).embed([text])[0],
        **extra,
    )


def _keyword(
    store: SQLiteStore, scope: Scope, query: str, where: Filter | None = None, now: int = 10
) -> dict[str, float]:
    return {c.id: c.score for c in store.keyword_search(scope, query, 100, where, None, now)}


def _keyword_in_fts5(
    store: SQLiteStore, scope: Scope, query: str, where: Filter | None = None, now: int = 10
) -> dict[str, float]:
    """The FTS5 path: `as_of` far in the future selects the current memories, scored with the same statistics."""
    return {c.id: c.score for c in store.keyword_search(scope, query, 100, where, FAR_FUTURE, now)}


def _filled(path: Path) -> tuple[SQLiteStore, list[NewMemory]]:
    store = SQLiteStore(path, dimensions=16, embedder_id="hash")
    words = ["tea", "berlin", "coffee", "pottery", "dog", "running", "rain", "tea tea", "piano"]
    memories = []
    for i in range(60):
        scope = Scope(user_id="u", agent_id=["a", "b", None][i % 3], run_id=["r1", None][i % 2])
        text = f"note {i}: " + " ".join(words[(i * j) % len(words)] for j in range(1 + i % 5))
        expires = {"expires_at": 5} if i % 11 == 0 else {}
        memories.append(_memory(scope, text, 1, metadata={"n": i, "kind": ["x", "y"][i % 2]}, **expires))
    memories.append(_memory(Scope(user_id="other"), "tea and berlin for someone else", 1))
    store.write("default", WriteBatch(at=1, memories=memories))
    replacement = _memory(memories[1].scope, "note 1 revised: tea in berlin", 2)
    store.write(
        "default",
        WriteBatch(
            at=2,
            memories=[replacement],
            supersede=[Supersede(old_id=memories[1].id, new_id=replacement.id, valid_to=2)],
            invalidate=[Invalidate(id=memories[2].id, valid_to=2)],
        ),
    )
    store.purge_lineage("default", memories[4].lineage_id)
    return store, memories


def test_cached_keyword_scores_equal_the_fts5_paths(tmp_path: Path) -> None:
    """Same candidates, same scores to the last bit, for scopes, filters and expiry (a few dozen rows: FTS5's
    rescored pool holds every match, so both paths rank all of them)."""
    store, memories = _filled(tmp_path / "kw.db")
    user = Scope(user_id="u")
    cases: list[tuple[Scope, Filter | None]] = [
        (user, None),
        (Scope(user_id="u", agent_id="a"), None),
        (Scope(user_id="u", run_id="r1"), None),
        (user, parse_filters({"kind": "x"})),
        (user, parse_filters({"n": {"gte": 30}})),
    ]
    for query in ("tea", "tea berlin", "coffee dog piano", "note", "rain running pottery tea", "nothing"):
        for scope, where in cases:
            for now in (0, 10):
                cached = _keyword(store, scope, query, where, now)
                assert cached == _keyword_in_fts5(store, scope, query, where, now), (query, scope, where, now)
    tea = _keyword(store, user, "tea")
    assert tea and memories[-1].id not in tea  # another user's
    assert memories[0].id not in tea and memories[0].id in _keyword(store, user, "tea", now=0)  # expired at 5
    assert memories[1].id not in tea and memories[2].id not in _keyword(store, user, "note")  # ended
    assert [p for p in store.check_integrity() if not p.startswith("memory without events")] == []
    store.close()


def test_keyword_cache_follows_writes_from_other_store_instances(tmp_path: Path) -> None:
    """Each instance (like each process) caches postings; the partition's version row keeps them honest."""
    path = tmp_path / "shared.db"
    writer, _ = _filled(path)
    reader = SQLiteStore(path, dimensions=16, embedder_id="hash")
    user = Scope(user_id="u")

    def check() -> dict[str, float]:
        cached = _keyword(reader, user, "tea berlin")
        assert cached == _keyword_in_fts5(writer, user, "tea berlin")
        return cached

    before = check()
    added = _memory(user, "berlin berlin tea", 3)
    writer.write("default", WriteBatch(at=3, memories=[added]))
    assert added.id in check()
    gone = next(iter(before))
    writer.write("default", WriteBatch(at=4, invalidate=[Invalidate(id=gone, valid_to=4)]))
    assert gone not in check()
    writer.purge_lineage("default", added.lineage_id)
    assert added.id not in check()
    writer.purge_scope(user)
    assert _keyword(reader, user, "tea berlin") == {}
    reader.close()
    writer.close()


def test_keyword_search_without_a_user_or_with_as_of_stays_in_fts5(tmp_path: Path) -> None:
    store, memories = _filled(tmp_path / "fallback.db")
    agent = _keyword(store, Scope(agent_id="a"), "tea")
    assert agent and all(m.scope.agent_id == "a" for m in memories if m.id in agent)
    historic = {c.id for c in store.keyword_search(Scope(user_id="u"), "note", 100, None, 1, 0)}
    assert memories[1].id in historic and memories[2].id in historic  # valid at 1, ended at 2
    assert not any(key.startswith("postings") for key in store._vectors._entries)
    store.close()


def test_keyword_postings_share_the_vector_cache_budget(tmp_path: Path) -> None:
    store, _ = _filled(tmp_path / "budget.db")
    expected = _keyword(store, Scope(user_id="u"), "tea berlin")
    small = SQLiteStore(tmp_path / "budget.db", dimensions=16, embedder_id="hash", vector_cache_bytes=2_000)
    assert _keyword(small, Scope(user_id="u"), "tea berlin") == expected  # too big to cache: read every time
    assert small._vectors._bytes <= 2_000 and not small._vectors._entries
    _keyword(store, Scope(user_id="other"), "tea")
    assert store._vectors._bytes == sum(p.nbytes for p in store._vectors._entries.values())
    assert {key.split("\x1f")[0] for key in store._vectors._entries} == {"postings"}
    small.close()
    store.close()


def test_reads_after_a_search_served_from_the_cached_rows_match_sql(tmp_path: Path) -> None:
    """`vector_search`, `origins`, `similarity` and `vectors` read a searched user's cached rows; same answers."""
    path = tmp_path / "rows.db"
    writer, memories = _filled(path)
    reader = SQLiteStore(path, dimensions=16, embedder_id="hash")
    cold = SQLiteStore(path, dimensions=16, embedder_id="hash", vector_cache_bytes=0)  # always SQL
    user = Scope(user_id="u")
    query = HashEmbedder(16).embed(["tea berlin"])[0]
    ids = [m.id for m in memories] + ["missing"]
    for step in range(3):
        _keyword(reader, user, "tea")  # caches the user's rows (and vector_search its vectors)
        for now in (0, 10):
            dense = reader.vector_search(user, query, 100, None, None, now)
            assert dense == cold.vector_search(user, query, 100, None, None, now)
        assert reader.origins("default", ids) == cold.origins("default", ids)
        assert reader.similarity("default", ids, query) == cold.similarity("default", ids, query)
        assert reader.vectors("default", ids).keys() == cold.vectors("default", ids).keys()
        if step == 0:  # a change the reader has not seen: the cached rows are stale until it searches again
            writer.write("default", WriteBatch(at=3, invalidate=[Invalidate(id=memories[3].id, valid_to=3)]))
            assert reader.origins("default", ids) == cold.origins("default", ids)
        if step == 1:
            writer.purge_lineage("default", memories[5].lineage_id)
            assert reader.similarity("default", ids, query) == cold.similarity("default", ids, query)
    for store in (reader, cold, writer):
        store.close()
