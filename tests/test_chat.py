"""The chat loop: memory before the reply, learning after it, and graceful failure."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retain import ConfigError, InvalidInputError, Memory, ProviderError, Settings
from retain.chat import Chat, ChatSettings
from retain.store.base import Vector
from retain.testing import HashEmbedder, ScriptedLLM

FAST = Settings(track_access=False, job_backoff_seconds=0.0, in_process_worker=False)


def ops(*facts: str) -> dict[str, Any]:
    return {"operations": [{"op": "ADD", "id": None, "text": f, "category": "fact", "reason": "stated"} for f in facts]}


class SwitchableEmbedder(HashEmbedder):
    """Embeds normally until told to fail or stall (a memory outage the chat must survive)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = False
        self.release = threading.Event()
        self.stall = False

    def embed(self, texts: list[str]) -> Vector:
        if self.fail:
            raise ProviderError("embedder is down")
        if self.stall:
            self.release.wait(10)
        return super().embed(texts)


@pytest.fixture
def llm() -> ScriptedLLM:
    return ScriptedLLM()


@pytest.fixture
def embedder() -> SwitchableEmbedder:
    return SwitchableEmbedder()


@pytest.fixture
def mem(tmp_path: Path, llm: ScriptedLLM, embedder: SwitchableEmbedder) -> Iterator[Memory]:
    m = Memory(str(tmp_path / "chat.db"), embedder, llm=llm, settings=FAST)
    yield m
    m.close()


def test_a_returning_user_gets_remembered_facts_in_the_prompt(mem: Memory, llm: ScriptedLLM) -> None:
    chat = Chat(mem)
    llm.enqueue("Sorry about that! I have noted order 4417.")
    first = chat.reply("My order 4417 arrived broken.", user_id="ann", session_id="s1")
    assert first.text == "Sorry about that! I have noted order 4417." and first.job_id is not None
    assert [m.content for m in mem.sessions("s1", user_id="ann").messages] == [
        "My order 4417 arrived broken.",
        first.text,
    ]

    llm.enqueue(ops("User's order 4417 arrived broken"))
    assert mem.run_jobs() == 1, "extraction runs after the reply, as a job"
    extraction_prompt = llm.calls[-1].messages[-1]["content"]
    assert "My order 4417 arrived broken." in extraction_prompt and first.text in extraction_prompt

    llm.enqueue("A replacement for order 4417 ships tomorrow.")
    second = chat.reply("any update on my order?", user_id="ann", session_id="s2")
    assert [m.memory for m in second.memories] == ["User's order 4417 arrived broken"]
    system = llm.calls[-1].messages[0]
    assert system["role"] == "system" and "User's order 4417 arrived broken" in system["content"]
    assert [m["role"] for m in llm.calls[-1].messages] == ["system", "user"], "a new session starts with no turns"
    assert second.memory_status == "ok"


def test_the_session_history_goes_with_each_turn(mem: Memory, llm: ScriptedLLM) -> None:
    chat = Chat(mem, settings=ChatSettings(history_messages=2))
    for reply in ("one", "two"):
        llm.enqueue(reply)
        chat.reply(f"say {reply}", user_id="ann", session_id="s")
    llm.enqueue("three")
    chat.reply("say three", user_id="ann", session_id="s")
    sent = [(m["role"], m["content"]) for m in llm.calls[-1].messages[1:]]
    assert sent == [("user", "say two"), ("assistant", "two"), ("user", "say three")]


def test_a_failing_memory_search_still_answers_and_says_so(
    mem: Memory, llm: ScriptedLLM, embedder: SwitchableEmbedder
) -> None:
    mem.add("I like tea", user_id="ann", infer=False)
    embedder.fail = True
    llm.enqueue("Hello!")
    events = list(Chat(mem).stream("what do I like?", user_id="ann", session_id="s"))
    assert events[0].type == "memories" and events[0].memory_status == "unavailable" and events[0].memories == []
    assert "".join(e.text or "" for e in events if e.type == "token") == "Hello!"
    assert events[-1].type == "done"
    assert "unavailable" in llm.calls[-1].messages[0]["content"]


def test_a_slow_memory_search_is_abandoned(mem: Memory, llm: ScriptedLLM, embedder: SwitchableEmbedder) -> None:
    embedder.stall = True
    llm.enqueue("Quick answer.")
    chat = Chat(mem, settings=ChatSettings(search_timeout_seconds=0.05))
    try:
        reply = chat.reply("hi", user_id="ann", session_id="s")
    finally:
        embedder.release.set()
    assert reply.text == "Quick answer." and reply.memory_status == "unavailable"


def test_an_llm_failure_keeps_the_message_and_queues_it_for_learning(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue(ProviderError("503 from upstream"))
    events = list(Chat(mem).stream("I am vegetarian", user_id="ann", session_id="s"))
    error = events[-1]
    assert error.type == "error" and "503 from upstream" in (error.detail or "") and error.job_id
    assert [m.content for m in mem.sessions("s", user_id="ann").messages] == ["I am vegetarian"]

    llm.enqueue(ops("User is vegetarian"))
    assert mem.run_jobs() == 1
    assert [r.memory for r in mem.get_all(user_id="ann").results] == ["User is vegetarian"]


def test_a_stream_that_breaks_midway_is_an_error_event(mem: Memory, llm: ScriptedLLM) -> None:
    class Breaking(ScriptedLLM):
        def _complete(self, checked: Any, schema: Any, stream: bool) -> Any:
            from retain.llm.base import CompletionStream

            def chunks() -> Iterator[str]:
                yield "Half a "
                raise ProviderError("connection reset")

            return CompletionStream(chunks(), model="breaking")

    events = list(Chat(mem, Breaking()).stream("hi", user_id="ann", session_id="s"))
    assert [e.type for e in events] == ["memories", "token", "error"]
    assert len(mem.sessions("s", user_id="ann").messages) == 1, "only the user's message; no half reply"


def test_bad_chat_input_is_refused_before_anything_is_stored(mem: Memory) -> None:
    chat = Chat(mem)
    for kwargs in (
        {"message": "", "user_id": "a", "session_id": "s"},
        {"message": "x" * (FAST.max_message_chars + 1), "user_id": "a", "session_id": "s"},
        {"message": "hi", "user_id": None, "session_id": "s"},
        {"message": "hi", "user_id": "a", "session_id": None},
        {"message": "hi", "user_id": "a", "session_id": "s", "mode": "turbo"},
    ):
        with pytest.raises(InvalidInputError):
            chat.stream(**kwargs)
    assert mem.messages(mem._scope("a", None, None)) == []


def test_chat_without_an_llm_says_how_to_configure_one(tmp_path: Path) -> None:
    with Memory(str(tmp_path / "x.db"), HashEmbedder(), settings=FAST) as mem, pytest.raises(ConfigError) as info:
        Chat(mem).stream("hi", user_id="a", session_id="s")
    assert "RETAIN_LLM=" in str(info.value)


def test_agent_mode_searches_saves_and_answers(mem: Memory, llm: ScriptedLLM) -> None:
    mem.add("My order number is 4417", user_id="ann", infer=False)
    llm.enqueue(
        {"action": "search_memories", "argument": "order number"},
        {"action": "save_memory", "argument": "User wants updates by email"},
        {"action": "answer", "argument": None},
        "Order 4417 is on its way; I will email you.",
    )
    events = list(Chat(mem).stream("Where is my order? Email me updates.", user_id="ann", session_id="s", mode="agent"))
    tools = [(e.tool, e.arguments) for e in events if e.type == "tool"]
    assert tools == [
        ("search_memories", {"query": "order number"}),
        ("save_memory", {"memory": "User wants updates by email"}),
    ]
    assert events[1].memories and events[1].memories[0].memory == "My order number is 4417"
    assert "".join(e.text or "" for e in events if e.type == "token") == "Order 4417 is on its way; I will email you."
    assert events[-1].type == "done" and events[-1].job_id is None, "the agent chose what to save"
    assert llm.calls[0].schema is not None and llm.calls[-1].schema is None
    assert "My order number is 4417" in llm.calls[1].messages[-1]["content"], "the tool result is fed back"
    saved = mem.search("email updates", user_id="ann").results[0]
    assert saved.memory == "User wants updates by email" and saved.metadata["saved_by"] == "agent"


def test_agent_mode_is_bounded_and_survives_invalid_steps(mem: Memory, llm: ScriptedLLM) -> None:
    chat = Chat(mem, settings=ChatSettings(agent_max_steps=2))
    llm.enqueue({"action": "search_memories", "argument": "a"}, {"action": "search_memories", "argument": "b"}, "ok")
    events = list(chat.stream("hi", user_id="ann", session_id="s", mode="agent"))
    assert sum(e.type == "tool" for e in events) == 2 and events[-1].type == "done"

    llm.enqueue("this is not JSON", "fine")
    events = list(chat.stream("hi again", user_id="ann", session_id="s", mode="agent"))
    assert "".join(e.text or "" for e in events if e.type == "token") == "fine"
    assert llm.pending == 0


def test_extract_learns_from_stored_messages_only_in_scope(mem: Memory, llm: ScriptedLLM) -> None:
    session = mem.sessions("s", user_id="ann")
    said = session.add_message("user", "I live in Lisbon")
    with pytest.raises(Exception, match="No message"):
        mem.extract([said.id], user_id="bob")
    with pytest.raises(Exception, match="No message"):
        mem.for_tenant("other").extract([said.id], user_id="ann")
    llm.enqueue(ops("User lives in Lisbon"))
    result = mem.extract([said.id], user_id="ann", run_id="s", background=False)
    assert [e.memory for e in result.results] == ["User lives in Lisbon"]
    assert mem.get(result.results[0].id).source_message_ids == [said.id]
    assert mem.search("Lisbon", user_id="ann").results[0].id == result.results[0].id


def test_a_client_that_leaves_mid_reply_still_has_its_message_learned(mem: Memory, llm: ScriptedLLM) -> None:
    llm.enqueue("a long reply that nobody reads")
    events = Chat(mem).stream("I play the cello", user_id="ann", session_id="s")
    assert next(events).type == "memories"
    assert next(events).type == "token"
    events.close()  # what the server does when the client disconnects
    (job,) = mem.jobs()
    assert job.status == "queued"
    assert [m.content for m in mem.sessions("s", user_id="ann").messages] == ["I play the cello"]
