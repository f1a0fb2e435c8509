"""Canned HTTP replies for the provider tests, served through `httpx.MockTransport`."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import httpx


class Sleeps(list[float]):
    """An injectable `sleep` that records the delays instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Server:
    """A scripted HTTP server for `httpx.MockTransport`: replies in order, records requests."""

    def __init__(self, replies: Iterable[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError(f"unexpected request {len(self.requests)}: {request.method} {request.url}")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        if callable(reply) and not isinstance(reply, httpx.Response):
            return reply(request)
        return reply

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def sse(*events: dict[str, Any] | str, named: bool = False) -> httpx.Response:
    """A text/event-stream response. Dicts are JSON data; with `named`, each gets `event: <type>`."""
    lines: list[str] = []
    for event in events:
        if isinstance(event, str):
            lines.append(f"data: {event}\n\n")
        elif named:
            lines.append(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
        else:
            lines.append(f"data: {json.dumps(event)}\n\n")
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content="".join(lines).encode())
