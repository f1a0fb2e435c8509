"""Anthropic's Messages API over plain httpx.

The Messages API differs from OpenAI's in three ways this module absorbs:
system prompts travel in a top-level `system` field, turns must alternate
between user and assistant, and there is no JSON mode. Structured output uses
a single tool whose `input_schema` is the schema, with `tool_choice` forcing
the model to call it; the tool's input, dumped as JSON, is the reply text.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from retain.errors import ConfigError, ProviderError
from retain.llm._http import (
    RetryPolicy,
    Sleep,
    env_value,
    error_from_response,
    iter_sse,
    make_timeout,
    read_json,
    send_with_retry,
)
from retain.llm.base import (
    LLM,
    Completion,
    CompletionStream,
    JSONSchema,
    Messages,
    StreamEnd,
    prompt_chars,
)
from retain.models import Usage

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
_KEY_ENV = "ANTHROPIC_API_KEY"
_TOOL_NAME = "respond"
#: Error types Anthropic sends inside a stream that a later attempt may get past.
_RETRYABLE_STREAM_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Usage(_Wire):
    input_tokens: int = 0
    output_tokens: int = 0


class _Block(_Wire):
    type: str
    text: str | None = None
    name: str | None = None
    input: Any = None


class _Response(_Wire):
    model: str | None = None
    content: list[_Block]
    stop_reason: str | None = None
    usage: _Usage | None = None


class AnthropicLLM(LLM):
    """A Claude model behind Anthropic's `/v1/messages` endpoint."""

    name = "anthropic"
    supports_json_schema = True

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int = 4096,
        timeout: float | httpx.Timeout = 120.0,
        retry: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
        transport: httpx.BaseTransport | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        if not model:
            raise ConfigError("No Anthropic model given: use a spec such as anthropic:claude-3-5-haiku-latest")
        key = api_key or env_value(env, _KEY_ENV)
        if key is None:
            raise ConfigError(f"{_KEY_ENV} is not set: export it, or pass api_key=...")
        self.model = model
        self.base_url = (base_url or env_value(env, "ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        headers = {"x-api-key": key, "anthropic-version": API_VERSION}
        self._client = httpx.Client(headers=headers, timeout=make_timeout(timeout), transport=transport)

    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        tool_schema, wrapped = tool_input_schema(schema) if schema is not None else (None, False)
        body = self._body(checked, tool_schema, stream=stream)
        url = f"{self.base_url}/v1/messages"
        response = send_with_retry(
            self._client,
            lambda: self._client.build_request("POST", url, json=body),
            provider=self.name,
            policy=self._retry,
            sleep=self._sleep,
            stream=stream,
        )
        if not response.is_success:
            try:
                raise error_from_response(response, self.name, key_env=_KEY_ENV)
            finally:
                response.close()
        if stream:
            return CompletionStream(
                self._chunks(response, wrapped=wrapped), model=self.model, prompt_chars=prompt_chars(checked)
            )
        try:
            return self._parse(read_json(response, self.name), as_tool=tool_schema is not None, wrapped=wrapped)
        finally:
            response.close()

    def close(self) -> None:
        self._client.close()

    def _body(self, messages: Messages, tool_schema: JSONSchema | None, *, stream: bool) -> dict[str, Any]:
        system, turns = split_system(messages)
        body: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "messages": turns}
        if system:
            body["system"] = system
        if tool_schema is not None:
            body["tools"] = [
                {
                    "name": _TOOL_NAME,
                    "description": "Give the answer as this tool's input, which must match its schema.",
                    "input_schema": tool_schema,
                }
            ]
            body["tool_choice"] = {"type": "tool", "name": _TOOL_NAME}
            body["temperature"] = 0 if self.temperature is None else self.temperature
        elif self.temperature is not None:
            body["temperature"] = self.temperature
        if stream:
            body["stream"] = True
        return body

    def _parse(self, data: dict[str, Any], *, as_tool: bool, wrapped: bool) -> Completion:
        try:
            parsed = _Response.model_validate(data)
        except ValidationError as exc:
            raise ProviderError(f"{self.name} returned an unexpected body: {exc}", provider=self.name) from exc
        if as_tool:
            calls = [b for b in parsed.content if b.type == "tool_use" and b.name == _TOOL_NAME]
            if not calls:
                raise ProviderError(
                    f"{self.name} did not call the {_TOOL_NAME!r} tool (stop_reason={parsed.stop_reason})",
                    provider=self.name,
                )
            value = calls[0].input
            if wrapped and isinstance(value, dict):
                value = value.get("value")
            text = json.dumps(value, ensure_ascii=False)
        else:
            text = "".join(b.text or "" for b in parsed.content if b.type == "text")
        usage = parsed.usage or _Usage()
        return Completion(
            text=text,
            usage=Usage(prompt_tokens=usage.input_tokens, completion_tokens=usage.output_tokens, llm_calls=1),
            model=parsed.model or self.model,
            finish_reason=parsed.stop_reason,
        )

    def _chunks(self, response: httpx.Response, *, wrapped: bool) -> Iterator[str | StreamEnd]:
        input_tokens: int | None = None
        output_tokens: int | None = None
        model: str | None = None
        stop_reason: str | None = None
        json_parts: list[str] = []
        try:
            for event, data in iter_sse(response, self.name):
                try:
                    payload = json.loads(data)
                except json.JSONDecodeError as exc:
                    raise ProviderError(
                        f"{self.name} sent an unreadable stream event: {data[:200]!r}", provider=self.name
                    ) from exc
                kind = payload.get("type", event)
                if kind == "error":
                    error = payload.get("error") or {}
                    raise ProviderError(
                        f"{self.name} stream failed: {error.get('message') or error}",
                        provider=self.name,
                        retryable=error.get("type") in _RETRYABLE_STREAM_ERRORS,
                    )
                if kind == "message_start":
                    message = payload.get("message") or {}
                    model = message.get("model") or model
                    usage = message.get("usage") or {}
                    input_tokens = usage.get("input_tokens", input_tokens)
                    output_tokens = usage.get("output_tokens", output_tokens)
                elif kind == "content_block_delta":
                    delta = payload.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        yield delta["text"]
                    elif delta.get("type") == "input_json_delta" and delta.get("partial_json"):
                        if wrapped:
                            json_parts.append(delta["partial_json"])
                        else:
                            yield delta["partial_json"]
                elif kind == "message_delta":
                    stop_reason = (payload.get("delta") or {}).get("stop_reason") or stop_reason
                    usage = payload.get("usage") or {}
                    output_tokens = usage.get("output_tokens", output_tokens)
                    input_tokens = usage.get("input_tokens") or input_tokens
                elif kind == "message_stop":
                    break
            if json_parts:
                yield json.dumps(json.loads("".join(json_parts)).get("value"), ensure_ascii=False)
            reported = input_tokens is not None or output_tokens is not None
            yield StreamEnd(
                usage=Usage(prompt_tokens=input_tokens or 0, completion_tokens=output_tokens or 0, llm_calls=1)
                if reported
                else None,
                model=model,
                finish_reason=stop_reason,
            )
        finally:
            response.close()


def split_system(messages: Messages) -> tuple[str, list[dict[str, str]]]:
    """The system text, and the other turns merged so that user and assistant alternate."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    turns: list[dict[str, str]] = []
    for message in messages:
        if message["role"] == "system":
            continue
        role = "assistant" if message["role"] == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1] = {"role": role, "content": f"{turns[-1]['content']}\n\n{message['content']}"}
        else:
            turns.append({"role": role, "content": message["content"]})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": "(The conversation so far follows.)"})
    return system, turns


def tool_input_schema(schema: JSONSchema) -> tuple[JSONSchema, bool]:
    """A tool `input_schema` (which must be an object) for `schema`, and whether it had to be wrapped."""
    if schema.get("type") == "object":
        return schema, False
    return {"type": "object", "properties": {"value": schema}, "required": ["value"]}, True
