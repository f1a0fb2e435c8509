"""The PostgreSQL store's native async connections, for `AsyncMemory`.

`PostgresStore` keeps two pools: psycopg's `ConnectionPool` for sync callers (the API's
thread pool, workers, `Memory`) and an `AsyncConnectionPool` for bridged callers
(`AsyncMemory`, see `retain.async_bridge`). `BridgedPool` hands out `BridgedConnection`s:
the same `execute` / `cursor` / `fetchall` surface as a sync psycopg connection, with each
round trip awaited on the event loop through `await_`. So every store method is written
once and runs natively async when an `AsyncMemory` calls it.

The async pool is created on first bridged use and bound to that event loop (psycopg's
async pool cannot move between loops); close it with `await AsyncMemory.close()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

import psycopg
from psycopg_pool import AsyncConnectionPool

from ..async_bridge import at_call_exit, await_, bridged, call_local
from ..errors import StoreError

Row = tuple[Any, ...]
#: Rows a bridged server-side cursor fetches per round trip while it is iterated.
FETCH_BATCH = 500


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def execute(self, query: str, params: Sequence[Any] | None = ..., /) -> Cursor: ...
    def executemany(self, query: str, params_seq: Iterable[Sequence[Any]], /) -> None: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...
    def __iter__(self) -> Iterator[Row]: ...
    def __enter__(self) -> Cursor: ...
    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None: ...


class Connection(Protocol):
    """What the store's methods use of a connection; sync psycopg and bridged ones alike."""

    @property
    def broken(self) -> bool: ...

    def execute(self, query: str, params: Sequence[Any] | None = ..., /, *, binary: bool = ...) -> Cursor: ...
    def cursor(self, name: str = ...) -> Cursor: ...


class Pool(Protocol):
    @property
    def max_size(self) -> int: ...

    def getconn(self) -> Any: ...
    def putconn(self, conn: Any) -> None: ...


class BridgedCursor:
    def __init__(self, cursor: psycopg.AsyncCursor[Row] | psycopg.AsyncServerCursor[Row]) -> None:
        self._cursor = cursor

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    def execute(self, query: str, params: Sequence[Any] | None = None, /) -> BridgedCursor:
        await_(self._cursor.execute(query, params))
        return self

    def executemany(self, query: str, params_seq: Iterable[Sequence[Any]], /) -> None:
        await_(self._cursor.executemany(query, params_seq))

    def fetchone(self) -> Row | None:
        return await_(self._cursor.fetchone())

    def fetchall(self) -> list[Row]:
        return await_(self._cursor.fetchall())

    def __iter__(self) -> Iterator[Row]:
        while rows := await_(self._cursor.fetchmany(FETCH_BATCH)):
            yield from rows

    def __enter__(self) -> BridgedCursor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: TracebackType | None
    ) -> None:
        await_(self._cursor.close())


class BridgedConnection:
    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self.raw = conn
        self.in_use = False

    @property
    def broken(self) -> bool:
        return self.raw.broken

    def execute(self, query: str, params: Sequence[Any] | None = None, /, *, binary: bool = False) -> BridgedCursor:
        return BridgedCursor(await_(self.raw.execute(query, params, binary=binary)))

    def cursor(self, name: str = "") -> BridgedCursor:
        return BridgedCursor(self.raw.cursor(name=name) if name else self.raw.cursor())


class BridgedPool:
    """An `AsyncConnectionPool` driven from bridged sync code; opened on first use."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int,
        max_size: int,
        timeout: float,
        connect_timeout: float,
        configure: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
    ) -> None:
        self.max_size = max_size
        self._dsn = dsn
        self._options: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "timeout": timeout,
            "configure": configure,
            "kwargs": {"connect_timeout": connect_timeout, "autocommit": True},
            "name": "retain-async",
        }
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Row]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _open(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Row]]:
        loop = asyncio.get_running_loop()
        if self._pool is None:
            self._pool = AsyncConnectionPool(self._dsn, open=False, **self._options)
            self._loop = loop
        elif loop is not self._loop:
            raise StoreError(
                "This store's async connections belong to another event loop: use one AsyncMemory per event loop."
            )
        if self._pool.closed:
            await_(self._pool.open())  # idempotent: concurrent first calls open it once
        return self._pool

    def getconn(self) -> BridgedConnection:
        """A connection for one statement or transaction.

        One `AsyncMemory` call runs several statements; the first connection it returns is kept
        for its later ones (a pool round trip costs more than the query) and given back when the
        call ends. A statement issued while that connection is busy (inside a transaction) gets
        a connection of its own, exactly as the sync pool would hand out.
        """
        held: BridgedConnection | None = call_local().get(self)
        if held is not None and not held.in_use and not held.broken:
            conn = held
        else:
            conn = BridgedConnection(await_(self._open().getconn()))
        conn.in_use = True
        return conn

    def putconn(self, conn: BridgedConnection) -> None:
        conn.in_use = False
        local = call_local()
        held = local.get(self)
        idle = conn.raw.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if conn.broken or not idle or (held is not None and held is not conn):
            if held is conn:
                del local[self]
            await_(self._open().putconn(conn.raw))  # the pool discards a broken one, resets a dirty one
        elif held is None:
            local[self] = conn
            pool = self._open()

            async def give_back() -> None:
                if local.get(self) is conn:
                    await pool.putconn(conn.raw)

            at_call_exit(give_back)

    def stats(self) -> dict[str, int]:
        """psycopg's pool counters (`requests_num`, `connections_num`, ...); empty before first use."""
        return self._pool.get_stats() if self._pool is not None else {}

    def close(self) -> None:
        """Close the async pool; from bridged code (`await AsyncMemory.close()`) only."""
        if self._pool is not None and not self._pool.closed and bridged():
            await_(self._pool.close())
