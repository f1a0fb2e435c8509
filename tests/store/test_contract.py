"""The store contract, run against every backend through the `store` fixture.

A backend is done when this passes. Tests talk to the store only through the
`Store` interface, with small hand-made vectors so the expected neighbours are
known exactly.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from retain import Memory, Settings
from retain.errors import StoreError
from retain.filters import parse_filters
from retain.models import Scope
from retain.store import keyword_index, vector_index
from retain.store.base import (
    ApiKey,
    Invalidate,
    NewEvent,
    NewJob,
    NewMemory,
    NewMessage,
    Origin,
    Store,
    Supersede,
    Vector,
    WriteBatch,
)
from retain.store.sqlite import SQLiteStore
from retain.testing import HashEmbedder
from retain.timeutil import now_micros

DIM = 8
StoreFactory = Callable[[], Store]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one backing database (several instances stand in for several processes)."""
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "contract.db"

        def open_one() -> Store:
            opened.append(SQLiteStore(path, dimensions=DIM, embedder_id="hash:8"))
            return opened[-1]

    else:
        from retain.store.postgres import PostgresStore

        dsn = request.getfixturevalue("postgres_dsn")

        def open_one() -> Store:
            opened.append(PostgresStore(dsn, dimensions=DIM, embedder_id="hash:8", pool_max=4))
            return opened[-1]

    yield open_one
    for s in opened:
        s.close()


@pytest.fixture
def store(make_store: StoreFactory) -> Store:
    return make_store()


# -- helpers ----------------------------------------------------------------------------------


def unit(*values: float) -> Vector:
    v = np.zeros(DIM, dtype=np.float32)
    v[: len(values)] = values
    return (v / np.linalg.norm(v)).astype(np.float32)


def scope(user: str | None = "u1", agent: str | None = None, run: str | None = None, tenant: str = "t1") -> Scope:
    return Scope(tenant_id=tenant, user_id=user, agent_id=agent, run_id=run)


def new_memory(
    id: str,
    text: str,
    vector: Vector,
    s: Scope | None = None,
    *,
    lineage: str | None = None,
    dedup: bool = False,
    metadata: dict[str, Any] | None = None,
    category: str | None = None,
    valid_from: int = 1,
    expires_at: int | None = None,
) -> NewMemory:
    return NewMemory(
        id=id,
        lineage_id=lineage or id,
        scope=s or scope(),
        text=text,
        category=category,
        metadata=metadata or {},
        hash=f"hash:{text.lower()}",
        valid_from=valid_from,
        source_message_ids=[f"msg-{id}"],
        embedding=vector,
        expires_at=expires_at,
        dedup=dedup,
    )


def event_for(m: NewMemory, event: str = "ADD", old: str | None = None) -> NewEvent:
    return NewEvent(
        memory_id=m.id,
        lineage_id=m.lineage_id,
        scope=m.scope,
        event=event,
        old_text=old,
        new_text=m.text,
        reason="test",
        actor="test",
        source_message_ids=m.source_message_ids,
    )


def add(store: Store, *memories: NewMemory, at: int = 10, tenant: str = "t1", **extra: Any) -> Any:
    batch = WriteBatch(at=at, memories=list(memories), events=[event_for(m) for m in memories], **extra)
    return store.write(tenant, batch)


def update(store: Store, old_id: str, new: NewMemory, at: int, tenant: str = "t1") -> None:
    store.write(
        tenant,
        WriteBatch(
            at=at,
            memories=[new],
            supersede=[Supersede(old_id=old_id, new_id=new.id, valid_to=at)],
            events=[event_for(new, "UPDATE")],
        ),
    )


def message(id: str, s: Scope, content: str = "hi", at: int = 1) -> NewMessage:
    return NewMessage(id=id, scope=s, role="user", content=content, name=None, metadata={"n": id}, created_at=at)


def job(id: str, s: Scope | None = None, max_attempts: int = 3) -> NewJob:
    return NewJob(id=id, scope=s or scope(), kind="extract", payload={"job": id}, max_attempts=max_attempts)


def ids_of(candidates: list[Any]) -> list[str]:
    return [c.id for c in candidates]


# -- writes and reads -----------------------------------------------------------------------


def test_write_then_get_in_the_order_asked_skipping_unknown_ids(store: Store) -> None:
    a = new_memory("a", "Likes tea", unit(1), metadata={"city": "Berlin"}, category="preference")
    b = new_memory("b", "Has a dog", unit(0, 1), scope(agent="ag", run="r1"), expires_at=10**15)
    add(store, a, b, at=5)
    got = store.get("t1", ["b", "nope", "a"])
    assert [r.id for r in got] == ["b", "a"]
    rb, ra = got
    assert (ra.memory, ra.category, ra.metadata, ra.user_id, ra.agent_id) == (
        "Likes tea",
        "preference",
        {"city": "Berlin"},
        "u1",
        None,
    )
    assert (rb.agent_id, rb.run_id, rb.source_message_ids, rb.hash) == ("ag", "r1", ["msg-b"], "hash:has a dog")
    assert ra.valid_to is None and ra.superseded_by is None and ra.access_count == 0
    assert rb.expires_at is not None
    assert store.get("t1", []) == []
    assert store.check_integrity() == []


def test_origins_give_time_role_and_name_of_existing_memories_in_the_tenant(store: Store) -> None:
    a = new_memory("a", "I adopted a dog", unit(1), metadata={"role": "user", "name": "Ann"}, valid_from=7)
    b = new_memory("b", "Nice!", unit(0, 1), metadata={"role": "assistant"}, valid_from=8)
    c = new_memory("c", "Likes tea", unit(1, 1), metadata={"role": 3, "name": ["x"]}, valid_from=9)
    add(store, a, b, c)
    assert store.origins("t1", ["a", "b", "c", "nope"]) == {
        "a": Origin(7, "user", "Ann"),
        "b": Origin(8, "assistant", None),
        "c": Origin(9, None, None),
    }
    assert store.origins("t2", ["a"]) == {} and store.origins("t1", []) == {}


def test_origins_after_a_search_never_cross_tenants(store: Store) -> None:
    """A search caches its user; a lookup of that user's ids from another tenant still finds nothing."""
    add(store, new_memory("a", "tea a", unit(1), metadata={"role": "user", "name": "Ann"}, valid_from=7))
    add(store, new_memory("b", "tea b", unit(1), scope(tenant="t2"), metadata={"role": "assistant"}), tenant="t2")
    for tenant in ("t1", "t2"):
        assert ids_of(store.keyword_search(scope(tenant=tenant), "tea", 10, None, None, 100))
        assert ids_of(store.vector_search(scope(tenant=tenant), unit(1), 10, None, None, 100))
    assert store.origins("t1", ["a", "b"]) == {"a": Origin(7, "user", "Ann")}
    assert store.origins("t2", ["a", "b"]) == {"b": Origin(1, "assistant", None)}
    assert store.origins("t3", ["a", "b"]) == {}
    assert set(store.vectors("t2", ["a", "b"])) == {"b"} and set(store.similarity("t1", ["a", "b"], unit(1))) == {"a"}


def test_origins_follow_changes_made_through_another_instance(make_store: StoreFactory) -> None:
    """Origins of a user a search has cached: an update's new version, the old one it superseded, and a
    memory purged and imported again with other metadata are all answered as they now are."""
    reader, writer = make_store(), make_store()
    add(writer, new_memory("a", "tea a", unit(1), metadata={"role": "user", "name": "Ann"}, valid_from=7))
    add(writer, new_memory("b", "tea b", unit(1, 1), metadata={"role": "user", "name": "Bo"}, valid_from=8))

    def cache() -> None:
        assert ids_of(reader.keyword_search(scope(), "tea", 10, None, None, 100))

    cache()
    assert reader.origins("t1", ["a", "b"]) == {"a": Origin(7, "user", "Ann"), "b": Origin(8, "user", "Bo")}
    new = new_memory("a2", "tea a2", unit(1), lineage="a", metadata={"role": "assistant", "name": "Cy"}, valid_from=9)
    update(writer, "a", new, at=20)
    assert reader.origins("t1", ["a", "a2"]) == {"a": Origin(7, "user", "Ann"), "a2": Origin(9, "assistant", "Cy")}
    cache()
    assert reader.origins("t1", ["a", "a2"]) == {"a": Origin(7, "user", "Ann"), "a2": Origin(9, "assistant", "Cy")}
    exported = [r for r in writer.export_rows("t1") if r["type"] == "memory" and r["id"] == "b"]
    writer.purge_lineage("t1", "b")
    assert reader.origins("t1", ["b"]) == {}  # not from the stale cache
    cache()
    writer.import_rows("t1", [{**exported[0], "metadata": {"role": 5, "name": "Di"}}], np.array([unit(1, 1)]))
    assert reader.origins("t1", ["b", "a2"]) == {"b": Origin(8, None, "Di"), "a2": Origin(9, "assistant", "Cy")}
    cache()
    assert reader.origins("t1", ["b", "a2"]) == {"b": Origin(8, None, "Di"), "a2": Origin(9, "assistant", "Cy")}


def test_speakers_are_the_names_of_the_current_turns_in_scope(make_store: StoreFactory) -> None:
    """A user's: from its cached rows once a search cached them, kept current through another instance's
    update and purge. Across users (an agent's scope): those of the candidates given. Never across tenants."""
    reader, writer = make_store(), make_store()

    def turn(id: str, name: Any, s: Scope | None = None) -> NewMemory:
        return new_memory(id, f"tea {id}", unit(1), s, metadata={"role": "user", "name": name})

    add(writer, turn("a", "Ann"), turn("b", "Bo"), turn("c", 7), new_memory("d", "tea d", unit(1)))
    add(writer, turn("e", "Cy", scope("u2", agent="ag")), turn("f", "Flo", scope("u1", agent="ag")))
    add(writer, turn("g", "Di", scope(tenant="t2")), tenant="t2")
    assert reader.speakers(scope(), []) == {"Ann", "Bo", "Flo"}
    assert ids_of(reader.keyword_search(scope(), "tea", 10, None, None, 100))  # the user's rows now cached
    assert reader.speakers(scope(), ["e"]) == {"Ann", "Bo", "Flo"}
    update(writer, "a", turn("a2", "Eve"), at=20)
    writer.purge_lineage("t1", "b")
    assert reader.speakers(scope(), []) == {"Eve", "Flo"}
    assert reader.speakers(scope("u2"), []) == {"Cy"}
    assert reader.speakers(scope(None, agent="ag"), ["e", "g", "c", "nope"]) == {"Cy"}
    assert reader.speakers(scope(tenant="t2"), []) == {"Di"} and reader.speakers(scope(tenant="t3"), []) == frozenset()


def test_list_memories_pages_newest_first_within_the_scope(store: Store) -> None:
    for i in range(5):
        add(store, new_memory(f"m{i}", f"fact {i}", unit(1, i)), at=10 + i)
    add(store, new_memory("other", "fact x", unit(1), scope(user="u2")))
    add(store, new_memory("agent", "fact y", unit(1), scope(agent="ag")))
    seen: list[str] = []
    after = None
    while True:
        page, after = store.list_memories(scope(), None, False, 2, after)
        seen += [r.id for r in page]
        if after is None:
            break
    assert seen == ["agent", "m4", "m3", "m2", "m1", "m0"]
    page, after = store.list_memories(scope(agent="ag"), None, False, 10, None)
    assert ([r.id for r in page], after) == (["agent"], None)
    page, _ = store.list_memories(scope(user=None, agent="ag"), None, False, 10, None)
    assert [r.id for r in page] == ["agent"]


def test_supersede_hides_the_old_version_but_as_of_still_sees_it(store: Store) -> None:
    add(store, new_memory("v1", "Lives in Paris", unit(1)), at=100)
    update(store, "v1", new_memory("v2", "Lives in Berlin", unit(1, 0.2), lineage="v1", valid_from=200), at=200)
    old, new = store.get("t1", ["v1", "v2"])
    assert (old.valid_to is not None, old.superseded_by, new.valid_to) == (True, "v2", None)
    current, _ = store.list_memories(scope(), None, False, 10, None)
    everything, _ = store.list_memories(scope(), None, True, 10, None)
    assert [r.id for r in current] == ["v2"]
    assert [r.id for r in everything] == ["v2", "v1"]
    q = unit(1)
    assert ids_of(store.vector_search(scope(), q, 10, None, None, 0)) == ["v2"]
    assert ids_of(store.vector_search(scope(), q, 10, None, 150, 0)) == ["v1"]
    assert ids_of(store.vector_search(scope(), q, 10, None, 250, 0)) == ["v2"]
    assert ids_of(store.keyword_search(scope(), "lives", 10, None, None, 0)) == ["v2"]
    assert ids_of(store.keyword_search(scope(), "paris", 10, None, 150, 0)) == ["v1"]
    assert store.keyword_search(scope(), "paris", 10, None, None, 0) == []
    history = store.history("t1", "v1")
    assert [(h.memory_id, h.event) for h in history] == [("v1", "ADD"), ("v2", "UPDATE")]
    assert store.check_integrity() == []


def test_invalidate_hides_a_memory_and_a_stale_change_applies_nothing(store: Store) -> None:
    add(store, new_memory("a", "Owns a cat", unit(1)), at=10)
    store.write("t1", WriteBatch(at=20, invalidate=[Invalidate(id="a", valid_to=20)]))
    assert store.vector_search(scope(), unit(1), 5, None, None, 0) == []
    assert store.get("t1", ["a"])[0].valid_to is not None
    # Changing a memory that is no longer current fails, and the whole batch with it.
    with pytest.raises(StoreError, match="not current"):
        store.write(
            "t1",
            WriteBatch(
                at=30,
                messages=[message("msg", scope())],
                memories=[new_memory("b", "Owns a dog", unit(0, 1), lineage="a")],
                supersede=[Supersede(old_id="a", new_id="b", valid_to=30)],
            ),
        )
    assert store.get("t1", ["b"]) == []
    assert store.messages_by_id("t1", ["msg"]) == []


def test_a_failing_batch_writes_nothing(store: Store) -> None:
    add(store, new_memory("a", "x", unit(1)))
    with pytest.raises(StoreError):
        add(store, new_memory("b", "y", unit(1)), new_memory("a", "dup id", unit(1)))
    assert store.get("t1", ["b"]) == []
    with pytest.raises(StoreError, match="dimensions"):
        add(store, new_memory("c", "z", np.ones(3, dtype=np.float32)))


# -- search ---------------------------------------------------------------------------------


def test_vector_search_is_exact_and_scores_are_cosine(store: Store) -> None:
    vectors = {"a": unit(1, 0.1), "b": unit(1, 0.5), "c": unit(0, 1), "d": unit(-1)}
    add(store, *(new_memory(k, f"text {k}", v) for k, v in vectors.items()))
    q = unit(1)
    found = store.vector_search(scope(), q, 3, None, None, 0)
    assert ids_of(found) == ["a", "b", "c"]
    for c in found:
        assert c.score == pytest.approx(float(vectors[c.id] @ q), abs=1e-5)
    assert store.similarity("t1", ["d", "a"], q) == {
        "d": pytest.approx(-1.0, abs=1e-5),
        "a": pytest.approx(float(vectors["a"] @ q), abs=1e-5),
    }
    stored = store.vectors("t1", ["b"])["b"]
    assert stored.dtype == np.float32 and np.array_equal(stored, vectors["b"])


def test_vector_search_returns_the_true_top_k_of_each_user(store: Store) -> None:
    """Recall, not just speed: per-user KNN must match brute force, whatever the index."""
    rng = np.random.default_rng(7)
    users = [f"user{i}" for i in range(12)]
    owned: dict[str, list[tuple[str, Vector]]] = {u: [] for u in users}
    for batch in range(6):
        memories = []
        for i in range(100):
            user = users[int(rng.integers(len(users)))]
            v = rng.standard_normal(DIM).astype(np.float32)
            v /= np.linalg.norm(v)
            mid = f"m{batch}-{i}"
            owned[user].append((mid, v))
            memories.append(new_memory(mid, f"memory {mid}", v, scope(user=user)))
        add(store, *memories)
    for user in users:
        q = rng.standard_normal(DIM).astype(np.float32)
        q /= np.linalg.norm(q)
        truth = sorted(owned[user], key=lambda pair: -float(pair[1] @ q))[:10]
        got = store.vector_search(scope(user=user), q, 10, None, None, 0)
        assert ids_of(got) == [mid for mid, _ in truth], user


def test_searches_follow_every_write_made_through_another_instance(make_store: StoreFactory) -> None:
    """Each instance (like each process) may cache a user's vectors and postings; versions keep them current."""
    reader, writer = make_store(), make_store()
    q = unit(1)

    def found(where: dict[str, Any] | None = None, now: int = 100) -> list[str]:
        dense = ids_of(reader.vector_search(scope(), q, 10, parse_filters(where), None, now))
        sparse = ids_of(reader.keyword_search(scope(), "tea", 10, parse_filters(where), None, now))
        assert sorted(dense) == sorted(sparse)  # every memory here is about tea
        return dense

    assert found() == []
    add(writer, new_memory("a", "tea a", unit(1)), new_memory("b", "tea b", unit(1, 1), metadata={"k": 1}))
    assert found() == ["a", "b"]
    assert found({"k": 1}) == ["b"]
    update(writer, "a", new_memory("a2", "tea a2", unit(1, 0.5), lineage="a"), at=20)
    assert found() == ["a2", "b"]
    writer.write("t1", WriteBatch(at=30, invalidate=[Invalidate(id="b", valid_to=30)]))
    assert found() == ["a2"]
    add(writer, new_memory("x", "tea x", unit(1), expires_at=150), at=40)
    assert found() == ["x", "a2"]
    assert found(now=200) == ["a2"]  # x has expired by then
    exported = [r for r in writer.export_rows("t1") if r["type"] == "memory" and r["id"] == "x"]
    assert set(reader.similarity("t1", ["x", "a2", "b"], q)) == {"x", "a2", "b"}
    writer.purge_lineage("t1", "x")
    assert set(reader.similarity("t1", ["x", "a2", "b"], q)) == {"a2", "b"}  # not from a stale cache
    assert found() == ["a2"]
    writer.purge_scope(scope())
    assert found() == []
    writer.import_rows("t1", exported, np.array([unit(1)]))
    assert found() == ["x"]


def faceted(id: str, vector: Vector, *facets: Vector, lineage: str | None = None) -> NewMemory:
    """A verbatim turn whose sentences were embedded as `facets`."""
    return replace(new_memory(id, f"turn {id}", vector, lineage=lineage), facets=np.array(facets, dtype=np.float32))


def test_a_memory_scores_as_its_best_facet_through_cache_appends_endings_purges_and_import(
    make_store: StoreFactory,
) -> None:
    reader, writer = make_store(), make_store()
    q = unit(0, 0, 1)

    def found(s: Store) -> list[tuple[str, float]]:
        return [(c.id, round(c.score, 4)) for c in s.vector_search(scope(), q, 10, None, None, 100)]

    add(writer, faceted("a", unit(1), unit(1, 0, 0.2), unit(0, 1, 1)), new_memory("plain", "p", unit(0.5, 0, 1)))
    cos = round(float(unit(0, 1, 1) @ q), 4)
    assert found(reader) == [("plain", round(float(unit(0.5, 0, 1) @ q), 4)), ("a", cos)]
    for s in (reader, make_store()):  # from the cache the search left, and from SQL: scored as the search did
        assert {id: round(v, 4) for id, v in s.similarity("t1", ["a", "plain", "nope"], q).items()} == dict(found(s))
    # Appended to the cached copy: the new row's facets belong to it, not to a row already held.
    add(writer, faceted("b", unit(-1), unit(0, 0, 1)), new_memory("c", "c", unit(1)), at=20)
    assert found(reader)[0] == ("b", 1.0) and dict(found(reader))["a"] == cos
    # Rows dropped before a faceted row (ended, then purged): its facets follow it to its new position.
    writer.write("t1", WriteBatch(at=30, invalidate=[Invalidate(id="plain", valid_to=30)]))
    assert [id for id, _ in found(reader)] == ["b", "a", "c"] and dict(found(reader))["a"] == cos
    writer.purge_lineage("t1", "plain")
    update(writer, "b", new_memory("b2", "b2", unit(-1), lineage="b"), at=40)  # the new version has no facets
    assert found(reader) == found(make_store()) and found(reader)[0][0] == "a"
    for s in (reader, make_store()):  # as of before the update, b (ended since) scores as its facet too
        then = [(c.id, round(c.score, 4)) for c in s.vector_search(scope(), q, 10, None, 35, 100)]
        assert then[:2] == [("b", 1.0), ("a", cos)] and {id for id, _ in then} == {"a", "b", "b2", "c"}
    exported = [r for r in writer.export_rows("t1") if r["type"] == "memory" and r["id"] == "a"]
    assert exported[0]["facets"] is not None
    writer.purge_scope(scope())
    facets = np.frombuffer(base64.b64decode(exported[0]["facets"]), dtype=np.float32).reshape(-1, DIM)
    writer.import_rows("t1", [exported[0] | {"facets": facets}], np.array([unit(1)]))
    assert found(reader) == [("a", cos)]
    damaged = exported[0] | {"id": "cut", "lineage_id": "cut", "facets": facets[:, :3]}  # rows cut short
    writer.import_rows("t1", [damaged], np.array([unit(1)]))
    assert [p for p in writer.check_integrity() if p.startswith("facets")] == ["facets of the wrong size: cut"]
    assert [id for id, _ in found(make_store())] == ["a", "cut"]  # searches go on, on the memory's own vector
    assert writer.similarity("t1", ["cut"], q) == pytest.approx({"cut": float(unit(1) @ q)}, abs=1e-6)


def test_a_cache_brought_up_to_date_answers_like_a_fresh_one(make_store: StoreFactory) -> None:
    """A cached user is brought up to date after additions and after an update; it must answer like a reload."""
    reader, writer = make_store(), make_store()
    rng = np.random.default_rng(3)
    words = ["tea", "cake", "dog", "lake", "walk", "garden", "coffee", "rain"]

    def searches(s: Store) -> tuple[list[Any], list[Any]]:
        q = unit(1, 0.5, 0.2)
        dense = [(c.id, round(c.score, 5)) for c in s.vector_search(scope(), q, 15, None, None, 10**6)]
        sparse = [(c.id, round(c.score, 5)) for c in s.keyword_search(scope(), "tea cake rain", 15, None, None, 10**6)]
        return dense, sparse

    for round_ in range(4):
        batch = []
        for i in range(8):
            v = rng.standard_normal(DIM).astype(np.float32)
            text = " ".join(rng.choice(words, size=int(rng.integers(1, 6))))
            batch.append(new_memory(f"r{round_}-{i}", f"{text} {round_}", v / np.linalg.norm(v)))
        add(writer, *batch, at=10 + round_)
        if round_ == 2:  # not only additions: a memory is ended too
            update(writer, "r0-0", new_memory("r0-0b", "tea tea rain", unit(1, 0.5), lineage="r0-0"), at=20)
        assert searches(reader) == searches(make_store()), round_
    assert searches(writer) == searches(reader)


@pytest.fixture
def appends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Every time a cached partition is brought up to date by appending rows: (kind, rows held, rows added)."""
    seen: list[tuple[str, int, int]] = []
    vectors, postings = vector_index.Partition.extended, keyword_index.Postings.extended

    def vectors_spy(self: Any, extra: Any) -> Any:
        if not isinstance(self, keyword_index.Postings):  # postings count once, in their own method
            seen.append(("vectors", len(self.rowids), len(extra.rowids)))
        return vectors(self, extra)

    def postings_spy(self: Any, extra: Any) -> Any:
        seen.append(("postings", len(self.rowids), len(extra.rowids)))
        return postings(self, extra)

    monkeypatch.setattr(vector_index.Partition, "extended", vectors_spy)
    monkeypatch.setattr(keyword_index.Postings, "extended", postings_spy)
    return seen


def _searches(s: Store, q: Vector, terms: str, now: int = 100) -> tuple[list[tuple[str, float]], ...]:
    dense = s.vector_search(scope(), q, 50, None, None, now)
    sparse = s.keyword_search(scope(), terms, 50, None, None, now)
    return [(c.id, c.score) for c in dense], [(c.id, c.score) for c in sparse]


def test_a_search_right_after_an_add_reads_only_the_new_memory(
    make_store: StoreFactory, appends: list[tuple[str, int, int]]
) -> None:
    """The chat loop: search, add, search. The second search appends the new memory to the cached user."""
    reader, writer = make_store(), make_store()
    add(writer, *[new_memory(f"m{i}", f"tea {i}", unit(0, 1, i)) for i in range(5)])
    assert len(ids_of(reader.vector_search(scope(), unit(1), 10, None, None, 100))) == 5
    assert len(ids_of(reader.keyword_search(scope(), "tea", 10, None, None, 100))) == 5
    appends.clear()
    add(writer, new_memory("new", "tea new", unit(1)), at=20)
    assert ids_of(reader.vector_search(scope(), unit(1), 10, None, None, 100))[0] == "new"
    assert "new" in ids_of(reader.keyword_search(scope(), "new", 10, None, None, 100))
    assert sorted(appends) == [("postings", 5, 1), ("vectors", 5, 1)]  # appended, not read again
    assert _searches(reader, unit(1, 2), "tea new") == _searches(make_store(), unit(1, 2), "tea new")


def test_scores_after_appends_equal_a_fresh_loads_exactly(
    make_store: StoreFactory, appends: list[tuple[str, int, int]]
) -> None:
    """Every added document moves BM25's N, document frequencies and average length: appended postings
    must score like postings read whole, to the last bit."""
    reader, writer = make_store(), make_store()
    rng = np.random.default_rng(7)
    words = ["tea", "cake", "dog", "lake", "walk", "garden", "coffee", "rain", "sun"]
    q = unit(1, 0.3, -0.2, 0.1)
    for round_ in range(6):
        batch = []
        for i in range(int(rng.integers(1, 4))):
            v = rng.standard_normal(DIM).astype(np.float32)
            text = " ".join(rng.choice(words, size=int(rng.integers(1, 8))))
            batch.append(new_memory(f"r{round_}-{i}", text, v / np.linalg.norm(v), scope(agent="a" if i % 2 else None)))
        add(writer, *batch, at=10 + round_)
        assert _searches(reader, q, "tea cake rain sun") == _searches(make_store(), q, "tea cake rain sun"), round_
    assert {kind for kind, _, _ in appends} == {"vectors", "postings"}


@pytest.mark.parametrize("change", ["update", "invalidate", "purge_lineage", "purge_scope", "expire", "import"])
def test_a_search_after_a_change_other_than_an_add_never_returns_what_it_removed(
    make_store: StoreFactory, change: str
) -> None:
    """Ending, deleting, purging or importing memories through another instance; the reader's cache must
    not be brought up to date by appending (that would keep the removed memory)."""
    reader, writer = make_store(), make_store()
    add(writer, new_memory("keep", "tea keep", unit(1, 1)), new_memory("old", "tea old", unit(1), expires_at=150))
    exported = [r for r in writer.export_rows("t1") if r["type"] == "memory"]
    assert set(ids_of(reader.vector_search(scope(), unit(1), 10, None, None, 100))) == {"keep", "old"}
    assert set(ids_of(reader.keyword_search(scope(), "tea", 10, None, None, 100))) == {"keep", "old"}
    now, expected = 100, {"keep"}
    if change == "update":
        update(writer, "old", new_memory("new", "tea new", unit(1), lineage="old"), at=20)
        expected = {"keep", "new"}
    elif change == "invalidate":
        writer.write("t1", WriteBatch(at=20, invalidate=[Invalidate(id="old", valid_to=20)]))
    elif change == "purge_lineage":
        writer.purge_lineage("t1", "old")
    elif change == "purge_scope":
        writer.purge_scope(scope())
        expected = set()
    elif change == "expire":
        now = 200
    else:
        writer.purge_scope(scope())
        writer.import_rows("t1", [r for r in exported if r["id"] == "keep"], np.array([unit(1, 1)]))
    assert set(ids_of(reader.vector_search(scope(), unit(1), 10, None, None, now))) == expected
    assert set(ids_of(reader.keyword_search(scope(), "tea", 10, None, None, now))) == expected
    # and then an add, which is appended to what the reader brought up to date
    add(writer, new_memory("later", "tea later", unit(1, 0.5)), at=30)
    assert set(ids_of(reader.vector_search(scope(), unit(1), 10, None, None, now))) == expected | {"later"}
    assert set(ids_of(reader.keyword_search(scope(), "tea", 10, None, None, now))) == expected | {"later"}
    assert _searches(reader, unit(1), "tea", now) == _searches(make_store(), unit(1), "tea", now)


def test_a_memory_added_after_one_was_purged_is_never_mistaken_for_it(make_store: StoreFactory) -> None:
    """SQLite numbers a new row one above the highest there is, so a purged newest memory's rowid is
    given to the next one; a cache that still holds the purged memory must not take the new row for it."""
    reader, writer = make_store(), make_store()
    add(writer, new_memory("a", "tea a", unit(1, 1)))
    for i in range(3):
        add(writer, new_memory(f"gone{i}", "coffee gone", unit(1)), at=20 + i)
        assert ids_of(reader.vector_search(scope(), unit(1), 10, None, None, 100))[0] == f"gone{i}"
        assert ids_of(reader.keyword_search(scope(), "coffee", 10, None, None, 100)) == [f"gone{i}"]
        writer.purge_lineage("t1", f"gone{i}")
        if i:  # with and without a search between the purge and the next add
            assert ids_of(reader.keyword_search(scope(), "coffee", 10, None, None, 100)) == []
        add(writer, new_memory(f"next{i}", "cake next", unit(0, 1)), at=30 + i)
        assert ids_of(reader.vector_search(scope(), unit(0, 1), 10, None, None, 100))[0] == f"next{i}"
        assert ids_of(reader.keyword_search(scope(), "coffee", 10, None, None, 100)) == []
        assert ids_of(reader.keyword_search(scope(), "cake", 10, None, None, 100)) == [f"next{i}"]
        assert reader.vectors("t1", [f"gone{i}"]) == {}
        writer.purge_lineage("t1", f"next{i}")


def test_concurrent_adds_updates_and_purges_of_one_user_neither_deadlock_nor_leave_caches_stale(
    make_store: StoreFactory,
) -> None:
    """Writers of one user queue on its version row; a reader's cache ends equal to the table."""
    stores = [make_store() for _ in range(4)]
    reader = make_store()
    errors: list[BaseException] = []

    def writer(s: Store, n: int) -> None:
        try:
            for i in range(6):
                add(s, new_memory(f"w{n}-{i}", f"tea {n} {i}", unit(1, n, i)), at=10 + i)
                if i % 2:
                    update(
                        s,
                        f"w{n}-{i}",
                        new_memory(f"w{n}-{i}b", f"tea {n} {i}b", unit(1, i, n), lineage=f"w{n}-{i}"),
                        30 + i,
                    )
                if i % 3 == 2:
                    s.purge_lineage("t1", f"w{n}-{i - 1}")
                reader.vector_search(scope(), unit(1), 50, None, None, 100)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, n)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    current = {r.id for r in reader.list_memories(scope(), None, False, 100, None)[0]}
    assert set(ids_of(reader.vector_search(scope(), unit(1), 100, None, None, 100))) == current
    assert set(ids_of(reader.keyword_search(scope(), "tea", 100, None, None, 100))) == current
    assert reader.check_integrity() == []


def test_search_respects_agent_run_filters_and_expiry(store: Store) -> None:
    add(
        store,
        new_memory("plain", "tea time", unit(1)),
        new_memory("agent", "tea with the agent", unit(1, 0.1), scope(agent="ag")),
        new_memory("run", "tea in the run", unit(1, 0.2), scope(agent="ag", run="r1")),
        new_memory("berlin", "tea in Berlin", unit(1, 0.3), metadata={"city": "Berlin", "tags": ["x", "y"]}),
        new_memory("year", "tea in 2021", unit(1, 0.4), metadata={"year": 2021}, category="fact"),
        new_memory("expired", "tea that expired", unit(1), expires_at=50),
    )
    q = unit(1)

    def both(s: Scope, where: dict[str, Any] | None = None, now: int = 100) -> tuple[set[str], set[str]]:
        f = parse_filters(where)
        return (
            set(ids_of(store.vector_search(s, q, 20, f, None, now))),
            set(ids_of(store.keyword_search(s, "tea", 20, f, None, now))),
        )

    everything = {"plain", "agent", "run", "berlin", "year"}
    assert both(scope()) == (everything, everything)
    assert both(scope(), now=10)[0] == everything | {"expired"}
    assert both(scope(agent="ag")) == ({"agent", "run"},) * 2
    assert both(scope(user=None, run="r1")) == ({"run"},) * 2
    assert both(scope(), {"city": "Berlin"}) == ({"berlin"},) * 2
    assert both(scope(), {"tags": {"contains": "y"}}) == ({"berlin"},) * 2
    assert both(scope(), {"year": {"gte": 2020}}) == ({"year"},) * 2
    assert both(scope(), {"year": {"gte": "2020"}}) == (set(), set())  # type-strict
    assert both(scope(), {"category": "fact"}) == ({"year"},) * 2
    assert both(scope(), {"city": {"ne": "Berlin"}})[0] == everything - {"berlin"}
    assert both(scope(), {"NOT": {"city": "Berlin"}})[0] == everything - {"berlin"}
    assert both(scope(), {"OR": [{"city": "Berlin"}, {"year": 2021}]})[0] == {"berlin", "year"}
    assert both(scope(user="u2")) == (set(), set())


def test_keyword_search_ranks_matches_within_the_scope(store: Store) -> None:
    add(
        store,
        new_memory("both", "Alice drinks green tea in Berlin", unit(1)),
        new_memory("one", "Alice likes Berlin", unit(1)),
        new_memory("none", "Bob owns a dog", unit(1)),
        new_memory("elsewhere", "green tea in Berlin", unit(1), scope(user="u2")),
    )
    found = store.keyword_search(scope(), "green tea Berlin", 10, None, None, 0)
    assert ids_of(found) == ["both", "one"]
    assert found[0].score > found[1].score > 0
    assert store.keyword_search(scope(), "the of and", 10, None, None, 0) == []
    assert store.keyword_search(scope(), "", 10, None, None, 0) == []
    assert ids_of(store.keyword_search(scope(), "DRINKING teas!", 10, None, None, 0)) == ["both"]  # stemmed
    add(store, new_memory("quotes", "Don't touch C:\\temp or 'quoted' words; O'Brien said \\ \" |&!", unit(1)))
    for query in ("O'Brien", "don't", "C:\\temp", "'quoted'", "\\", "|&!():*", "a & b | !c <-> d"):
        store.keyword_search(scope(), query, 10, None, None, 0)  # any text is a valid query
    assert "quotes" in ids_of(store.keyword_search(scope(), "O'Brien quoted", 10, None, None, 0))


# -- dedup ----------------------------------------------------------------------------------


def test_dedup_matches_same_text_or_near_vector_in_the_same_user_and_agent(store: Store) -> None:
    add(store, new_memory("orig", "Likes tea", unit(1, 0.01)), at=10)
    same_text = new_memory("t2", "likes tea", unit(0, 1), dedup=True)
    near = new_memory("t3", "Enjoys tea", unit(1, 0.02), dedup=True)
    far = new_memory("t4", "Has a dog", unit(0, 0, 1), dedup=True)
    other_agent = new_memory("t5", "Likes tea", unit(1, 0.01), scope(agent="ag"), dedup=True)
    out = add(store, same_text, near, far, other_agent, at=20, dedup_threshold=0.95)
    assert out.duplicates == {"t2": ("orig", "orig"), "t3": ("orig", "orig")}
    assert {r.id for r in store.get("t1", ["orig", "t2", "t3", "t4", "t5"])} == {"orig", "t4", "t5"}
    assert store.get("t1", ["orig"])[0].updated_at.timestamp() * 1e6 == pytest.approx(20, abs=1)
    events = store.history("t1", "orig")
    assert [(e.memory_id, e.event) for e in events] == [("orig", "ADD"), ("orig", "NOOP"), ("orig", "NOOP")]
    # Within one batch, a later memory matches an earlier one.
    out = add(
        store,
        new_memory("x1", "Plays chess", unit(0, 0, 0, 1), dedup=True),
        new_memory("x2", "Plays chess well", unit(0, 0, 0, 1, 0.01), dedup=True),
    )
    assert out.duplicates == {"x2": ("x1", "x1")}
    assert store.check_integrity() == []


def test_concurrent_identical_dedup_writes_end_with_one_memory(make_store: StoreFactory) -> None:
    """Several store instances (as separate processes would) add the same fact at once."""
    stores = [make_store() for _ in range(4)]
    barrier = threading.Barrier(len(stores) * 2)
    errors: list[BaseException] = []

    def writer(s: Store, n: int) -> None:
        try:
            barrier.wait()
            for round in range(5):
                add(s, new_memory(f"w{n}-{round}", f"Lives in Lisbon {round}", unit(*[0.0] * round, 1), dedup=True))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, n)) for n, s in enumerate(stores * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    page, _ = stores[0].list_memories(scope(), None, False, 100, None)
    assert sorted(r.memory for r in page) == [f"Lives in Lisbon {r}" for r in range(5)]
    assert stores[0].check_integrity() == []


# -- history and purges ---------------------------------------------------------------------


def test_purge_lineage_removes_every_version_and_counts_rows(store: Store) -> None:
    add(store, new_memory("v1", "a", unit(1)), new_memory("keep", "b", unit(0, 1)), at=10)
    update(store, "v1", new_memory("v2", "a2", unit(1), lineage="v1"), at=20)
    counts = store.purge_lineage("t1", "v1")
    assert (counts.memories, counts.vectors, counts.keyword_rows, counts.events) == (2, 2, 2, 2)
    assert store.get("t1", ["v1", "v2", "keep"])[0].id == "keep"
    assert store.history("t1", "v1") == []
    assert store.vector_search(scope(), unit(1), 5, None, None, 0)[0].id == "keep"
    assert store.check_integrity() == []


def test_purge_scope_removes_memories_events_messages_and_jobs(store: Store) -> None:
    mine, other = scope(), scope(user="u2")
    store.write(
        "t1",
        WriteBatch(
            at=1,
            messages=[message("m1", mine), message("m2", mine), message("m3", other)],
            jobs=[job("j1", mine), job("j2", other)],
        ),
    )
    add(store, new_memory("a", "x", unit(1), mine), new_memory("b", "y", unit(1), other))
    update(store, "a", new_memory("a2", "x2", unit(1), mine, lineage="a"), at=20)
    counts = store.purge_scope(mine)
    assert counts.model_dump() == {
        "memories": 2,
        "vectors": 2,
        "keyword_rows": 2,
        "events": 2,
        "messages": 2,
        "jobs": 1,
    }
    assert [r.id for r in store.list_memories(scope(user=None, agent=None, run=None), None, True, 10, None)[0]] == ["b"]
    assert store.messages(other, None)[0].id == "m3"
    assert [j.id for j in store.list_jobs("t1", None, 10)] == ["j2"]
    assert store.check_integrity() == []


# -- messages -------------------------------------------------------------------------------


def test_messages_oldest_first_with_limit_and_by_id(store: Store) -> None:
    s = scope(run="session")
    store.write("t1", WriteBatch(at=1, messages=[message(f"m{i}", s, f"turn {i}", at=i) for i in range(5)]))
    store.write("t1", WriteBatch(at=1, messages=[message("elsewhere", scope(run="other"))]))
    assert [m.id for m in store.messages(s, None)] == [f"m{i}" for i in range(5)]
    assert [m.id for m in store.messages(s, 2)] == ["m3", "m4"]
    got = store.messages_by_id("t1", ["m4", "nope", "m0"])
    assert [(m.id, m.content, m.metadata, m.run_id) for m in got] == [
        ("m4", "turn 4", {"n": "m4"}, "session"),
        ("m0", "turn 0", {"n": "m0"}, "session"),
    ]
    assert store.delete_messages(s) == 5
    assert store.messages(s, None) == []
    assert len(store.messages(scope(run="other"), None)) == 1


# -- jobs -----------------------------------------------------------------------------------


def test_job_lifecycle_claim_lease_expiry_release_dead_and_retry(store: Store) -> None:
    store.write("t1", WriteBatch(at=100, jobs=[job("j1")]))
    assert store.claim_job(now=99, lease=10) is None  # not due yet
    first = store.claim_job(now=100, lease=10)
    assert first is not None and (first.id, first.status, first.attempts, first.payload) == (
        "j1",
        "running",
        1,
        {"job": "j1"},
    )
    assert store.claim_job(now=105, lease=10) is None  # leased
    taken_over = store.claim_job(now=111, lease=10)  # the lease expired: another worker takes it
    assert taken_over is not None and taken_over.attempts == 2
    store.release_job("j1", "boom", retry_at=200, now=112)
    assert store.claim_job(now=150, lease=10) is None
    (queued,) = store.list_jobs("t1", "queued", 10)
    assert (queued.last_error, queued.run_after) == ("boom", 200)
    again = store.claim_job(now=200, lease=10, job_id="j1")
    assert again is not None and again.attempts == 3
    store.release_job("j1", "boom again", retry_at=None, now=201)
    assert store.job_counts() == {"dead": 1}
    assert store.claim_job(now=10**12, lease=10) is None
    assert not store.retry_job("t2", "j1", now=300)  # another tenant
    assert store.retry_job("t1", "j1", now=300)
    (requeued,) = store.list_jobs("t1", None, 10)
    assert (requeued.status, requeued.attempts) == ("queued", 0)
    assert not store.retry_job("t1", "nope", now=300)


def test_finishing_a_job_commits_with_its_effects_once(store: Store) -> None:
    store.write("t1", WriteBatch(at=1, jobs=[job("j1"), job("j2")]))
    claimed = store.claim_job(now=5, lease=100, job_id="j1")
    assert claimed is not None
    m = new_memory("from-job", "fact", unit(1))
    store.write("t1", WriteBatch(at=6, memories=[m], events=[event_for(m)], finish_job=("j1", {"added": 1})))
    (done,) = store.list_jobs("t1", "done", 10)
    assert (done.id, done.result) == ("j1", {"added": 1})
    with pytest.raises(StoreError, match="no longer leased"):
        m2 = new_memory("again", "fact 2", unit(1))
        store.write("t1", WriteBatch(at=7, memories=[m2], events=[event_for(m2)], finish_job=("j1", {})))
    assert store.get("t1", ["again"]) == []
    assert store.job_counts() == {"done": 1, "queued": 1}
    assert [j.id for j in store.list_jobs("t1", None, 10)] == ["j2", "j1"]


def test_concurrent_workers_claim_each_job_exactly_once(make_store: StoreFactory) -> None:
    first = make_store()
    first.write("t1", WriteBatch(at=1, jobs=[job(f"j{i:02}") for i in range(40)]))
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(s: Store) -> None:
        while (j := s.claim_job(now=10, lease=1000)) is not None:
            with lock:
                claimed.append(j.id)
            s.write("t1", WriteBatch(at=11, finish_job=(j.id, {})))

    threads = [threading.Thread(target=worker, args=(s,)) for s in [first, *(make_store() for _ in range(3))]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == [f"j{i:02}" for i in range(40)]
    assert first.job_counts() == {"done": 40}


# -- export, import, integrity --------------------------------------------------------------


def _populate(store: Store) -> None:
    s = scope(run="r1")
    store.write("t1", WriteBatch(at=1, messages=[message("msg1", s, "I moved to Berlin")]))
    add(store, new_memory("a", "Lives in Paris", unit(1), s, metadata={"n": 1.5, "tags": ["x"]}), at=10)
    update(store, "a", new_memory("a2", "Lives in Berlin", unit(1, 0.3), s, lineage="a", valid_from=20), at=20)
    add(store, new_memory("b", "Likes tea", unit(0, 1), expires_at=10**16), at=30)
    store.record_access("t1", {"b": 3}, at=40)
    add(store, new_memory("other", "not exported", unit(1)), tenant="t2")


def test_export_then_import_is_lossless(make_store: StoreFactory, tmp_path: Path) -> None:
    source = make_store()
    _populate(source)
    rows = list(source.export_rows("t1"))
    assert [r["type"] for r in rows].count("memory") == 3
    assert "not exported" not in str(rows)
    target = SQLiteStore(tmp_path / "target.db", dimensions=DIM, embedder_id="hash:8")
    from retain.transfer import MemoryRow

    def vector_of(row: dict[str, Any]) -> Vector:
        import base64

        return np.frombuffer(base64.b64decode(row["embedding"]), dtype=np.float32)

    memories = [r for r in rows if r["type"] == "memory"]
    for r in memories:
        MemoryRow.model_validate(r)
    assert target.import_rows("t9", rows, np.array([vector_of(r) for r in memories])) == len(rows)
    assert list(target.export_rows("t9")) == rows
    assert target.check_integrity() == []
    target.close()


def test_check_integrity_is_clean_after_every_kind_of_change(store: Store) -> None:
    _populate(store)
    store.write("t1", WriteBatch(at=50, invalidate=[Invalidate(id="b", valid_to=50)]))
    store.purge_scope(scope(user=None, run="r1"))
    assert store.check_integrity() == []


# -- API keys -------------------------------------------------------------------------------


def _key(id: str, tenant: str, created_at: int, admin: bool = False) -> ApiKey:
    return ApiKey(id=id, tenant_id=tenant, name=f"key {id}", prefix=f"rtn_{id}", admin=admin, created_at=created_at)


def test_api_keys_are_found_by_hash_listed_per_tenant_and_revoked_within_their_tenant(store: Store) -> None:
    store.create_api_key(_key("a1", "acme", 1), "hash-a1")
    store.create_api_key(_key("a2", "acme", 2, admin=True), "hash-a2")
    store.create_api_key(_key("b1", "globex", 3), "hash-b1")

    assert store.api_key_by_hash("hash-a2") == _key("a2", "acme", 2, admin=True)
    assert store.api_key_by_hash("nope") is None
    assert [k.id for k in store.list_api_keys("acme")] == ["a1", "a2"]
    assert [k.id for k in store.list_api_keys(None)] == ["a1", "a2", "b1"]

    assert not store.revoke_api_key("b1", at=10, tenant_id="acme")  # another tenant's key
    assert store.api_key_by_hash("hash-b1").revoked_at is None  # type: ignore[union-attr]
    assert store.revoke_api_key("b1", at=10, tenant_id="globex")
    assert not store.revoke_api_key("b1", at=11)  # already revoked
    assert store.api_key_by_hash("hash-b1").revoked_at == 10  # type: ignore[union-attr]


def test_a_secret_hash_is_unique(store: Store) -> None:
    store.create_api_key(_key("a1", "acme", 1), "same")
    with pytest.raises(StoreError):
        store.create_api_key(_key("a2", "acme", 2), "same")
    with pytest.raises(StoreError):
        store.create_api_key(_key("a1", "acme", 2), "other")
    assert [k.id for k in store.list_api_keys(None)] == ["a1"]


def test_job_counts_group_by_status(store: Store) -> None:
    assert store.job_counts() == {}
    store.write("t1", WriteBatch(at=1, jobs=[job("j1"), job("j2")]))
    store.write("t2", WriteBatch(at=1, jobs=[job("j3", scope(tenant="t2"))]))
    store.claim_job(now=1, lease=10)
    assert store.job_counts() == {"queued": 2, "running": 1}


# -- tenant isolation -----------------------------------------------------------------------


def test_another_tenant_can_never_reach_rows_by_id(store: Store) -> None:
    _populate(store)
    store.write("t1", WriteBatch(at=1, jobs=[job("j1")]))
    ids = ["a", "a2", "b", "msg1"]
    before = store.export_rows("t1")
    snapshot = list(before)

    assert store.get("t2", ids) == []
    assert store.history("t2", "a") == []
    assert store.similarity("t2", ids, unit(1)) == {}
    assert store.vectors("t2", ids) == {}
    assert store.messages_by_id("t2", ids) == []
    store.record_access("t2", {"b": 100}, at=99)
    assert not store.retry_job("t2", "j1", now=5)
    assert store.list_jobs("t2", None, 10) == []
    assert store.purge_lineage("t2", "a").model_dump() == {
        "memories": 0,
        "vectors": 0,
        "keyword_rows": 0,
        "events": 0,
        "messages": 0,
        "jobs": 0,
    }
    same_users = scope(tenant="t2", user="u1", run="r1")
    assert store.purge_scope(same_users).memories == 0
    assert store.purge_scope(scope(tenant="t2", user="u1")).memories == 1  # t2's own "other"
    assert store.vector_search(scope(tenant="t2"), unit(1), 10, None, None, 0) == []
    assert store.keyword_search(scope(tenant="t2"), "Berlin tea Paris", 10, None, None, 0) == []
    assert store.messages(scope(tenant="t2", user=None, run="r1"), None) == []
    assert list(store.export_rows("t2")) == []
    assert list(store.export_rows("t1")) == snapshot
    assert store.get("t1", ["b"])[0].access_count == 3


def _adjacent(m: Memory, ids: list[str]) -> dict[str, list[str]]:
    out = m.store.adjacent(m.tenant_id, ids, 1, 1800 * 10**6, now_micros())
    assert all(distance == 1 for pairs in out.values() for _, distance in pairs)
    return {hit: [other for other, _ in pairs] for hit, pairs in out.items()}


def test_adjacent_turns_stay_in_one_conversation_and_scope(store: Store) -> None:
    m = Memory(store, HashEmbedder(DIM), settings=Settings(track_access=False))
    day1 = [e.id for e in m.add(["a1", "a2", "a3"], user_id="u", infer=False, at="2024-01-01T10:00:00Z").results]
    other = [e.id for e in m.add(["x1", "x2"], user_id="v", infer=False, at="2024-01-01T10:00:00Z").results]
    run = [e.id for e in m.add(["r1"], user_id="u", run_id="r", infer=False, at="2024-01-01T10:00:00Z").results]
    day2 = [e.id for e in m.add(["b1", "b2"], user_id="u", infer=False, at="2024-01-05T10:00:00Z").results]
    agent = [e.id for e in m.add(["g1", "g2"], agent_id="bot", infer=False, at="2024-01-05T10:00:00Z").results]
    out = _adjacent(m, [day1[1], day1[2], day2[0], other[0], run[0], agent[0]])
    assert out[agent[0]] == [agent[1]]  # user-less rows have neighbours among user-less rows only
    assert sorted(out[day1[1]]) == sorted([day1[0], day1[2]])
    assert out[day1[2]] == [day1[1]]  # not the other user's rows, not the run's turn, not the next day's
    assert out[day2[0]] == [day2[1]]
    assert out[other[0]] == [other[1]]
    assert run[0] not in out
    assert m.store.adjacent("elsewhere", [day1[1]], 1, 1800 * 10**6, now_micros()) == {}
    m.update(day1[0], text="a1 edited")  # an edited turn is a new version; the old one is no longer a neighbour
    assert out[day1[1]] != _adjacent(m, [day1[1]])[day1[1]]
    m.close()


def test_adjacent_from_a_searched_users_cache_is_what_sql_answers(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a search caches the user, `adjacent` answers from the cached rows; before, from SQL. Same answers,
    with superseded, categorised, expired and other-run rows among the turns, and after more turns arrive."""
    m = Memory(store, HashEmbedder(DIM), settings=Settings(track_access=False))
    at = "2024-01-01T10:00:00Z"
    turns = [e.id for e in m.add([f"turn {i}" for i in range(8)], user_id="u", infer=False, at=at).results]
    m.add(["run turn"], user_id="u", run_id="r", infer=False, at=at)
    ten = int(datetime(2024, 1, 1, 10, tzinfo=UTC).timestamp()) * 10**6
    gone = new_memory(
        "gone", "expired turn", unit(1), scope(tenant=m.tenant_id, user="u"), valid_from=ten, expires_at=1
    )
    add(store, gone, tenant=m.tenant_id)
    m.update(turns[2], text="turn 2 edited")
    m.delete(turns[5])
    m.add(["late turn"], user_id="u", infer=False, at="2024-01-03T10:00:00Z")
    fact = new_memory("fact", "a fact", unit(1), scope(tenant=m.tenant_id, user="u"), category="fact", valid_from=0)
    add(store, fact, tenant=m.tenant_id)
    ids = [r.id for r in m.get_all(user_id="u", include_superseded=True, limit=100).results] + ["nope"]
    current = {r.id for r in m.get_all(user_id="u", limit=100).results}
    in_sql: list[str] = []
    answer = store._adjacent_in_sql  # type: ignore[attr-defined]

    def spy(*args: Any) -> Any:
        in_sql.extend(args[-4])
        return answer(*args)

    monkeypatch.setattr(store, "_adjacent_in_sql", spy)

    def near(ids: list[str]) -> dict[str, list[tuple[str, int]]]:  # two places a side, with distances
        return store.adjacent(m.tenant_id, ids, 2, 1800 * 10**6, now_micros())

    for _ in range(2):
        cold = {id: sorted(turns) for id, turns in near(ids).items()}
        assert set(in_sql) == set(ids)
        in_sql.clear()
        m.search("turn", user_id="u")  # caches the user's rows
        warm = {id: sorted(turns) for id, turns in near(ids).items()}
        assert warm == cold and turns[3] in cold and "gone" not in {other for other, _ in cold[turns[7]]}
        assert not set(in_sql) & current  # from the cache
        in_sql.clear()
        ids += [e.id for e in m.add(["another turn"], user_id="u", infer=False, at=at).results]
        current = {r.id for r in m.get_all(user_id="u", limit=100).results}
    m.close()


def test_adjacent_turns_carry_their_distance(store: Store) -> None:
    m = Memory(store, HashEmbedder(DIM), settings=Settings(track_access=False))
    at = "2024-01-01T10:00:00Z"
    ids = [e.id for e in m.add(["t0", "t1", "t2", "t3", "t4", "t5"], user_id="u", infer=False, at=at).results]
    later = [e.id for e in m.add(["n0"], user_id="u", infer=False, at="2024-01-03T10:00:00Z").results]
    out = m.store.adjacent(m.tenant_id, [ids[2], ids[5]], 2, 1800 * 10**6, now_micros())
    assert sorted(out[ids[2]]) == sorted([(ids[1], 1), (ids[3], 1), (ids[0], 2), (ids[4], 2)])
    assert sorted(out[ids[5]]) == sorted([(ids[4], 1), (ids[3], 2)])  # the next day's turn is another conversation
    assert later[0] not in {other for other, _ in out[ids[5]]}
    m.close()


def test_index_text_is_searched_but_never_returned(store: Store) -> None:
    m = Memory(store, HashEmbedder(DIM), settings=Settings(track_access=False))
    turns = [{"content": "Which city did you move to?", "name": "Mel"}, {"content": "Lisbon, in May.", "name": "Ann"}]
    added = [e.id for e in m.add(turns, user_id="u", infer=False, at="2024-01-01T10:00:00Z").results]
    hits = m.search("city move", user_id="u", limit=2, explain=True).results
    answer = next(h for h in hits if h.id == added[1])
    assert answer.memory == "Lisbon, in May." and answer.scores and answer.scores["bm25"] > 0
    exported = [r for r in store.export_rows(m.tenant_id) if r["type"] == "memory" and r["id"] == added[1]]
    assert "city" in (exported[0]["index_text"] or "").lower()
