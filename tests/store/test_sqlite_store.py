from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from retain import ConfigError, Memory, StoreError
from retain.store import open_store, sqlite_path
from retain.store.sqlite import SQLiteStore
from retain.store.sqlite_schema import MIGRATIONS
from retain.testing import HashEmbedder

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
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
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
