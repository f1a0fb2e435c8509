"""The LLM seam: one abstract method, `complete`.

Every provider (OpenAI-compatible, Anthropic, the local GGUF model, the
scripted fake) answers the same call with the same two shapes, so the pipeline
never asks which provider it holds. What differs between providers is declared
as class attributes (`name`, `supports_json_schema`), not as extra methods.

A streamed reply is a `CompletionStream`: iterate it for text chunks; once it is
exhausted, `.text` and `.usage` hold the whole reply and its token counts, the
same numbers a non-streamed `Completion` carries.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, ClassVar, Literal, overload

from pydantic import BaseModel, ConfigDict

from retain.errors import InvalidInputError
from retain.models import Usage

Messages = list[dict[str, Any]]
JSONSchema = dict[str, Any]

_ROLES = frozenset({"system", "user", "assistant", "tool"})


class Completion(BaseModel):
    """One finished reply. With a schema, `text` is the JSON document as text."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str
    usage: Usage
    model: str
    finish_reason: str | None = None


class StreamEnd(BaseModel):
    """What a provider's chunk source yields last: the usage and the final model name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None


class CompletionStream(Iterator[str]):
    """Text chunks of one reply as they arrive; `.text` and `.usage` once exhausted.

    Providers hand it a source that yields `str` chunks and, at most once, a
    `StreamEnd`. When a provider reports no usage, it is estimated from the text.
    """

    def __init__(
        self,
        source: Iterable[str | StreamEnd],
        *,
        model: str,
        prompt_chars: int = 0,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._source = iter(source)
        self._parts: list[str] = []
        self._model = model
        self._prompt_chars = prompt_chars
        self._on_close = on_close
        self._end: StreamEnd | None = None
        self._done = False

    def __iter__(self) -> CompletionStream:
        return self

    def __next__(self) -> str:
        while not self._done:
            try:
                item = next(self._source)
            except StopIteration:
                self._finish()
                break
            except BaseException:
                self.close()
                raise
            if isinstance(item, StreamEnd):
                self._end = item
                continue
            if item:
                self._parts.append(item)
                return item
        raise StopIteration

    def _finish(self) -> None:
        self._done = True
        self.close()

    @property
    def done(self) -> bool:
        return self._done

    @property
    def text(self) -> str:
        """The text received so far; the whole reply once `done`."""
        return "".join(self._parts)

    @property
    def model(self) -> str:
        return (self._end.model if self._end and self._end.model else None) or self._model

    @property
    def usage(self) -> Usage:
        """Token counts of the whole reply. Only known once the stream is exhausted."""
        if not self._done:
            raise RuntimeError("usage is known once the stream is exhausted: iterate it, or call collect()")
        if self._end is not None and self._end.usage is not None:
            return self._end.usage
        return Usage(
            prompt_tokens=approx_tokens_from_chars(self._prompt_chars),
            completion_tokens=approx_tokens(self.text),
            llm_calls=1,
        )

    def collect(self) -> Completion:
        """Drain what is left and return the whole reply as a `Completion`."""
        for _ in self:
            pass
        return Completion(
            text=self.text,
            usage=self.usage,
            model=self.model,
            finish_reason=self._end.finish_reason if self._end else None,
        )

    def close(self) -> None:
        """Stop receiving; releases the connection or the local model early."""
        self._done = True
        close_source = getattr(self._source, "close", None)
        if callable(close_source):
            close_source()
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def __enter__(self) -> CompletionStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class LLM(ABC):
    """A chat model. Subclasses implement `_complete` and declare their capabilities as class attributes."""

    #: The registry prefix this provider is known by (`openai`, `anthropic`, `local`, ...).
    name: ClassVar[str] = ""
    #: True when `schema=` constrains the output natively rather than by prompt alone.
    supports_json_schema: ClassVar[bool] = False

    model: str

    @overload
    def complete(
        self, messages: Messages, schema: JSONSchema | None = None, *, stream: Literal[False] = False
    ) -> Completion: ...

    @overload
    def complete(
        self, messages: Messages, schema: JSONSchema | None = None, *, stream: Literal[True]
    ) -> CompletionStream: ...

    @overload
    def complete(
        self, messages: Messages, schema: JSONSchema | None = None, *, stream: bool
    ) -> Completion | CompletionStream: ...

    def complete(
        self, messages: Messages, schema: JSONSchema | None = None, *, stream: bool = False
    ) -> Completion | CompletionStream:
        """Reply to `messages` (dicts with `role` and `content`).

        With `schema` (a JSON schema), the reply text is a JSON document meant to
        match it; callers still validate it. With `stream=True`, returns a
        `CompletionStream` instead of a `Completion`.
        """
        return self._complete(check_messages(messages), schema, stream)

    @abstractmethod
    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        """The one method a provider implements; `checked` has passed `check_messages`."""

    def close(self) -> None:
        """Release connections or a loaded model. The instance may not be used afterwards."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={getattr(self, 'model', '')!r})"


def check_messages(messages: object) -> Messages:
    """The messages as a list of plain dicts, or an InvalidInputError saying which one is wrong."""
    if not isinstance(messages, list) or not messages:
        raise InvalidInputError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts", field="messages"
        )
    checked: Messages = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidInputError(f"messages[{index}] is not a dict", field="messages")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidInputError(
                f"messages[{index}] has role {role!r}; use one of {sorted(_ROLES)}", field="messages"
            )
        if not isinstance(message.get("content"), str):
            raise InvalidInputError(f"messages[{index}] has no text 'content'", field="messages")
        checked.append(dict(message))
    return checked


def approx_tokens(text: str) -> int:
    """A rough token count (4 characters a token) for providers that report none."""
    return approx_tokens_from_chars(len(text))


def approx_tokens_from_chars(chars: int) -> int:
    return (chars + 3) // 4


def prompt_chars(messages: Messages) -> int:
    return sum(len(str(m.get("content", ""))) for m in messages)


def schema_instruction(schema: JSONSchema) -> str:
    """A system-prompt paragraph describing `schema`, for servers that cannot enforce one."""
    import json

    return (
        "Reply with one JSON object and nothing else (no prose, no code fences). "
        "It must match this JSON schema:\n" + json.dumps(schema, ensure_ascii=False, sort_keys=True)
    )


def with_system_instruction(messages: Messages, instruction: str) -> Messages:
    """`messages` with `instruction` appended to the first system message, or a new one in front."""
    out = [dict(m) for m in messages]
    for message in out:
        if message.get("role") == "system":
            message["content"] = f"{message['content']}\n\n{instruction}"
            return out
    return [{"role": "system", "content": instruction}, *out]
