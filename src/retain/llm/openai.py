"""OpenAI-compatible chat completions over plain httpx.

One client covers OpenAI and every server that speaks its `/chat/completions`
dialect: Groq, Together, vLLM, Ollama, LM Studio, llama.cpp's server. Using
httpx directly (not the `openai` SDK) keeps the dependency list short and lets
tests swap the transport for an `httpx.MockTransport`.

Structured output asks for `response_format: json_schema`, strict whenever the
schema allows it (every object closed, every property required). Many
compatible servers reject that with a 400; the client then retries once with
`json_object` plus the schema spelled out in the system prompt, and remembers
that the server needs the fallback.
"""

from __future__ import annotations

import os
import re
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
    approx_tokens,
    approx_tokens_from_chars,
    prompt_chars,
    schema_instruction,
    with_system_instruction,
)
from retain.models import Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_KEY_ENV = "OPENAI_API_KEY"
_SCHEMA_REJECTED = frozenset({400, 422})


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Usage(_Wire):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Message(_Wire):
    content: str | None = None
    refusal: str | None = None


class _Choice(_Wire):
    message: _Message = _Message()
    finish_reason: str | None = None


class _Response(_Wire):
    model: str | None = None
    choices: list[_Choice]
    usage: _Usage | None = None


class _Delta(_Wire):
    content: str | None = None


class _ChunkChoice(_Wire):
    delta: _Delta = _Delta()
    finish_reason: str | None = None


class _Chunk(_Wire):
    model: str | None = None
    choices: list[_ChunkChoice] = []
    usage: _Usage | None = None
    error: dict[str, Any] | None = None


class OpenAILLM(LLM):
    """A chat model behind an OpenAI-compatible `/chat/completions` endpoint."""

    name = "openai"
    supports_json_schema = True

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float | httpx.Timeout = 120.0,
        retry: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
        transport: httpx.BaseTransport | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        if not model:
            raise ConfigError("No OpenAI model given: use a spec such as openai:gpt-4o-mini")
        key = api_key or env_value(env, _KEY_ENV)
        base = base_url or env_value(env, "OPENAI_BASE_URL")
        if key is None and base is None:
            raise ConfigError(
                f"{_KEY_ENV} is not set: export it, or point OPENAI_BASE_URL at a local server "
                "such as Ollama (OPENAI_BASE_URL=http://localhost:11434/v1)"
            )
        self.model = model
        self.base_url = (base or DEFAULT_BASE_URL).rstrip("/")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._json_schema_ok = True
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(headers=headers, timeout=make_timeout(timeout), transport=transport)

    def _complete(self, checked: Messages, schema: JSONSchema | None, stream: bool) -> Completion | CompletionStream:
        native = schema is not None and self._json_schema_ok
        response = self._send(self._body(checked, schema, native=native, stream=stream), stream=stream)
        if native and response.status_code in _SCHEMA_REJECTED:
            response.close()
            response = self._send(self._body(checked, schema, native=False, stream=stream), stream=stream)
            if response.is_success:
                self._json_schema_ok = False
        if not response.is_success:
            try:
                raise error_from_response(response, self.name, key_env=_KEY_ENV)
            finally:
                response.close()
        if stream:
            return CompletionStream(self._chunks(response), model=self.model, prompt_chars=prompt_chars(checked))
        try:
            return self._parse(read_json(response, self.name), checked)
        finally:
            response.close()

    def close(self) -> None:
        self._client.close()

    def _send(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        url = f"{self.base_url}/chat/completions"
        return send_with_retry(
            self._client,
            lambda: self._client.build_request("POST", url, json=body),
            provider=self.name,
            policy=self._retry,
            sleep=self._sleep,
            stream=stream,
        )

    def _body(self, messages: Messages, schema: JSONSchema | None, *, native: bool, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        if schema is not None and native:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema_name(schema), "schema": schema, "strict": is_strict(schema)},
            }
        elif schema is not None:
            body["messages"] = with_system_instruction(messages, schema_instruction(schema))
            body["response_format"] = {"type": "json_object"}
        if schema is not None:
            body["temperature"] = 0 if self.temperature is None else self.temperature
        elif self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _parse(self, data: dict[str, Any], messages: Messages) -> Completion:
        try:
            parsed = _Response.model_validate(data)
        except ValidationError as exc:
            raise ProviderError(f"{self.name} returned an unexpected body: {exc}", provider=self.name) from exc
        if not parsed.choices:
            raise ProviderError(f"{self.name} returned no choices", provider=self.name)
        choice = parsed.choices[0]
        if choice.message.content is None:
            reason = choice.message.refusal or f"finish_reason={choice.finish_reason}"
            raise ProviderError(f"{self.name} returned no text ({reason})", provider=self.name, retryable=False)
        text = choice.message.content
        if parsed.usage is not None:
            usage = Usage(
                prompt_tokens=parsed.usage.prompt_tokens,
                completion_tokens=parsed.usage.completion_tokens,
                llm_calls=1,
            )
        else:
            usage = Usage(
                prompt_tokens=approx_tokens_from_chars(prompt_chars(messages)),
                completion_tokens=approx_tokens(text),
                llm_calls=1,
            )
        return Completion(text=text, usage=usage, model=parsed.model or self.model, finish_reason=choice.finish_reason)

    def _chunks(self, response: httpx.Response) -> Iterator[str | StreamEnd]:
        usage: Usage | None = None
        model: str | None = None
        finish: str | None = None
        try:
            for _event, data in iter_sse(response, self.name):
                if data.strip() == "[DONE]":
                    break
                try:
                    chunk = _Chunk.model_validate_json(data)
                except ValidationError as exc:
                    raise ProviderError(
                        f"{self.name} sent an unreadable stream chunk: {data[:200]!r}", provider=self.name
                    ) from exc
                if chunk.error is not None:
                    message = chunk.error.get("message") or chunk.error
                    raise ProviderError(f"{self.name} stream failed: {message}", provider=self.name)
                model = chunk.model or model
                if chunk.usage is not None:
                    usage = Usage(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                        llm_calls=1,
                    )
                for choice in chunk.choices:
                    finish = choice.finish_reason or finish
                    if choice.delta.content:
                        yield choice.delta.content
            yield StreamEnd(usage=usage, model=model, finish_reason=finish)
        finally:
            response.close()


def schema_name(schema: JSONSchema) -> str:
    """A name OpenAI accepts (`^[a-zA-Z0-9_-]{1,64}$`), from the schema's title if it has one."""
    title = str(schema.get("title") or "response")
    return re.sub(r"[^a-zA-Z0-9_-]", "_", title)[:64] or "response"


def is_strict(schema: Any) -> bool:
    """Whether OpenAI's strict mode accepts `schema`: every object closed and all its properties required.

    Strict mode guarantees the shape but rejects other schemas with a 400; a
    non-strict schema is still sent as json_schema, which OpenAI then follows
    on a best-effort basis, rather than being downgraded to json_object.
    """
    if not isinstance(schema, dict):
        return True
    properties = schema.get("properties")
    if schema.get("type") == "object" or isinstance(properties, dict):
        properties = properties if isinstance(properties, dict) else {}
        if schema.get("additionalProperties") is not False:
            return False
        if set(schema.get("required", [])) != set(properties):
            return False
    children: list[Any] = list((properties or {}).values()) if isinstance(properties, dict) else []
    for key in ("items", "not"):
        children.append(schema.get(key))
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        children.extend(schema.get(key) or [])
    for key in ("$defs", "definitions"):
        children.extend((schema.get(key) or {}).values())
    return all(is_strict(child) for child in children)
