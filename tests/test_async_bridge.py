from __future__ import annotations

import asyncio
import threading

import pytest

from retain.async_bridge import await_, bridged, offload, run_bridged


def test_bridged_code_awaits_on_the_loop_and_interleaves_with_other_coroutines() -> None:
    order: list[str] = []

    def sync_code(name: str) -> str:
        assert bridged()
        order.append(f"{name} start")
        await_(asyncio.sleep(0.05))
        order.append(f"{name} end")
        return name.upper()

    async def run() -> list[str]:
        return list(await asyncio.gather(run_bridged(sync_code, "a"), run_bridged(sync_code, "b")))

    assert asyncio.run(run()) == ["A", "B"]
    assert order == ["a start", "b start", "a end", "b end"]  # both waited at once, on one thread


def test_errors_reach_the_bridged_code_and_the_caller() -> None:
    async def fail() -> None:
        raise ValueError("from the loop")

    def sync_code() -> str:
        try:
            await_(fail())
        except ValueError as exc:
            raise KeyError(str(exc)) from exc
        return "unreachable"

    with pytest.raises(KeyError, match="from the loop"):
        asyncio.run(run_bridged(sync_code))


def test_offload_uses_a_thread_only_inside_a_bridge() -> None:
    main = threading.get_ident()
    assert offload(threading.get_ident) == main
    assert asyncio.run(run_bridged(offload, threading.get_ident)) != main


def test_await_outside_a_bridge_is_refused() -> None:
    assert not bridged()
    with pytest.raises(RuntimeError, match="run_bridged"):
        await_(asyncio.sleep(0))
