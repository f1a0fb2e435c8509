"""Adversarial isolation: random interleaved operations over many scopes and two tenants.

Every memory's text is built from the same small vocabulary, so every query
matches memories in every scope; any read that leaks across a scope boundary
fails the property.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retain import Memory, NotFoundError, Settings
from retain.store import Store
from retain.testing import HashEmbedder

TENANTS = ["t1", "t2"]
USERS = ["u1", "u2", "u3", None]
AGENTS = ["a1", "a2", None]
RUNS = ["r1", None]
WORDS = ["tea", "berlin", "dog", "order", "peanut", "secret", "movie", "job"]


@dataclass
class Known:
    tenant: str
    user: str | None
    agent: str | None
    run: str | None
    current: bool = True


scopes = st.tuples(st.sampled_from(USERS), st.sampled_from(AGENTS), st.sampled_from(RUNS)).filter(
    lambda s: any(v is not None for v in s)
)
texts = st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join)
ops = st.one_of(
    st.tuples(st.just("add"), st.sampled_from(TENANTS), scopes, texts),
    st.tuples(st.just("search"), st.sampled_from(TENANTS), scopes, texts),
    st.tuples(st.just("get_all"), st.sampled_from(TENANTS), scopes, st.booleans()),
    st.tuples(st.just("update"), st.sampled_from(TENANTS), st.integers(0, 50), texts),
    st.tuples(st.just("history"), st.sampled_from(TENANTS), st.integers(0, 50), st.none()),
    st.tuples(st.just("get"), st.sampled_from(TENANTS), st.integers(0, 50), st.none()),
    st.tuples(st.just("delete"), st.sampled_from(TENANTS), st.integers(0, 50), st.none()),
    st.tuples(st.just("delete_all"), st.sampled_from(TENANTS), scopes, st.none()),
)


def _in_scope(known: Known, tenant: str, scope: tuple[str | None, ...]) -> bool:
    user, agent, run = scope
    return (
        known.tenant == tenant
        and (user is None or known.user == user)
        and (agent is None or known.agent == agent)
        and (run is None or known.run == run)
    )


def _kw(scope: tuple[str | None, ...]) -> dict[str, Any]:
    return {"user_id": scope[0], "agent_id": scope[1], "run_id": scope[2]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=5, max_size=40))
def test_no_read_crosses_a_scope(operations: list[tuple[Any, ...]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _check_isolation(str(Path(tmp) / "iso.db"), operations)


@pytest.mark.postgres
def test_no_read_crosses_a_scope_on_postgres(new_postgres_database: Callable[[], str]) -> None:
    from retain.store.postgres import PostgresStore

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(st.lists(ops, min_size=5, max_size=40))
    def run(operations: list[tuple[Any, ...]]) -> None:
        _check_isolation(PostgresStore(new_postgres_database(), dimensions=32, embedder_id="hash:32"), operations)

    run()


def _check_isolation(store: Store | str, operations: list[tuple[Any, ...]]) -> None:
    base = Memory(store, HashEmbedder(32), settings=Settings(track_access=False))
    views = {t: base.for_tenant(t) for t in TENANTS}
    known: dict[str, Known] = {}
    ids: list[str] = []

    def check_records(tenant: str, scope: tuple[str | None, ...], returned: list[Any]) -> None:
        for rec in returned:
            assert rec.id in known, "returned an id that was purged or never written"
            assert _in_scope(known[rec.id], tenant, scope), f"leak: {known[rec.id]} for {tenant} {scope}"
            assert (rec.user_id, rec.agent_id, rec.run_id) == (
                known[rec.id].user,
                known[rec.id].agent,
                known[rec.id].run,
            )

    for op, tenant, target, arg in operations:
        memory = views[tenant]
        if op == "add":
            for event in memory.add(arg, infer=False, **_kw(target)).results:
                known[event.id] = Known(tenant, *target)
                ids.append(event.id)
        elif op == "search":
            hits = memory.search(arg, limit=100, **_kw(target)).results
            check_records(tenant, target, hits)
            assert all(known[h.id].current for h in hits)
            expected = {i for i, k in known.items() if k.current and _in_scope(k, tenant, target)}
            assert {h.id for h in hits} <= expected
        elif op == "get_all":
            page = memory.get_all(include_superseded=arg, limit=1000, **_kw(target)).results
            check_records(tenant, target, page)
            expected = {i for i, k in known.items() if _in_scope(k, tenant, target) and (arg or k.current)}
            assert {r.id for r in page} == expected
        elif op == "delete_all":
            memory.delete_all(**_kw(target))
            for i in [i for i, k in known.items() if _in_scope(k, tenant, target)]:
                del known[i]
            assert memory.get_all(limit=1000, include_superseded=True, **_kw(target)).results == []
        elif ids:
            id = ids[target % len(ids)]
            mine = id in known and known[id].tenant == tenant
            if op == "get":
                if mine:
                    assert memory.get(id).id == id
                else:
                    _expect_not_found(memory.get, id)
            elif op == "history":
                if mine:
                    for entry in memory.history(id):
                        assert entry.memory_id in known and known[entry.memory_id].tenant == tenant
                else:
                    _expect_not_found(memory.history, id)
            elif op == "update":
                if mine and known[id].current:
                    new = memory.update(id, text=arg)
                    known[id].current = False
                    k = known[id]
                    known[new.id] = Known(k.tenant, k.user, k.agent, k.run)
                    ids.append(new.id)
                elif not mine:
                    _expect_not_found(memory.update, id, arg)
            elif op == "delete":
                if mine:
                    memory.delete(id)
                    for other in list(known):
                        if known[other].tenant == tenant and not base.store.get(tenant, [other]):
                            del known[other]
                else:
                    _expect_not_found(memory.delete, id)
    # Whatever survived is exactly what the model says survived, in every tenant.
    for tenant in TENANTS:
        for user in USERS[:-1]:
            page = views[tenant].get_all(user_id=user, include_superseded=True, limit=1000).results
            assert {r.id for r in page} == {i for i, k in known.items() if k.tenant == tenant and k.user == user}
    assert base.store.check_integrity() == []
    base.close()


def _expect_not_found(call: Any, *args: Any) -> None:
    try:
        call(*args)
    except NotFoundError:
        return
    raise AssertionError("expected NotFoundError for another tenant's id")
