from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from retain.errors import InvalidInputError
from retain.llm._http import RetryPolicy, parse_retry_after
from retain.llm.base import CompletionStream, StreamEnd, check_messages, with_system_instruction
from retain.models import Usage


def test_stream_usage_is_only_known_once_exhausted() -> None:
    items: list[str | StreamEnd] = ["a", "b", StreamEnd(usage=Usage(prompt_tokens=3, completion_tokens=2))]
    stream = CompletionStream(iter(items), model="m")

    with pytest.raises(RuntimeError, match="exhausted"):
        _ = stream.usage
    assert next(stream) == "a"
    assert stream.text == "a"
    completion = stream.collect()
    assert completion.text == "ab"
    assert completion.usage.prompt_tokens == 3
    assert completion.model == "m"


def test_closing_a_stream_calls_on_close_once_and_stops_it() -> None:
    closed: list[bool] = []
    stream = CompletionStream(iter(["a", "b", "c"]), model="m", on_close=lambda: closed.append(True))

    with stream:
        assert next(stream) == "a"
    stream.close()

    assert closed == [True]
    assert list(stream) == []


def test_stream_closes_itself_when_the_source_fails() -> None:
    closed: list[bool] = []

    def source() -> Iterator[str]:
        yield "a"
        raise OSError("gone")

    stream = CompletionStream(source(), model="m", on_close=lambda: closed.append(True))
    with pytest.raises(OSError):
        list(stream)
    assert closed == [True]


def test_check_messages_copies_and_validates() -> None:
    original = [{"role": "user", "content": "hi", "name": "alice"}]
    checked = check_messages(original)

    assert checked == original and checked[0] is not original[0]
    for bad in ("hi", [], [{"role": "user"}], [{"role": "x", "content": "hi"}], ["hi"]):
        with pytest.raises(InvalidInputError):
            check_messages(bad)


def test_system_instruction_is_appended_or_prepended() -> None:
    with_system = with_system_instruction([{"role": "system", "content": "A"}, {"role": "user", "content": "q"}], "B")
    without = with_system_instruction([{"role": "user", "content": "q"}], "B")

    assert with_system[0] == {"role": "system", "content": "A\n\nB"}
    assert without == [{"role": "system", "content": "B"}, {"role": "user", "content": "q"}]


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.0, max_retry_after=30.0)

    assert [policy.delay(n) for n in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert policy.delay(0, retry_after=12.0) == 12.0
    assert policy.delay(0, retry_after=300.0) == 30.0
    jittered = RetryPolicy(initial_delay=1.0, jitter=0.1)
    assert jittered.delay(0, rand=1.0) == pytest.approx(1.1)


def test_parse_retry_after_forms() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)

    assert parse_retry_after(httpx.Headers({"retry-after": "3"})) == 3.0
    assert parse_retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "3"})) == 0.25
    assert parse_retry_after(httpx.Headers({"retry-after": "Wed, 01 Jan 2025 12:00:05 GMT"}), now) == 5.0
    assert parse_retry_after(httpx.Headers({"retry-after": "soon"})) is None
    assert parse_retry_after(httpx.Headers({})) is None
