"""The background worker: polling, and waking at once when another process queues a job (PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from retain import Memory, Settings
from retain.testing import HashEmbedder, ScriptedLLM
from retain.worker import Worker

#: Long enough that a job finished within the test's wait was not found by polling.
NEVER = 600.0


def reply(text: str) -> dict[str, object]:
    return {"operations": [{"op": "ADD", "id": None, "text": text, "category": "fact", "reason": "said so"}]}


def wait_done(memory: Memory, job_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(j.id == job_id and j.status == "done" for j in memory.jobs()):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def pair(postgres_dsn: str) -> Iterator[tuple[Memory, Memory, ScriptedLLM]]:
    """A worker's Memory and an API's Memory on one database, as two processes would have them."""
    settings = Settings(track_access=False, in_process_worker=False)
    llm = ScriptedLLM()
    worker_side = Memory(postgres_dsn, HashEmbedder(), llm=llm, settings=settings)
    api_side = Memory(postgres_dsn, HashEmbedder(), llm=ScriptedLLM(), settings=settings)
    yield worker_side, api_side, llm
    api_side.close()
    worker_side.close()


def test_worker_wakes_when_another_process_queues_a_job(pair: tuple[Memory, Memory, ScriptedLLM]) -> None:
    worker_side, api_side, llm = pair
    worker = Worker(worker_side, poll_seconds=NEVER)
    worker.start()
    try:
        for n in range(3):  # the first may be found by the listener's catch-up after LISTEN; the rest are pushed
            llm.enqueue(reply(f"fact {n}"))
            job_id = api_side.add(f"I said {n}", user_id="u", background=True).job_id
            assert job_id is not None
            assert wait_done(api_side, job_id, 10), f"job {n} was not picked up without polling"
    finally:
        worker.stop(timeout=5)
    assert sorted(r.memory for r in api_side.get_all(user_id="u").results) == ["fact 0", "fact 1", "fact 2"]


def test_listener_reconnects_after_its_connection_is_killed(
    pair: tuple[Memory, Memory, ScriptedLLM], postgres_dsn: str
) -> None:
    worker_side, api_side, llm = pair
    worker = Worker(worker_side, poll_seconds=NEVER)
    worker.start()
    try:
        llm.enqueue(reply("before"))
        first = api_side.add("before", user_id="u", background=True).job_id
        assert first is not None and wait_done(api_side, first, 10)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query = 'LISTEN retain_jobs' AND datname = current_database()"
            ).fetchall()
        assert killed == [(True,)]
        time.sleep(1.5)  # the listener notices, backs off and listens again
        llm.enqueue(reply("after"))
        second = api_side.add("after", user_id="u", background=True).job_id
        assert second is not None and wait_done(api_side, second, 15), "no wake-up after the reconnect"
    finally:
        worker.stop(timeout=5)


def test_retried_job_wakes_the_worker(pair: tuple[Memory, Memory, ScriptedLLM]) -> None:
    worker_side, api_side, llm = pair
    job_id = api_side.add("I like tea", user_id="u", background=True).job_id
    assert job_id is not None
    llm.enqueue("{oops", "still not json")  # the attempt fails: the job waits out its backoff
    worker_side.run_jobs()
    assert [(j.status, j.attempts) for j in api_side.jobs()] == [("queued", 1)]
    worker = Worker(worker_side, poll_seconds=NEVER)
    worker.start()
    try:
        time.sleep(1.0)  # listening now; its catch-up pass found the job not yet due
        llm.enqueue(reply("User likes tea"))
        api_side.retry_job(job_id)
        assert wait_done(api_side, job_id, 10), "retry_job did not wake the worker"
    finally:
        worker.stop(timeout=5)


def test_sqlite_worker_polls_and_stops_promptly(tmp_path: Path) -> None:
    settings = Settings(track_access=False, in_process_worker=False)
    llm = ScriptedLLM([reply("User likes tea")])
    worker_side = Memory(str(tmp_path / "w.db"), HashEmbedder(), llm=llm, settings=settings)
    api_side = Memory(str(tmp_path / "w.db"), HashEmbedder(), llm=ScriptedLLM(), settings=settings)
    worker = Worker(worker_side, poll_seconds=0.1)
    worker.start()
    try:
        job_id = api_side.add("I like tea", user_id="u", background=True).job_id
        assert job_id is not None and wait_done(api_side, job_id, 10)
    finally:
        started = time.monotonic()
        worker.stop(timeout=5)
        assert time.monotonic() - started < 2
        api_side.close()
        worker_side.close()
