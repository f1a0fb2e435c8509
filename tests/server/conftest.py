"""A real uvicorn server on 127.0.0.1, serving the app over a fresh SQLite store, per test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from retain import Memory, Settings
from retain.keys import Keys
from retain.llm.base import LLM
from retain.server import create_app
from retain.testing import HashEmbedder, ScriptedLLM

SETTINGS = Settings(track_access=False, job_backoff_seconds=0.0, in_process_worker=False)


@dataclass
class Live:
    url: str
    memory: Memory
    llm: ScriptedLLM | None
    chat_llm: LLM | None
    admin: str  # an admin key of tenant "acme"
    acme: str  # a plain key of tenant "acme"
    globex: str  # a plain key of tenant "globex"

    def client(self, key: str | None) -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


class Running:
    """uvicorn in a thread, with the socket bound before start so the port is known and free."""

    def __init__(self, app: Any) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


StartServer = Callable[..., Live]


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store the servers use: SQLite unless a module parametrises this (indirectly) with "postgres"."""
    return str(getattr(request, "param", "sqlite"))


BOTH_BACKENDS = pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def start_server(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[StartServer]:
    running: list[tuple[Running, Memory]] = []

    def store_url() -> str:
        if backend == "postgres":
            return str(request.getfixturevalue("new_postgres_database")())
        return str(tmp_path / f"server{len(running)}.db")

    def start(
        *,
        llm: ScriptedLLM | None = None,
        chat_llm: LLM | None = None,
        auth: bool = True,
        settings: Settings = SETTINGS,
        **overrides: Any,
    ) -> Live:
        settings = replace(settings, **overrides)
        memory = Memory(store_url(), HashEmbedder(), llm=llm, settings=settings)
        keys = Keys(memory.store)
        app = create_app(settings, memory=memory, chat_llm=chat_llm, auth=auth)
        server = Running(app)
        running.append((server, memory))
        return Live(
            url=f"http://127.0.0.1:{server.port}",
            memory=memory,
            llm=llm,
            chat_llm=chat_llm,
            admin=keys.create("acme", name="admin", admin=True)[1],
            acme=keys.create("acme")[1],
            globex=keys.create("globex")[1],
        )

    yield start
    for server, memory in running:
        server.stop()
        memory.close()


@pytest.fixture
def live(start_server: StartServer) -> Live:
    """A server whose memory and chat share one scripted LLM."""
    return start_server(llm=ScriptedLLM())
