"""ScriptedLLM: a real LLM subclass whose replies a test scripts in advance.

It goes through the same registry (`scripted:`) and the same interface as the
real providers, so a test exercises the production code path and nothing is
patched. Every call is recorded, so a test can also assert what was asked.

An empty script raises `ScriptExhausted`, an AssertionError rather than a
RetainError: running out of replies is a mistake in the test, and the pipeline's
handling of provider failures must not swallow it.
"""

from __future__ import annotations

import json
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from retain.llm.base import (
    LLM,
    Completion,
    CompletionStream,
    JSONSchema,
    Messages,
    StreamEnd,
    approx_tokens,
    approx_tokens_from_chars,
    prompt_chars,
)
from retain.models import Usage

#: A reply: text as is, a dict or list dumped as JSON, an exception to raise, or a function of the messages.
Reply = str | dict[str, Any] | list[Any] | BaseException | Callable[[Messages], str]


class ScriptExhausted(AssertionError):
    """ScriptedLLM was called more often than replies were enqueued."""


@dataclass(frozen=True)
class ScriptedCall:
    """One call the ScriptedLLM received."""

    messages: Messages
    schema: JSONSchema | None
    stream: bool


class ScriptedLLM(LLM):
    """Replies with queued texts, JSON-dumped dicts, computed replies, or raises queued exceptions, in order."""

    name = "scripted"
    supports_json_schema = True

    def __init__(self, replies: Iterable[Reply] = (), *, model: str = "scripted") -> None:
        self.model = model
        self.calls: list[ScriptedCall] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self.enqueue(*replies)

    def enqueue(self, *replies: Reply) -> ScriptedLLM:
        """Queue replies: a str as is, a dict or list dumped as JSON, an exception to raise, or a
        function that computes the reply from the messages (to check what the model was shown)."""
        with self._lock:
            self._replies.extend(replies)
        return self

    @property
    def pending(self) -> int:
        """How many queued replies are left."""
        return len(self._replies)

    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        with self._lock:
            self.calls.append(ScriptedCall(messages=checked, schema=schema, stream=stream))
            if not self._replies:
                raise ScriptExhausted(
                    f"ScriptedLLM has no reply left for call {len(self.calls)}; "
                    f"enqueue one per expected call. Last message: {checked[-1]['content'][:200]!r}"
                )
            reply = self._replies.popleft()
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply):
            reply = reply(checked)
        text = reply if isinstance(reply, str) else json.dumps(reply, ensure_ascii=False)
        usage = Usage(
            prompt_tokens=approx_tokens_from_chars(prompt_chars(checked)),
            completion_tokens=approx_tokens(text),
            llm_calls=1,
        )
        if stream:
            return CompletionStream(_chunked(text, usage, self.model), model=self.model)
        return Completion(text=text, usage=usage, model=self.model, finish_reason="stop")


def _chunked(text: str, usage: Usage, model: str) -> Iterator[str | StreamEnd]:
    """The text in word-sized chunks, as a streaming provider would deliver it."""
    yield from re.findall(r"\s*\S+|\s+", text)
    yield StreamEnd(usage=usage, model=model, finish_reason="stop")
