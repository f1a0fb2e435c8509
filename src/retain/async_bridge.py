"""Run the synchronous core on the event loop while its database I/O is awaited natively.

`AsyncMemory` over a store with native async I/O (PostgreSQL) calls `run_bridged`: the
`Memory` method runs in a greenlet on the event-loop thread, and every database round trip
inside it (`await_`) suspends that greenlet while the event loop awaits psycopg's async
connection, serving other coroutines meanwhile. This is the pattern SQLAlchemy's asyncio
extension uses: one implementation of the pipeline, two ways to wait on the network.

Blocking work that is not database I/O (embedding, LLM calls) goes through `offload`, which
calls it directly outside a bridge and in a worker thread inside one, so a bridged call never
stalls the event loop for longer than its own CPU-light bookkeeping.

Rule for code that may run bridged: never hold a threading lock across `await_` or `offload`.
Another greenlet on the same thread could then block on that lock and stall the loop.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar, cast

import greenlet

P = ParamSpec("P")
T = TypeVar("T")


class _Bridge(greenlet.greenlet):  # type: ignore[misc]  # greenlet ships no type information
    """A greenlet running sync code for a coroutine; `driver` is the coroutine's greenlet."""

    def __init__(self, fn: Callable[..., Any], driver: greenlet.greenlet) -> None:
        super().__init__(fn, driver)
        self.driver = driver
        self.local: dict[object, Any] = {}
        self.at_exit: list[Callable[[], Awaitable[None]]] = []


def _current() -> _Bridge:
    current = greenlet.getcurrent()
    if not isinstance(current, _Bridge):
        raise RuntimeError("only valid inside run_bridged()")
    return current


def bridged() -> bool:
    """True inside `run_bridged`: I/O must go through `await_`, not block."""
    return isinstance(greenlet.getcurrent(), _Bridge)


def await_(awaitable: Awaitable[T]) -> T:
    """Wait for `awaitable` from bridged sync code: the event loop runs other work meanwhile."""
    if not bridged():
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # it will never run; spare the "never awaited" warning
        raise RuntimeError("await_() is only valid inside run_bridged()")
    return cast(T, _current().driver.switch(awaitable))


def call_local() -> dict[object, Any]:
    """State that lives as long as the current `run_bridged` call (e.g. a connection it holds)."""
    return _current().local


def at_call_exit(cleanup: Callable[[], Awaitable[None]]) -> None:
    """Await `cleanup()` when the current `run_bridged` call ends, however it ends."""
    _current().at_exit.append(cleanup)


async def run_bridged(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run `fn(*args, **kwargs)` on this event loop; each `await_` inside it is awaited here."""
    bridge = _Bridge(fn, greenlet.getcurrent())
    try:
        result: Any = bridge.switch(*args, **kwargs)
        while not bridge.dead:
            try:
                value = await result
            except BaseException:  # deliver the failure (a cancellation included) where it was awaited
                result = bridge.throw(*sys.exc_info())
            else:
                result = bridge.switch(value)
        return cast(T, result)
    finally:
        for cleanup in reversed(bridge.at_exit):
            await cleanup()


async def run_async(native: bool, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Await sync `fn`: bridged on this loop when its store has `native` async I/O, else in a thread."""
    if native:
        return await run_bridged(fn, *args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


def offload(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Call blocking `fn`: directly, or from bridged code in a worker thread."""
    if bridged():
        return await_(asyncio.to_thread(fn, *args, **kwargs))
    return fn(*args, **kwargs)
