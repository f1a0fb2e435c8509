"""add(infer=True) with a scripted LLM: supersede semantics, dedup, retries and durable jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from retain import Memory, ProviderError, Settings
from retain.llm import OpenAILLM, RetryPolicy
from retain.testing import HashEmbedder, ScriptedLLM

FAST_JOBS = Settings(track_access=False, job_backoff_seconds=0.0, in_process_worker=False)


def ops(*items: tuple[Any, ...]) -> dict[str, Any]:
    """A reply: (op, id, text, category, reason) tuples."""
    return {
        "operations": [
            {"op": op, "id": id, "text": text, "category": category, "reason": reason}
            for op, id, text, category, reason in items
        ]
    }


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM()


@pytest.fixture
def mem(tmp_path: Path, llm: ScriptedLLM) -> Iterator[Memory]:
    m = Memory(str(tmp_path / "p.db"), HashEmbedder(), llm=llm, settings=FAST_JOBS)
    yield m
    m.close()


def test_contradiction_supersedes_and_history_keeps_both(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(ops(("ADD", None, "User loves tea", "preference", "stated preference")))
    first = mem.add("I love tea", user_id="u", at="2024-01-01T10:00:00Z")
    assert [(e.event, e.memory) for e in first.results] == [("ADD", "User loves tea")]
    assert first.usage is not None and first.usage.llm_calls == 1

    llm.enqueue(ops(("UPDATE", 1, "User can't stand tea anymore", "preference", "user now dislikes tea")))
    second = mem.add("I can't stand tea anymore", user_id="u", at="2024-03-01T10:00:00Z")
    prompt = llm.calls[-1].messages[-1]["content"]
    assert "1. [preference] User loves tea" in prompt, "existing memories are shown under small integers"
    assert first.results[0].id not in prompt, "UUIDs never reach the model"
    (update,) = second.results
    assert (update.event, update.previous_memory) == ("UPDATE", "User loves tea")

    current = mem.get_all(user_id="u").results
    assert [r.memory for r in current] == ["User can't stand tea anymore"]
    old = mem.get(first.results[0].id)
    assert old.valid_to == datetime(2024, 3, 1, 10, tzinfo=UTC) and old.superseded_by == update.id
    history = mem.history(update.id)
    assert [(h.event, h.new_memory, h.actor) for h in history] == [
        ("ADD", "User loves tea", "llm"),
        ("UPDATE", "User can't stand tea anymore", "llm"),
    ]
    assert history[1].reason == "user now dislikes tea"
    assert history[1].source_message_ids == second.message_ids
    before = mem.search("tea", user_id="u", as_of="2024-02-01").results
    assert [h.memory for h in before] == ["User loves tea"]
    assert [h.memory for h in mem.search("tea", user_id="u").results] == ["User can't stand tea anymore"]


def test_refinement_is_an_update_with_the_observation_date(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(ops(("ADD", None, "User lives in Berlin", "fact", "home city")))
    mem.add("I live in Berlin", user_id="u", at="2024-04-02T09:00:00Z")
    llm.enqueue(ops(("UPDATE", 1, "User moved to Munich in May 2024", "fact", "moved last week")))
    result = mem.add("I moved to Munich last week", user_id="u", at=datetime(2024, 5, 20, 12, tzinfo=UTC))
    assert "Observation date: 2024-05-20 (Monday)" in llm.calls[-1].messages[-1]["content"]
    (event,) = result.results
    assert event.event == "UPDATE" and event.previous_memory == "User lives in Berlin"
    new = mem.get(event.id)
    assert new.valid_from == datetime(2024, 5, 20, 12, tzinfo=UTC)
    assert new.lineage_id == mem.get_all(user_id="u", include_superseded=True).results[-1].id


def number_of(llm: ScriptedLLM, text: str) -> int:
    """The small integer the last prompt showed for an existing memory."""
    prompt = llm.calls[-1].messages[-1]["content"]
    (line,) = [line for line in prompt.splitlines() if line.endswith(f"] {text}")]
    return int(line.split(".")[0])


def test_delete_invalidates_but_keeps_history_and_noop_touches(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(ops(("ADD", None, "User has a cat", "fact", "pet"), ("ADD", None, "User likes jazz", "preference", "")))
    added = mem.add("I have a cat and I like jazz", user_id="u").results
    llm.enqueue(ops(("NOOP", 1, "", "fact", "probe")))
    mem.add("cat jazz", user_id="u")  # learn how the prompt numbers the two memories
    cat, jazz = number_of(llm, "User has a cat"), number_of(llm, "User likes jazz")
    llm.enqueue(ops(("DELETE", cat, "", "fact", "cat passed away"), ("NOOP", jazz, "", "preference", "same")))
    result = mem.add("My cat passed away. Still into jazz.", user_id="u")
    assert [e.event for e in result.results] == ["DELETE", "NOOP"]
    assert [r.memory for r in mem.get_all(user_id="u").results] == ["User likes jazz"]
    cat = mem.get(added[0].id)
    assert cat.valid_to is not None and cat.superseded_by is None
    assert [h.event for h in mem.history(cat.id)] == ["ADD", "DELETE"]
    assert mem.history(cat.id)[1].reason == "cat passed away"
    assert [h.event for h in mem.history(added[1].id)][-1] == "NOOP"
    assert mem.store.check_integrity() == []


def test_duplicate_fact_added_twice_is_one_memory(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(ops(("ADD", None, "User is vegetarian", "preference", "diet")))
    llm.enqueue(ops(("ADD", None, "User is vegetarian", "preference", "diet again")))
    mem.add("I'm vegetarian", user_id="u")
    second = mem.add("As I said, I'm vegetarian", user_id="u")
    assert [(e.event, e.memory) for e in second.results] == [("NOOP", "User is vegetarian")]
    assert len(mem.get_all(user_id="u").results) == 1


def test_concurrent_duplicate_adds_from_two_threads_yield_one_memory(tmp_path: Path) -> None:
    path = str(tmp_path / "race.db")
    reply = ops(("ADD", None, "User is vegetarian", "preference", "diet"))
    memories = [Memory(path, HashEmbedder(), llm=ScriptedLLM([reply]), settings=FAST_JOBS) for _ in range(2)]
    barrier = threading.Barrier(2)
    results: list[list[str]] = []

    def add(m: Memory) -> None:
        barrier.wait()
        results.append([e.event for e in m.add("I'm vegetarian", user_id="u").results])

    threads = [threading.Thread(target=add, args=(m,)) for m in memories]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [["ADD"], ["NOOP"]]
    assert len(memories[0].get_all(user_id="u").results) == 1
    for m in memories:
        m.close()


def test_malformed_json_is_retried_with_the_error_fed_back(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue("this is not json", ops(("ADD", None, "User plays chess", "fact", "hobby")))
    result = mem.add("I play chess", user_id="u")
    assert [e.memory for e in result.results] == ["User plays chess"]
    assert result.usage is not None and result.usage.llm_calls == 2
    feedback = llm.calls[1].messages[-1]["content"]
    assert "invalid" in feedback and llm.calls[1].messages[-2]["content"] == "this is not json"


def test_unknown_id_from_the_model_is_fed_back(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(
        ops(("UPDATE", 7, "User lives in Rome", "fact", "x")), ops(("ADD", None, "User lives in Rome", "fact", ""))
    )
    assert [e.event for e in mem.add("I live in Rome", user_id="u").results] == ["ADD"]
    assert "id 7, which is not an existing memory" in llm.calls[1].messages[-1]["content"]


def test_malformed_twice_fails_loudly_keeps_messages_and_job_retries(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue("{oops", '{"operations": [{"op": "EXPLODE"}]}')
    with pytest.raises(ProviderError, match="invalid twice") as info:
        mem.add("I'm allergic to peanuts", user_id="u")
    assert info.value.retryable
    assert [m.content for m in mem.messages(mem._scope("u", None, None))] == ["I'm allergic to peanuts"]
    (job,) = mem.jobs()
    assert (job.status, job.attempts) == ("queued", 1) and "invalid twice" in (job.last_error or "")
    assert mem.get_all(user_id="u").results == []
    llm.enqueue(ops(("ADD", None, "User is allergic to peanuts", "fact", "allergy")))
    assert mem.run_jobs() == 1
    (job,) = mem.jobs()
    assert job.status == "done" and job.result is not None and job.result["usage"]["llm_calls"] == 1
    assert [r.memory for r in mem.get_all(user_id="u").results] == ["User is allergic to peanuts"]


def test_job_is_dead_lettered_after_max_attempts_and_can_be_retried(tmp_path: Path) -> None:
    llm = ScriptedLLM()
    settings = Settings(track_access=False, job_backoff_seconds=0.0, in_process_worker=False, job_max_attempts=2)
    m = Memory(str(tmp_path / "d.db"), HashEmbedder(), llm=llm, settings=settings)
    llm.enqueue(ProviderError("down", provider="x"), ProviderError("down", provider="x"))
    with pytest.raises(ProviderError):
        m.add("I like sushi", user_id="u")
    assert m.run_jobs() == 1
    (job,) = m.jobs(status="dead")
    assert job.attempts == 2
    llm.enqueue(ops(("ADD", None, "User likes sushi", "preference", "food")))
    assert m.retry_job(job.id).status == "queued"
    assert m.run_jobs() == 1
    assert m.jobs()[0].status == "done"
    m.close()


def test_provider_outage_is_retried_with_backoff_and_the_job_completes(tmp_path: Path) -> None:
    reply = {
        "choices": [
            {
                "message": {"content": json.dumps(ops(("ADD", None, "User lives in Oslo", "fact", "")))},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 9},
        "model": "m",
    }
    statuses = [503, 503, 503, 503, 503, 503, 200]
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status = statuses.pop(0)
        return httpx.Response(status, json=reply if status == 200 else {"error": {"message": "overloaded"}})

    llm = OpenAILLM(
        "m",
        api_key="k",
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
        retry=RetryPolicy(max_retries=2, jitter=0),
    )
    m = Memory(str(tmp_path / "o.db"), HashEmbedder(), llm=llm, settings=FAST_JOBS)
    with pytest.raises(ProviderError, match="503") as info:
        m.add("I live in Oslo", user_id="u")
    assert info.value.retryable and sleeps == [0.5, 1.0]
    assert m.jobs()[0].status == "queued"
    assert m.run_jobs(max_jobs=1) == 1  # still down: 503 x3 more, requeued
    assert m.jobs()[0].status == "queued" and m.jobs()[0].attempts == 2
    assert m.run_jobs() == 1  # back up
    (job,) = m.jobs()
    assert job.status == "done" and job.result is not None and job.result["usage"]["prompt_tokens"] == 50
    assert [r.memory for r in m.get_all(user_id="u").results] == ["User lives in Oslo"]
    m.close()


def test_background_add_returns_at_once_and_the_in_process_worker_finishes(tmp_path: Path) -> None:
    llm = ScriptedLLM([ops(("ADD", None, "User's order #1234 has not arrived", "context", "support case"))])
    settings = Settings(track_access=False, worker_poll_seconds=0.05)
    m = Memory(str(tmp_path / "b.db"), HashEmbedder(), llm=llm, settings=settings)
    result = m.add("my order #1234 hasn't arrived", user_id="u", background=True)
    assert result.results == [] and result.job_id is not None and len(result.message_ids) == 1
    deadline = time.monotonic() + 10
    while m.jobs()[0].status != "done" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert m.jobs()[0].status == "done"
    assert [h.memory for h in m.search("order 1234", user_id="u").results] == ["User's order #1234 has not arrived"]
    m.close()


def test_custom_instructions_and_categories_reach_the_prompt(tmp_path: Path) -> None:
    llm = ScriptedLLM([ops(("ADD", None, "User prefers aisle seats", "travel", ""))])
    settings = Settings(track_access=False, in_process_worker=False, categories=("travel", "food"))
    m = Memory(str(tmp_path / "c.db"), HashEmbedder(), llm=llm, settings=settings)
    m.add("I always take an aisle seat", user_id="u", instructions="Only remember travel preferences.")
    system = llm.calls[0].messages[0]["content"]
    assert "Only remember travel preferences." in system and "Categories: travel, food." in system
    assert llm.calls[0].schema is not None
    enum = llm.calls[0].schema["properties"]["operations"]["items"]["properties"]["category"]["enum"]
    assert enum == ["travel", "food"]
    assert m.get_all(user_id="u").results[0].category == "travel"
    llm.enqueue(ops(("ADD", None, "x", "music", "")), ops())
    assert m.add("I like rock", user_id="u").results == []
    assert "category 'music' is not one of travel, food" in llm.calls[-1].messages[-1]["content"]
    m.close()


def test_session_context_is_shown_and_scope_ignores_the_session(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(ops(("ADD", None, "User lives in Berlin", "fact", "")))
    mem.add("I live in Berlin", user_id="u", run_id="s1")
    mem.sessions("s2", user_id="u").add_message("assistant", "How can I help?")
    llm.enqueue(ops(("UPDATE", 1, "User lives in Munich", "fact", "moved")))
    result = mem.add("I moved to Munich", user_id="u", run_id="s2")
    prompt = llm.calls[-1].messages[-1]["content"]
    assert "1. [fact] User lives in Berlin" in prompt, "memories from other sessions are reconciled"
    assert "assistant: How can I help?" in prompt
    assert result.results[0].event == "UPDATE"


WORKER = textwrap.dedent(
    """
    import sys, time
    from retain import Memory, Settings
    from retain.llm.base import LLM
    from retain.testing import HashEmbedder

    class Stuck(LLM):
        name = "stuck"
        model = "stuck"
        def _complete(self, checked, schema, stream):
            print("calling", flush=True)
            time.sleep(60)
            raise AssertionError("unreachable")

    m = Memory(sys.argv[1], HashEmbedder(), llm=Stuck(),
               settings=Settings(track_access=False, in_process_worker=False, job_lease_seconds=1.0))
    m.run_jobs()
    """
)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store that a second process can open too: a SQLite file, or a PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "k.db")
    return str(request.getfixturevalue("postgres_dsn"))  # already a postgresql:// URL


def test_worker_killed_mid_job_then_restart_completes_exactly_once(store_location: str) -> None:
    path = store_location
    settings = Settings(track_access=False, in_process_worker=False, job_lease_seconds=1.0, job_backoff_seconds=0.0)
    llm = ScriptedLLM()
    m = Memory(path, HashEmbedder(), llm=llm, settings=settings)
    job_id = m.add("I'm vegetarian", user_id="u", background=True).job_id
    proc = subprocess.Popen([sys.executable, "-c", WORKER, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "calling"
    assert m.jobs()[0].status == "running"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert m.run_jobs() == 0, "the dead worker's lease has not expired yet"
    time.sleep(1.1)
    llm.enqueue(ops(("ADD", None, "User is vegetarian", "preference", "diet")))
    assert m.run_jobs() == 1
    (job,) = m.jobs()
    assert (job.id, job.status, job.attempts) == (job_id, "done", 2)
    assert m.run_jobs() == 0
    assert [r.memory for r in m.get_all(user_id="u").results] == ["User is vegetarian"]
    assert m.store.check_integrity() == []
    m.close()


def test_purged_messages_make_a_queued_job_a_no_op(mem: Memory, llm: ScriptedLLM) -> None:
    mem.add("I like tea", user_id="u", background=True)
    mem.delete_all(user_id="u")
    assert mem.jobs() == []
    mem.add("I like tea", user_id="v", background=True)
    mem.store.delete_messages(mem._scope("v", None, None))
    assert mem.run_jobs() == 1
    assert mem.jobs()[0].status == "done" and llm.calls == []


def test_second_change_to_one_memory_keeps_its_fact(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(ops(("ADD", None, "User lives in Berlin", "fact", "")))
    mem.add("I live in Berlin", user_id="u")
    llm.enqueue(
        ops(
            ("UPDATE", 1, "User lives in Munich", "fact", "moved"),
            ("UPDATE", 1, "User works in Munich", "fact", "new job"),
            ("NOOP", 1, "", "fact", "same"),
        )
    )
    result = mem.add("I moved to Munich and work there now", user_id="u")
    assert [(e.event, e.memory) for e in result.results] == [
        ("UPDATE", "User lives in Munich"),
        ("ADD", "User works in Munich"),
    ]
    assert llm.pending == 0 and len(llm.calls) == 2


def test_schema_only_admits_valid_operations() -> None:
    from retain.extraction import response_schema

    empty = response_schema(["fact"], 0)["properties"]["operations"]["items"]
    assert empty["properties"]["op"]["enum"] == ["ADD"] and empty["properties"]["id"]["enum"] == [None]
    shapes = response_schema(["fact"], 2)["properties"]["operations"]["items"]["anyOf"]
    assert [s["properties"]["id"]["enum"] for s in shapes] == [[None], [1, 2]]
