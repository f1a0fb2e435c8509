from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from llm_http_fakes import Server, Sleeps, sse

from retain.errors import ConfigError, ProviderError
from retain.llm import OpenAILLM, RetryPolicy
from retain.llm.openai import is_strict, schema_name

MESSAGES = [
    {"role": "system", "content": "You extract facts."},
    {"role": "user", "content": "I'm vegetarian and I live in Berlin"},
]
SCHEMA = {
    "title": "Facts",
    "type": "object",
    "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
    "required": ["facts"],
    "additionalProperties": False,
}


def ok(text: str = "Hello!", *, prompt: int = 12, completion: int = 3) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "id": "chatcmpl-1",
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        },
    )


def error(status: int, message: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers, json={"error": {"message": message, "type": "x"}})


def make(server: Server, sleeps: Sleeps | None = None, **options: Any) -> OpenAILLM:
    return OpenAILLM(
        "gpt-4o-mini",
        api_key="sk-test",
        transport=server.transport,
        sleep=sleeps if sleeps is not None else Sleeps(),
        env={},
        **options,
    )


def test_plain_completion_reports_text_usage_and_model() -> None:
    server = Server([ok("Hi there")])
    completion = make(server).complete(MESSAGES)

    assert completion.text == "Hi there"
    assert completion.usage.prompt_tokens == 12
    assert completion.usage.completion_tokens == 3
    assert completion.usage.llm_calls == 1
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert completion.finish_reason == "stop"
    request = server.requests[0]
    assert request.method == "POST"
    assert str(request.url) == "https://api.openai.com/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test"
    body = server.body()
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == MESSAGES
    assert "response_format" not in body
    assert "stream" not in body


def test_streaming_yields_chunks_then_final_usage() -> None:
    server = Server(
        [
            sse(
                {"model": "gpt-4o-mini", "choices": [{"delta": {"role": "assistant", "content": ""}}]},
                {"model": "gpt-4o-mini", "choices": [{"delta": {"content": "Hel"}}]},
                {"model": "gpt-4o-mini", "choices": [{"delta": {"content": "lo"}, "finish_reason": None}]},
                {"model": "gpt-4o-mini", "choices": [{"delta": {}, "finish_reason": "stop"}]},
                {"model": "gpt-4o-mini", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
                "[DONE]",
            )
        ]
    )
    stream = make(server).complete(MESSAGES, stream=True)

    assert list(stream) == ["Hel", "lo"]
    assert stream.done
    assert stream.text == "Hello"
    assert (stream.usage.prompt_tokens, stream.usage.completion_tokens) == (9, 2)
    body = server.body()
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert stream.collect().finish_reason == "stop"


def test_streaming_without_usage_estimates_it() -> None:
    server = Server([sse({"choices": [{"delta": {"content": "abcdefgh"}}]}, "[DONE]")])
    stream = make(server).complete(MESSAGES, stream=True)

    completion = stream.collect()

    assert completion.text == "abcdefgh"
    assert completion.usage.completion_tokens == 2
    assert completion.usage.prompt_tokens > 0


def test_stream_error_chunk_raises_provider_error() -> None:
    server = Server([sse({"choices": [{"delta": {"content": "a"}}]}, {"error": {"message": "boom"}})])
    stream = make(server).complete(MESSAGES, stream=True)

    with pytest.raises(ProviderError, match="boom"):
        list(stream)


def test_schema_is_sent_as_strict_json_schema() -> None:
    server = Server([ok('{"facts": ["vegetarian"]}')])
    completion = make(server).complete(MESSAGES, schema=SCHEMA)

    assert json.loads(completion.text) == {"facts": ["vegetarian"]}
    body = server.body()
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Facts", "schema": SCHEMA, "strict": True},
    }
    assert body["temperature"] == 0
    assert body["messages"] == MESSAGES


def test_rejected_json_schema_falls_back_to_json_object_and_remembers() -> None:
    server = Server(
        [
            error(400, "response_format json_schema is not supported"),
            ok('{"facts": []}'),
            ok('{"facts": ["x"]}'),
        ]
    )
    llm = make(server)

    first = llm.complete(MESSAGES, schema=SCHEMA)
    second = llm.complete(MESSAGES, schema=SCHEMA)

    assert first.text == '{"facts": []}'
    assert second.text == '{"facts": ["x"]}'
    assert server.body(0)["response_format"]["type"] == "json_schema"
    for index in (1, 2):
        body = server.body(index)
        assert body["response_format"] == {"type": "json_object"}
        system = body["messages"][0]
        assert system["role"] == "system"
        assert system["content"].startswith("You extract facts.")
        assert '"facts"' in system["content"] and "JSON" in system["content"]
    assert len(server.requests) == 3


def test_fallback_that_also_fails_reports_the_error_and_keeps_json_schema() -> None:
    server = Server([error(400, "bad request"), error(400, "context too long"), ok("{}")])
    llm = make(server)

    with pytest.raises(ProviderError, match="context too long") as caught:
        llm.complete(MESSAGES, schema=SCHEMA)

    assert caught.value.retryable is False
    llm.complete(MESSAGES, schema=SCHEMA)
    assert server.body(2)["response_format"]["type"] == "json_schema"


def test_503_twice_then_success_backs_off_with_growing_sleeps(sleeps: Sleeps) -> None:
    server = Server([error(503, "overloaded"), error(503, "overloaded"), ok("fine")])
    completion = make(server, sleeps).complete(MESSAGES)

    assert completion.text == "fine"
    assert len(server.requests) == 3
    assert len(sleeps) == 2
    assert 0 < sleeps[0] < sleeps[1]


def test_429_retry_after_is_respected(sleeps: Sleeps) -> None:
    server = Server([error(429, "slow down", {"retry-after": "7"}), ok()])
    make(server, sleeps).complete(MESSAGES)

    assert sleeps == [7.0]


def test_timeouts_and_connection_errors_are_retried(sleeps: Sleeps) -> None:
    server = Server([httpx.ReadTimeout("slow"), httpx.ConnectError("refused"), ok("back")])

    assert make(server, sleeps).complete(MESSAGES).text == "back"
    assert len(sleeps) == 2


def test_401_is_not_retried_and_not_retryable(sleeps: Sleeps) -> None:
    server = Server([error(401, "Incorrect API key provided")])

    with pytest.raises(ProviderError) as caught:
        make(server, sleeps).complete(MESSAGES)

    assert caught.value.retryable is False
    assert caught.value.provider == "openai"
    assert "OPENAI_API_KEY" in str(caught.value)
    assert "Incorrect API key" in str(caught.value)
    assert len(server.requests) == 1
    assert sleeps == []


def test_exhausted_retries_raise_a_retryable_error(sleeps: Sleeps) -> None:
    policy = RetryPolicy(max_retries=2, initial_delay=0.1)
    server = Server([error(500, "oops")] * 3)

    with pytest.raises(ProviderError, match="3 attempts") as caught:
        make(server, sleeps, retry=policy).complete(MESSAGES)

    assert caught.value.retryable is True
    assert len(server.requests) == 3
    assert len(sleeps) == 2


def test_streamed_request_is_retried_before_the_first_chunk(sleeps: Sleeps) -> None:
    server = Server([error(502, "bad gateway"), sse({"choices": [{"delta": {"content": "ok"}}]}, "[DONE]")])

    assert make(server, sleeps).complete(MESSAGES, stream=True).collect().text == "ok"
    assert len(sleeps) == 1


def test_refusal_without_content_is_a_provider_error() -> None:
    reply = httpx.Response(
        200, json={"choices": [{"message": {"content": None, "refusal": "I can't help"}, "finish_reason": "stop"}]}
    )

    with pytest.raises(ProviderError, match="I can't help"):
        make(Server([reply])).complete(MESSAGES)


def test_non_json_success_body_is_a_provider_error() -> None:
    with pytest.raises(ProviderError, match="not JSON"):
        make(Server([httpx.Response(200, text="<html>proxy</html>")])).complete(MESSAGES)


def test_missing_key_names_the_fix() -> None:
    with pytest.raises(ConfigError) as caught:
        OpenAILLM("gpt-4o-mini", env={})

    message = str(caught.value)
    assert "OPENAI_API_KEY is not set" in message
    assert "OPENAI_BASE_URL" in message and "Ollama" in message


def test_base_url_alone_is_enough_for_a_local_server() -> None:
    server = Server([ok()])
    llm = OpenAILLM("llama3", env={"OPENAI_BASE_URL": "http://localhost:11434/v1/"}, transport=server.transport)

    llm.complete(MESSAGES)

    assert str(server.requests[0].url) == "http://localhost:11434/v1/chat/completions"
    assert "authorization" not in server.requests[0].headers


def test_key_is_read_from_env_at_construction() -> None:
    server = Server([ok()])
    llm = OpenAILLM("gpt-4o-mini", env={"OPENAI_API_KEY": "sk-env"}, transport=server.transport)

    llm.complete(MESSAGES)

    assert server.requests[0].headers["authorization"] == "Bearer sk-env"


def test_options_reach_the_body() -> None:
    server = Server([ok()])
    make(server, temperature=0.3, max_tokens=50).complete(MESSAGES)

    body = server.body()
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 50


def test_schema_name_is_sanitised() -> None:
    assert schema_name({"title": "my schema!"}) == "my_schema_"
    assert schema_name({}) == "response"


@pytest.mark.parametrize(
    ("schema", "strict"),
    [
        (SCHEMA, True),
        ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}, False),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            False,
        ),
        (
            {
                "type": "object",
                "properties": {
                    "ops": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}}}}
                },
                "required": ["ops"],
                "additionalProperties": False,
            },
            False,
        ),
        ({"type": "array", "items": {"type": "string"}}, True),
    ],
)
def test_strict_only_when_openai_would_accept_it(schema: dict[str, Any], strict: bool) -> None:
    assert is_strict(schema) is strict


def test_loose_schema_is_sent_non_strict() -> None:
    server = Server([ok("{}")])
    loose = {"type": "object", "properties": {"id": {"type": "integer"}}}

    make(server).complete(MESSAGES, schema=loose)

    assert server.body()["response_format"]["json_schema"]["strict"] is False
