from __future__ import annotations

import json

import pytest

from retain.errors import InvalidInputError, ProviderError, RetainError
from retain.llm import LLM
from retain.testing.llm import ScriptedLLM, ScriptExhausted

USER = [{"role": "user", "content": "I live in Berlin"}]


def test_replies_come_back_in_order_and_calls_are_recorded() -> None:
    schema = {"type": "object"}
    llm = ScriptedLLM(["first"]).enqueue({"facts": ["Lives in Berlin"]})

    assert isinstance(llm, LLM)
    assert llm.complete(USER).text == "first"
    second = llm.complete(USER, schema=schema)
    assert json.loads(second.text) == {"facts": ["Lives in Berlin"]}
    assert [call.schema for call in llm.calls] == [None, schema]
    assert llm.calls[0].messages == USER
    assert llm.pending == 0


def test_queued_exception_is_raised_then_the_script_goes_on() -> None:
    llm = ScriptedLLM().enqueue(ProviderError("down", provider="scripted"), "recovered")

    with pytest.raises(ProviderError, match="down"):
        llm.complete(USER)
    assert llm.complete(USER).text == "recovered"
    assert len(llm.calls) == 2


def test_empty_script_fails_loudly_and_outside_the_retain_error_tree() -> None:
    llm = ScriptedLLM()

    with pytest.raises(ScriptExhausted, match="no reply left for call 1") as caught:
        llm.complete(USER)
    assert not isinstance(caught.value, RetainError)
    assert isinstance(caught.value, AssertionError)


def test_usage_is_approximated_from_text_length() -> None:
    completion = ScriptedLLM(["x" * 40]).complete([{"role": "user", "content": "y" * 80}])

    assert completion.usage.completion_tokens == 10
    assert completion.usage.prompt_tokens == 20
    assert completion.usage.llm_calls == 1


def test_streaming_delivers_chunks_and_usage() -> None:
    llm = ScriptedLLM(["Hello there, Alice."])
    stream = llm.complete(USER, stream=True)

    chunks = list(stream)
    assert len(chunks) > 1
    assert "".join(chunks) == "Hello there, Alice."
    assert stream.usage.completion_tokens == 5
    assert llm.calls[0].stream is True


def test_malformed_messages_are_invalid_input() -> None:
    llm = ScriptedLLM(["unused"])

    with pytest.raises(InvalidInputError):
        llm.complete([{"role": "wizard", "content": "x"}])
    with pytest.raises(InvalidInputError):
        llm.complete([])
    assert llm.pending == 1


def test_a_reply_can_be_computed_from_the_messages() -> None:
    llm = ScriptedLLM().enqueue(lambda messages: messages[-1]["content"].upper())
    assert llm.complete([{"role": "user", "content": "shout"}]).text == "SHOUT"
