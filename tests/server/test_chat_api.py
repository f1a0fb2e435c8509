"""POST /v1/chat over a real server: server-sent events, learning after the stream, failures."""

from __future__ import annotations

import json
from typing import Any

from conftest import BOTH_BACKENDS, Live, StartServer

from retain import ProviderError
from retain.testing import ScriptedLLM

pytestmark = BOTH_BACKENDS


def stream_chat(live: Live, key: str, **body: Any) -> tuple[list[str], list[dict[str, Any]]]:
    names: list[str] = []
    events: list[dict[str, Any]] = []
    with live.client(key).stream("POST", "/v1/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event: "):
                names.append(line.removeprefix("event: "))
            elif line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    assert names == [e["type"] for e in events]
    return names, events


def test_chat_streams_and_learns_afterwards(start_server: StartServer) -> None:
    extraction, chat = ScriptedLLM(), ScriptedLLM()
    live = start_server(llm=extraction, chat_llm=chat)
    chat.enqueue("Sorry to hear that, noted.")
    names, events = stream_chat(
        live, live.acme, user_id="ann", session_id="s1", message="My order 4417 arrived damaged."
    )
    assert names[0] == "memories" and names[-1] == "done" and names.count("token") >= 4
    assert "".join(e.get("text", "") for e in events) == "Sorry to hear that, noted."
    done = events[-1]
    job = live.client(live.acme).get("/v1/jobs").json()[0]
    assert (job["id"], job["status"]) == (done["job_id"], "queued"), "the stream ended before extraction ran"

    extraction.enqueue(
        {
            "operations": [
                {"op": "ADD", "id": None, "text": "Order 4417 arrived damaged", "category": "context", "reason": "told"}
            ]
        }
    )
    assert live.memory.run_jobs() == 1
    chat.enqueue(lambda messages: "Remembered: " + messages[0]["content"].splitlines()[-1])
    _, events = stream_chat(live, live.acme, user_id="ann", session_id="s2", message="any update on my order?")
    assert events[0]["memories"][0]["memory"] == "Order 4417 arrived damaged"
    assert "Order 4417 arrived damaged" in "".join(e.get("text", "") for e in events)

    history = live.client(live.acme).get("/v1/sessions/s1/messages", params={"user_id": "ann"}).json()
    assert [m["role"] for m in history] == ["user", "assistant"]
    metrics = live.client(None).get("/metrics").text
    assert 'retain_llm_tokens_total{kind="completion"}' in metrics and "retain_llm_calls_total 3.0" in metrics


def test_chat_llm_failure_is_an_error_event_and_keeps_the_message(live: Live) -> None:
    assert live.llm is not None
    live.llm.enqueue(ProviderError("model overloaded"))
    names, events = stream_chat(live, live.acme, user_id="ann", session_id="s", message="I moved to Porto")
    assert names == ["memories", "error"]
    assert "model overloaded" in events[-1]["detail"] and events[-1]["job_id"]
    stored = live.client(live.acme).get("/v1/sessions/s/messages").json()
    assert [m["content"] for m in stored] == ["I moved to Porto"]


def test_chat_cannot_see_another_tenants_memories(live: Live) -> None:
    assert live.llm is not None
    live.client(live.acme).post(
        "/v1/memories", json={"messages": "acme ann's card ends in 9876", "user_id": "ann", "infer": False}
    )
    live.llm.enqueue(lambda messages: messages[0]["content"])
    _, events = stream_chat(live, live.globex, user_id="ann", session_id="s", message="what is my card number?")
    assert events[0]["memories"] == []
    assert "9876" not in "".join(e.get("text", "") for e in events)


def test_agent_mode_over_http(live: Live) -> None:
    assert live.llm is not None
    live.llm.enqueue({"action": "save_memory", "argument": "User prefers SMS"}, {"action": "answer", "argument": None})
    live.llm.enqueue("Noted: SMS it is.")
    names, events = stream_chat(live, live.acme, user_id="ann", session_id="s", message="Text me, please", mode="agent")
    assert "tool" in names and events[names.index("tool")]["tool"] == "save_memory"
    listed = live.client(live.acme).get("/v1/memories", params={"user_id": "ann"}).json()["results"]
    assert [m["memory"] for m in listed] == ["User prefers SMS"]
