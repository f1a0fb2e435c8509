"""HTTP plumbing shared by the hosted providers: retries, error mapping, SSE.

Retry policy lives here and nowhere else. A request is retried when the failure
is one a later attempt can fix (a timeout, a dropped connection, HTTP 408, 409,
429 or 5xx), with exponential backoff that honours `Retry-After`. Anything else
comes back at once, so a bad key or a malformed request fails in one round trip.
`sleep` is injected so tests can assert the backoff without waiting for it.
"""

from __future__ import annotations

import email.utils
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from retain.errors import ConfigError, ProviderError

Sleep = Callable[[float], None]

#: Statuses a later attempt may get past: timeout, conflict, rate limit, server trouble.
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry. Delays grow by `multiplier` per attempt."""

    max_retries: int = 3
    initial_delay: float = 0.5
    multiplier: float = 2.0
    max_delay: float = 20.0
    #: A server asking for a longer wait than this gets it capped; the attempt still happens.
    max_retry_after: float = 60.0
    #: Up to this fraction is added at random so that many clients do not retry in lockstep.
    jitter: float = 0.1

    def delay(self, attempt: int, retry_after: float | None = None, rand: float | None = None) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
        if retry_after is not None:
            return max(min(retry_after, self.max_retry_after), 0.0)
        backoff = min(self.max_delay, self.initial_delay * self.multiplier**attempt)
        return backoff * (1.0 + self.jitter * (random.random() if rand is None else rand))


def parse_retry_after(headers: httpx.Headers, now: datetime | None = None) -> float | None:
    """Seconds a server asked us to wait, from `retry-after-ms` or `Retry-After`, if any."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - (now or datetime.now(UTC))).total_seconds(), 0.0)


def error_message(response: httpx.Response) -> str:
    """The server's own explanation from an error body, in the shapes OpenAI and Anthropic use."""
    try:
        body: Any = json.loads(response.read())
    except httpx.StreamError:
        return response.reason_phrase
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            message = error.get("message") or error.get("type")
            if message:
                return str(message)[:500]
        elif isinstance(error, str):
            return error[:500]
        if "message" in body:
            return str(body["message"])[:500]
    return json.dumps(body)[:500]


def error_from_response(response: httpx.Response, provider: str, *, key_env: str) -> ProviderError:
    """A ProviderError for a failed response, with a fix where there is an obvious one."""
    status = response.status_code
    message = error_message(response)
    if status in (401, 403):
        detail = f"{provider} rejected the credentials (HTTP {status}): {message}. Check {key_env}."
    elif status == 404:
        detail = f"{provider} has no such model or endpoint (HTTP 404): {message}. Check the model name and base URL."
    else:
        detail = f"{provider} answered HTTP {status}: {message}"
    return ProviderError(detail, provider=provider, retryable=status in RETRYABLE_STATUS)


def send_with_retry(
    client: httpx.Client,
    build_request: Callable[[], httpx.Request],
    *,
    provider: str,
    policy: RetryPolicy,
    sleep: Sleep = time.sleep,
    stream: bool = False,
) -> httpx.Response:
    """Send a request, retrying transient failures; return the first final response.

    A final response is a success or a non-retryable error: the caller decides
    what an error means (a 400 may trigger a fallback). When retries run out this
    raises a retryable ProviderError, so a queued job knows to try again later.
    """
    failure = ""
    for attempt in range(policy.max_retries + 1):
        retry_after: float | None = None
        try:
            response = client.send(build_request(), stream=stream)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise ConfigError(f"{provider} base URL is not usable: {exc}") from exc
        except httpx.TimeoutException as exc:
            failure = f"timed out ({type(exc).__name__})"
        except httpx.TransportError as exc:
            failure = f"connection failed ({type(exc).__name__}: {exc})"
        else:
            if response.status_code not in RETRYABLE_STATUS:
                return response
            failure = f"HTTP {response.status_code}: {error_message(response)}"
            retry_after = parse_retry_after(response.headers)
            response.close()
        if attempt == policy.max_retries:
            break
        sleep(policy.delay(attempt, retry_after))
    raise ProviderError(
        f"{provider} failed after {policy.max_retries + 1} attempts; last error: {failure}",
        provider=provider,
        retryable=True,
    )


def read_json(response: httpx.Response, provider: str) -> dict[str, Any]:
    """A success body as a dict, or a retryable ProviderError if it is not JSON."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProviderError(
            f"{provider} returned a body that is not JSON: {response.text[:200]!r}", provider=provider
        ) from exc
    if not isinstance(body, dict):
        raise ProviderError(f"{provider} returned JSON that is not an object", provider=provider)
    return body


def iter_sse(response: httpx.Response, provider: str) -> Iterator[tuple[str, str]]:
    """Server-sent events as (event, data) pairs; a broken stream becomes a retryable ProviderError."""
    event = ""
    data: list[str] = []
    try:
        for line in response.iter_lines():
            if not line:
                if data:
                    yield event or "message", "\n".join(data)
                event, data = "", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if data:
            yield event or "message", "\n".join(data)
    except (httpx.TimeoutException, httpx.TransportError) as exc:
        raise ProviderError(
            f"{provider} stream broke off ({type(exc).__name__}: {exc})", provider=provider, retryable=True
        ) from exc


def env_value(env: Mapping[str, str], name: str) -> str | None:
    """A non-blank environment value, stripped."""
    value = env.get(name, "").strip()
    return value or None


def make_timeout(timeout: float | httpx.Timeout) -> httpx.Timeout:
    """A timeout whose connect phase fails fast even when reads may be slow (long generations)."""
    if isinstance(timeout, httpx.Timeout):
        return timeout
    return httpx.Timeout(timeout, connect=min(timeout, 10.0))
