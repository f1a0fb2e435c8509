from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from llm_http_fakes import Server, Sleeps, sse

from retain.errors import ConfigError, ProviderError
from retain.llm import AnthropicLLM, RetryPolicy
from retain.llm.anthropic import split_system

MESSAGES = [
    {"role": "system", "content": "You extract facts."},
    {"role": "user", "content": "I'm vegetarian"},
    {"role": "user", "content": "and I live in Berlin"},
]
SCHEMA = {
    "type": "object",
    "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
    "required": ["facts"],
}


def message(content: list[dict[str, Any]], stop: str = "end_turn") -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-3-5-haiku-20241022",
            "content": content,
            "stop_reason": stop,
            "usage": {"input_tokens": 21, "output_tokens": 5},
        },
    )


def error(status: int, kind: str, text: str) -> httpx.Response:
    return httpx.Response(status, json={"type": "error", "error": {"type": kind, "message": text}})


def make(server: Server, sleeps: Sleeps | None = None, **options: Any) -> AnthropicLLM:
    return AnthropicLLM(
        "claude-3-5-haiku-latest",
        api_key="sk-ant-test",
        transport=server.transport,
        sleep=sleeps if sleeps is not None else Sleeps(),
        env={},
        **options,
    )


def test_completion_splits_system_and_reports_usage() -> None:
    server = Server([message([{"type": "text", "text": "Noted."}])])
    completion = make(server).complete(MESSAGES)

    assert completion.text == "Noted."
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (21, 5)
    assert completion.model == "claude-3-5-haiku-20241022"
    assert completion.finish_reason == "end_turn"
    request = server.requests[0]
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    body = server.body()
    assert body["system"] == "You extract facts."
    assert body["messages"] == [{"role": "user", "content": "I'm vegetarian\n\nand I live in Berlin"}]
    assert body["max_tokens"] == 4096
    assert "tools" not in body


def test_schema_forces_a_tool_and_returns_its_input_as_json() -> None:
    server = Server(
        [
            message(
                [{"type": "tool_use", "id": "t1", "name": "respond", "input": {"facts": ["vegetarian"]}}],
                stop="tool_use",
            )
        ]
    )
    completion = make(server).complete(MESSAGES, schema=SCHEMA)

    assert json.loads(completion.text) == {"facts": ["vegetarian"]}
    body = server.body()
    assert body["tools"][0]["name"] == "respond"
    assert body["tools"][0]["input_schema"] == SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": "respond"}
    assert body["temperature"] == 0


def test_non_object_schema_is_wrapped_and_unwrapped() -> None:
    server = Server([message([{"type": "tool_use", "name": "respond", "input": {"value": ["a", "b"]}}])])
    completion = make(server).complete(MESSAGES, schema={"type": "array", "items": {"type": "string"}})

    assert json.loads(completion.text) == ["a", "b"]
    assert server.body()["tools"][0]["input_schema"]["properties"]["value"]["type"] == "array"


def test_missing_tool_call_is_a_provider_error() -> None:
    server = Server([message([{"type": "text", "text": "I won't"}])])

    with pytest.raises(ProviderError, match="respond"):
        make(server).complete(MESSAGES, schema=SCHEMA)


def stream_events(*deltas: dict[str, Any]) -> httpx.Response:
    return sse(
        {
            "type": "message_start",
            "message": {"model": "claude-3-5-haiku-20241022", "usage": {"input_tokens": 30, "output_tokens": 1}},
        },
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        *({"type": "content_block_delta", "index": 0, "delta": d} for d in deltas),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"},
        named=True,
    )


def test_streaming_text_and_usage() -> None:
    server = Server([stream_events({"type": "text_delta", "text": "Hel"}, {"type": "text_delta", "text": "lo"})])
    stream = make(server).complete(MESSAGES, stream=True)

    assert list(stream) == ["Hel", "lo"]
    assert stream.text == "Hello"
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (30, 7)
    assert stream.model == "claude-3-5-haiku-20241022"
    assert server.body()["stream"] is True


def test_streaming_tool_input_arrives_as_json_text() -> None:
    server = Server(
        [
            stream_events(
                {"type": "input_json_delta", "partial_json": '{"facts": ['},
                {"type": "input_json_delta", "partial_json": '"vegetarian"]}'},
            )
        ]
    )
    text = make(server).complete(MESSAGES, schema=SCHEMA, stream=True).collect().text

    assert json.loads(text) == {"facts": ["vegetarian"]}


def test_stream_error_event_maps_to_retryable_provider_error() -> None:
    server = Server(
        [sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, named=True)]
    )
    stream = make(server).complete(MESSAGES, stream=True)

    with pytest.raises(ProviderError, match="Overloaded") as caught:
        stream.collect()
    assert caught.value.retryable is True


def test_401_is_not_retryable_and_names_the_key(sleeps: Sleeps) -> None:
    server = Server([error(401, "authentication_error", "invalid x-api-key")])

    with pytest.raises(ProviderError) as caught:
        make(server, sleeps).complete(MESSAGES)

    assert caught.value.retryable is False
    assert caught.value.provider == "anthropic"
    assert "ANTHROPIC_API_KEY" in str(caught.value)
    assert sleeps == []


def test_400_is_not_retried(sleeps: Sleeps) -> None:
    server = Server([error(400, "invalid_request_error", "max_tokens: too large")])

    with pytest.raises(ProviderError, match="max_tokens") as caught:
        make(server, sleeps).complete(MESSAGES)

    assert caught.value.retryable is False
    assert len(server.requests) == 1


def test_overloaded_529_is_retried_until_exhausted(sleeps: Sleeps) -> None:
    server = Server([error(529, "overloaded_error", "Overloaded")] * 2)

    with pytest.raises(ProviderError, match="Overloaded") as caught:
        make(server, sleeps, retry=RetryPolicy(max_retries=1)).complete(MESSAGES)

    assert caught.value.retryable is True
    assert len(server.requests) == 2
    assert len(sleeps) == 1


def test_missing_key_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
        AnthropicLLM("claude-3-5-haiku-latest", env={})


def test_split_system_alternates_turns_and_starts_with_user() -> None:
    system, turns = split_system(
        [
            {"role": "system", "content": "a"},
            {"role": "assistant", "content": "hi"},
            {"role": "tool", "content": "result"},
            {"role": "user", "content": "q"},
            {"role": "system", "content": "b"},
        ]
    )

    assert system == "a\n\nb"
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[2]["content"] == "result\n\nq"
