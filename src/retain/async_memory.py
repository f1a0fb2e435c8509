"""`AsyncMemory`: the same API as `Memory`, awaitable.

Each method is derived from `Memory`'s by `_awaitable`, so the pipeline is
written once and signatures stay identical (a parity test checks them):

- on PostgreSQL (a store with `native_async`) the method runs on the event loop
  through `retain.async_bridge`: every query is awaited on psycopg's async pool,
  and only embedding and LLM calls go to worker threads;
- on SQLite, which has no async I/O, it runs in a worker thread (SQLite and
  ONNX release the GIL).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from .async_bridge import run_async
from .memory import Memory

P = ParamSpec("P")
R = TypeVar("R")


def _awaitable(method: Callable[Concatenate[Memory, P], R]) -> Callable[Concatenate[AsyncMemory, P], Awaitable[R]]:
    async def run(self: AsyncMemory, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await run_async(self.sync.store.native_async, method, self.sync, *args, **kwargs)

    functools.update_wrapper(run, method)
    return run


class AsyncMemory:
    """Async twin of `Memory`; `sync` is the underlying `Memory`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sync = kwargs.pop("memory", None) or Memory(*args, **kwargs)

    @classmethod
    def wrap(cls, memory: Memory) -> AsyncMemory:
        return cls(memory=memory)

    add = _awaitable(Memory.add)
    search = _awaitable(Memory.search)
    get = _awaitable(Memory.get)
    get_all = _awaitable(Memory.get_all)
    update = _awaitable(Memory.update)
    delete = _awaitable(Memory.delete)
    delete_all = _awaitable(Memory.delete_all)
    history = _awaitable(Memory.history)
    sources = _awaitable(Memory.sources)
    extract = _awaitable(Memory.extract)
    messages = _awaitable(Memory.messages)
    add_message = _awaitable(Memory.add_message)
    clear_messages = _awaitable(Memory.clear_messages)
    jobs = _awaitable(Memory.jobs)
    retry_job = _awaitable(Memory.retry_job)
    run_jobs = _awaitable(Memory.run_jobs)
    process_job = _awaitable(Memory.process_job)
    close = _awaitable(Memory.close)

    def sessions(self, run_id: str, *, user_id: str | None = None, agent_id: str | None = None) -> Any:
        """The session object; use its `aget_messages`, `aadd_message` and `aclear`."""
        return self.sync.sessions(run_id, user_id=user_id, agent_id=agent_id)

    async def __aenter__(self) -> AsyncMemory:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
