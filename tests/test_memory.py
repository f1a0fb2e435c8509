from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from retain import InvalidInputError, Memory, Settings
from retain.embedders.base import Vectors
from retain.testing import HashEmbedder, ScriptedLLM


def test_add_raw_stores_each_message_with_its_source(memory: Memory) -> None:
    result = memory.add(
        ["I moved to Berlin", {"role": "assistant", "content": "Welcome to Berlin!", "name": "bot"}],
        user_id="alice",
        infer=False,
        metadata={"source": "chat"},
    )
    assert [e.event for e in result.results] == ["ADD", "ADD"]
    assert len(result.message_ids) == 2
    first = memory.get(result.results[0].id)
    assert first.memory == "I moved to Berlin"
    assert first.metadata == {"source": "chat", "role": "user"}
    assert first.source_message_ids == [result.message_ids[0]]
    second = memory.get(result.results[1].id)
    assert second.metadata == {"source": "chat", "role": "assistant", "name": "bot"}
    assert [m.content for m in memory.sessions("r", user_id="alice").messages] == []
    assert [m.id for m in memory.messages(_scope(memory, "alice"))] == result.message_ids


def _scope(memory: Memory, user: str):  # type: ignore[no-untyped-def]
    return memory._scope(user, None, None)


def test_search_ranks_relevant_memory_first_and_explains(memory: Memory) -> None:
    memory.add(["I love green tea", "My dog is called Rex", "I work as a nurse"], user_id="u", infer=False)
    result = memory.search("what is my dog called", user_id="u", explain=True, limit=2)
    assert len(result.results) == 2
    top = result.results[0]
    assert top.memory == "My dog is called Rex"
    assert top.scores is not None and top.scores["vector_rank"] == 1.0 and top.scores["keyword_rank"] == 1.0
    assert top.score == pytest.approx(1.0)
    assert memory.search("dog", user_id="u").results[0].scores is None


def test_keyword_only_match_is_found(memory: Memory) -> None:
    memory.add(["order number A77X9 shipped", "the weather is nice"], user_id="u", infer=False)
    hits = memory.search("A77X9", user_id="u", explain=True).results
    assert hits[0].memory == "order number A77X9 shipped"
    assert hits[0].scores is not None and hits[0].scores["bm25"] > 0


def test_threshold_drops_dissimilar_memories(memory: Memory) -> None:
    # Two conversations, so neither turn is indexed with the other as context.
    memory.add("tea tea tea", user_id="u", infer=False, at="2024-01-01T10:00:00Z")
    memory.add("completely unrelated words here", user_id="u", infer=False, at="2024-03-01T10:00:00Z")
    hits = memory.search("tea", user_id="u", threshold=0.5, explain=True).results
    assert [h.memory for h in hits] == ["tea tea tea"]
    assert all(h.scores and h.scores["vector"] >= 0.5 for h in hits)


def test_update_supersedes_and_history_shows_the_chain(memory: Memory) -> None:
    (added,) = memory.add("I love tea", user_id="u", infer=False).results
    event = memory.update(added.id, text="I can't stand tea anymore", reason="user changed their mind")
    assert event.event == "UPDATE" and event.previous_memory == "I love tea"
    old, new = memory.get(added.id), memory.get(event.id)
    assert old.valid_to is not None and old.superseded_by == new.id
    assert new.valid_to is None and new.memory == "I can't stand tea anymore"
    current = memory.get_all(user_id="u").results
    assert [r.id for r in current] == [new.id]
    everything = memory.get_all(user_id="u", include_superseded=True).results
    assert {r.id for r in everything} == {old.id, new.id}
    for id in (old.id, new.id):
        history = memory.history(id)
        assert [(h.event, h.old_memory, h.new_memory) for h in history] == [
            ("ADD", None, "I love tea"),
            ("UPDATE", "I love tea", "I can't stand tea anymore"),
        ]
        assert history[1].reason == "user changed their mind"
    with pytest.raises(InvalidInputError, match="no longer current"):
        memory.update(old.id, text="again")


def test_search_sees_only_current_versions_unless_as_of(memory: Memory) -> None:
    (added,) = memory.add("I love tea", user_id="u", infer=False).results
    before = datetime.now(UTC)
    time.sleep(0.01)
    memory.update(added.id, text="I hate tea")
    now_hits = [h.memory for h in memory.search("tea", user_id="u").results]
    assert now_hits == ["I hate tea"]
    past_hits = [h.memory for h in memory.search("tea", user_id="u", as_of=before).results]
    assert past_hits == ["I love tea"]
    assert memory.search("tea", user_id="u", as_of=before - timedelta(days=1)).results == []


def test_at_sets_valid_from(memory: Memory) -> None:
    when = datetime(2023, 5, 8, 13, 56, tzinfo=UTC)
    (added,) = memory.add("Went hiking", user_id="u", infer=False, at=when).results
    record = memory.get(added.id)
    assert record.valid_from == when
    assert memory.search("hiking", user_id="u", as_of="2023-05-09").results[0].id == added.id
    assert memory.search("hiking", user_id="u", as_of="2023-05-07").results == []


def test_update_metadata_only_keeps_text_and_vector(memory: Memory) -> None:
    (added,) = memory.add("I love tea", user_id="u", infer=False).results
    event = memory.update(added.id, metadata={"pinned": True})
    record = memory.get(event.id)
    assert record.memory == "I love tea" and record.metadata == {"pinned": True}
    old_vec = memory.store.vectors("default", [added.id])[added.id]
    new_vec = memory.store.vectors("default", [event.id])[event.id]
    assert (old_vec == new_vec).all()
    with pytest.raises(InvalidInputError, match="needs text= or metadata="):
        memory.update(event.id)


def test_delete_purges_every_version(memory: Memory) -> None:
    (added,) = memory.add("I love tea", user_id="u", infer=False).results
    updated = memory.update(added.id, text="I love coffee")
    counts = memory.delete(updated.id)
    assert (counts.memories, counts.vectors, counts.keyword_rows, counts.events) == (2, 2, 2, 2)
    assert memory.get_all(user_id="u", include_superseded=True).results == []
    assert memory.search("coffee", user_id="u").results == []
    assert memory.store.check_integrity() == []


def test_delete_all_purges_the_scope_only(memory: Memory) -> None:
    memory.add(["a1", "a2"], user_id="a", run_id="s1", infer=False)
    memory.add(["b1"], user_id="b", infer=False)
    counts = memory.delete_all(user_id="a")
    assert (counts.memories, counts.vectors, counts.keyword_rows, counts.events, counts.messages) == (2, 2, 2, 2, 2)
    assert memory.get_all(user_id="a").results == []
    assert [r.memory for r in memory.get_all(user_id="b").results] == ["b1"]
    assert memory.store.check_integrity() == []


def test_get_all_pages_newest_first(memory: Memory) -> None:
    texts = [f"fact number {i}" for i in range(7)]
    for text in texts:
        memory.add(text, user_id="u", infer=False)
    seen: list[str] = []
    cursor = None
    while True:
        page = memory.get_all(user_id="u", limit=3, cursor=cursor)
        seen += [r.memory for r in page.results]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(texts))


def test_scope_narrowing_by_agent_and_run(memory: Memory) -> None:
    memory.add("alice with bot1 in s1", user_id="alice", agent_id="bot1", run_id="s1", infer=False)
    memory.add("alice with bot2", user_id="alice", agent_id="bot2", infer=False)
    memory.add("bob with bot1", user_id="bob", agent_id="bot1", infer=False)
    memory.add("bot1 itself", agent_id="bot1", infer=False)

    def texts(**scope: str) -> set[str]:
        return {h.memory for h in memory.search("alice bob bot1 bot2 with itself", limit=50, **scope).results}

    assert texts(user_id="alice") == {"alice with bot1 in s1", "alice with bot2"}
    assert texts(agent_id="bot1") == {"alice with bot1 in s1", "bob with bot1", "bot1 itself"}
    assert texts(user_id="alice", agent_id="bot1") == {"alice with bot1 in s1"}
    assert texts(run_id="s1") == {"alice with bot1 in s1"}
    assert {r.memory for r in memory.get_all(agent_id="bot1").results} == texts(agent_id="bot1")


def test_sessions_keep_chat_history(memory: Memory) -> None:
    session = memory.sessions("s1", user_id="alice")
    session.add_message("user", "hi there")
    session.add_message("assistant", "hello!", name="bot")
    memory.sessions("s2", user_id="alice").add_message("user", "other session")
    assert [(m.role, m.content) for m in session.messages] == [("user", "hi there"), ("assistant", "hello!")]
    assert [m.content for m in session.recent(1)] == ["hello!"]
    assert session.clear() == 2
    assert session.messages == []
    assert [m.content for m in memory.sessions("s2", user_id="alice").messages] == ["other session"]
    with pytest.raises(InvalidInputError, match="empty"):
        session.add_message("user", " ")


def test_search_records_access_in_the_background(memory: Memory) -> None:
    (added,) = memory.add("I love tea", user_id="u", infer=False).results
    memory.search("tea", user_id="u")
    memory.search("tea", user_id="u")
    assert memory._access is not None
    memory._access.flush()
    record = memory.get(added.id)
    assert record.access_count == 2 and record.last_accessed_at is not None


def test_tenants_are_separate_views(memory: Memory) -> None:
    other = memory.for_tenant("acme")
    (mine,) = memory.add("default tenant secret", user_id="u", infer=False).results
    other.add("acme secret", user_id="u", infer=False)
    assert [h.memory for h in other.search("secret", user_id="u").results] == ["acme secret"]
    assert [h.memory for h in memory.search("secret", user_id="u").results] == ["default tenant secret"]
    from retain import NotFoundError

    with pytest.raises(NotFoundError):
        other.get(mine.id)
    with pytest.raises(NotFoundError):
        other.delete(mine.id)
    other.delete_all(user_id="u")
    assert [r.memory for r in memory.get_all(user_id="u").results] == ["default tenant secret"]


def test_a_tenant_view_shares_the_in_process_worker(tmp_path: Path) -> None:
    llm = ScriptedLLM()
    memory = Memory(str(tmp_path / "w.db"), HashEmbedder(), llm=llm, settings=Settings(worker_poll_seconds=0.05))
    view = memory.for_tenant("acme")
    view.start_worker()
    memory.start_worker()
    assert len(memory._workers) == 1 and view._workers is memory._workers
    memory.close()
    assert not memory._workers[0]._thread.is_alive(), "closing the Memory stops the worker its views started"  # type: ignore[union-attr]


def test_verbatim_turns_are_indexed_with_speaker_and_context_but_returned_verbatim(memory: Memory) -> None:
    turns = [
        {"content": "What did you research last week?", "name": "Mel"},
        {"content": "Adoption agencies, I want to build a family.", "name": "Caroline"},
        {"content": "That is wonderful.", "name": "Mel"},
    ]
    added = memory.add(turns, user_id="u", infer=False).results
    answer = memory.get(added[1].id)
    assert answer.memory == "Adoption agencies, I want to build a family."
    # The vector is the speaker line alone; the turns before it go to the keyword index only.
    vector = memory.store.vectors(memory.tenant_id, [answer.id])[answer.id]
    assert vector == pytest.approx(memory.embedder.embed(["Caroline: " + answer.memory])[0])
    # Found by the speaker's name and by the question it answers, which only its index text holds.
    hits = memory.search("Caroline research", user_id="u", limit=1, explain=True).results
    assert hits[0].id == added[1].id and hits[0].scores and hits[0].scores["bm25"] > 0
    assert hits[0].memory == "Adoption agencies, I want to build a family."


def test_context_comes_from_earlier_adds_of_the_same_conversation_only(memory: Memory) -> None:
    memory.add(
        {"content": "Which city is the zoo in?", "name": "Ann"}, user_id="u", infer=False, at="2024-01-01T10:00Z"
    )
    (same,) = memory.add("Oslo", user_id="u", infer=False, at="2024-01-01T10:05Z").results
    (later,) = memory.add("Oslo", user_id="w", infer=False, at="2024-01-01T10:05Z").results
    (next_day,) = memory.add("Bergen", user_id="u", infer=False, at="2024-01-02T10:00Z").results
    rows = {r["id"]: r for r in memory.store.export_rows(memory.tenant_id) if r["type"] == "memory"}
    assert rows[same.id]["index_text"] == "Oslo\nAnn: Which city is the zoo in?"
    assert rows[later.id]["index_text"] is None  # another user's conversation
    assert rows[next_day.id]["index_text"] is None  # a day later: another conversation


def test_a_hit_lifts_its_neighbouring_turns(tmp_path: Path) -> None:
    settings = Settings(track_access=False, index_context_turns=0, neighbour_weight=0.5)
    with Memory(str(tmp_path / "n.db"), HashEmbedder(), settings=settings) as m:
        ids = [
            e.id for e in m.add(["kiwi kiwi kiwi", "unrelated reply", "other words"], user_id="u", infer=False).results
        ]
        hits = m.search("kiwi", user_id="u", limit=3).results
        assert [h.id for h in hits][:2] == ids[:2]
        assert hits[1].score == pytest.approx(0.5 * hits[0].score)
    off = Settings(track_access=False, index_context_turns=0, neighbour_weight=0.0, neighbour_weight_2=0.0)
    with Memory(str(tmp_path / "n.db"), HashEmbedder(), settings=off) as m:
        assert m.search("kiwi", user_id="u", limit=3).results[1].score < 0.5 * hits[0].score


def test_a_hit_lifts_the_turns_two_places_away_less(tmp_path: Path) -> None:
    turns = ["kiwi kiwi kiwi", "unrelated reply", "other words", "more filler", "last one"]
    for second, lifted in ((0.3, True), (0.0, False)):
        settings = Settings(
            track_access=False, index_context_turns=0, neighbour_weight=0.5, neighbour_weight_2=second, keyword_weight=2
        )  # a keyword weight at which the unlifted turns' own scores stay below the lifts
        with Memory(str(tmp_path / f"n{second}.db"), HashEmbedder(), settings=settings) as m:
            ids = [e.id for e in m.add(turns, user_id="u", infer=False).results]
            scores = {h.id: h.score for h in m.search("kiwi", user_id="u", limit=5).results}
            top = scores[ids[0]]
            assert scores[ids[1]] == pytest.approx(0.5 * top)
            if lifted:
                assert scores[ids[2]] == pytest.approx(0.3 * top)
            else:
                assert scores.get(ids[2], 0.0) < 0.3 * top
            assert scores.get(ids[3], 0.0) < 0.3 * top  # three places away: never lifted


def test_a_query_naming_a_speaker_prefers_that_speakers_turns(tmp_path: Path) -> None:
    turns = [{"content": "I adopted a puppy", "name": "Ann"}, {"content": "I adopted a kitten", "name": "Bob"}]
    for boost, first in ((1.0, "I adopted a kitten"), (0.0, None)):
        settings = Settings(track_access=False, index_context_turns=0, speaker_boost=boost)
        with Memory(str(tmp_path / f"s{boost}.db"), HashEmbedder(), settings=settings) as m:
            m.add(turns, user_id="u", infer=False)
            hits = m.search("what did Bob adopt", user_id="u", limit=2).results
            if first is not None:
                assert hits[0].memory == first and hits[0].score > hits[1].score * 1.5
            else:
                assert hits[0].score < hits[1].score * 1.5


def test_a_speaker_named_only_as_the_owner_of_the_topic_is_not_boosted(tmp_path: Path) -> None:
    turns = [{"content": "I like the plan", "name": "Ann"}, {"content": "I like the plan", "name": "Bob"}]
    settings = Settings(track_access=False, index_context_turns=0, speaker_boost=1.0)
    with Memory(str(tmp_path / "m.db"), HashEmbedder(), settings=settings) as m:
        m.add(turns, user_id="u", infer=False)
        ann, bob = (
            m.search(f"what does {a} think about {b}'s plan", user_id="u", limit=2).results
            for a, b in (("Ann", "Bob"), ("Bob", "Ann"))
        )
        assert ann[0].metadata["name"] == "Ann" and ann[0].score > 1.5 * ann[1].score
        assert bob[0].metadata["name"] == "Bob" and bob[0].score > 1.5 * bob[1].score
        both = m.search("what do Ann and Bob think about the plan", user_id="u", limit=2).results
        assert both[0].score < 1.5 * both[1].score  # both speak: both boosted


class _QuerySpy(HashEmbedder):
    """Records the texts embedded one at a time (the queries)."""

    def __init__(self) -> None:
        super().__init__()
        self.queries: list[str] = []

    def embed(self, texts: Sequence[str]) -> Vectors:
        if len(texts) == 1:
            self.queries.append(texts[0])
        return super().embed(texts)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_speaker_the_query_names_is_left_to_the_boost_and_the_rest_matched_by_content(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    turns = [{"content": "My sister adopted a kitten", "name": "Bob"}, {"content": "Hi Bob, Bob!", "name": "Ann"}]
    for boost, embedded in ((1.0, "what did sister adopt"), (0.0, "what did Bob's sister adopt")):
        spy = _QuerySpy()
        settings = Settings(track_access=False, index_context_turns=0, speaker_boost=boost)
        fresh_database = request.getfixturevalue("new_postgres_database") if backend == "postgres" else None
        store = fresh_database() if fresh_database else str(tmp_path / f"n{boost}.db")
        with Memory(store, spy, settings=settings) as m:
            m.add(turns, user_id="u", agent_id="ag", infer=False)
            hits = m.search("what did Bob's sister adopt", user_id="u", limit=2).results
            assert spy.queries == [embedded]
            assert hits[0].memory == "My sister adopted a kitten"
            m._embed_query.cache_clear()
            across_users = m.search("what did Bob's sister adopt", agent_id="ag", limit=2).results  # names: the hits'
            assert spy.queries[-1] == embedded and across_users[0].memory == "My sister adopted a kitten"
            m.search("what did Zed adopt", user_id="u", limit=2)  # not a speaker: kept
            assert spy.queries[-1] == "what did Zed adopt"


def test_a_date_in_the_query_prefers_memories_of_that_time_counted_from_at(tmp_path: Path) -> None:
    asked = datetime(2023, 3, 25, 18, 0)
    for boost in (1.0, 0.0):
        settings = Settings(track_access=False, index_context_turns=0, time_boost=boost)
        with Memory(str(tmp_path / f"t{boost}.db"), HashEmbedder(), settings=settings) as m:
            m.add(["I bought a smoker"], user_id="u", infer=False, at=asked - timedelta(days=40))
            m.add(["I bought a smoker"], user_id="u", infer=False, at=asked - timedelta(days=10))
            hits = m.search("what did I buy 10 days ago", user_id="u", limit=2, at=asked).results
            if boost:
                assert hits[0].valid_from.date() == (asked - timedelta(days=10)).date()
                assert hits[0].score > 1.5 * hits[1].score
            else:
                assert hits[0].score < 1.5 * hits[1].score
            # Without `at` the query is asked now, and ten days ago holds nothing.
            now = m.search("what did I buy 10 days ago", user_id="u", limit=2).results
            assert now[0].score < 1.5 * now[1].score


def test_a_question_prefers_the_turns_of_the_side_it_asks_about(tmp_path: Path) -> None:
    turns = [
        {"role": "user", "content": "which hotel in Miami"},
        {"role": "assistant", "content": "which hotel in Miami: try the Biltmore"},
    ]
    for prior in (1.0, 0.0):
        settings = Settings(track_access=False, index_context_turns=0, neighbour_weight=0.0, role_prior=prior)
        with Memory(str(tmp_path / f"r{prior}.db"), HashEmbedder(), settings=settings) as m:
            m.add(turns, user_id="u", infer=False)
            mine = m.search("which hotel in Miami", user_id="u", limit=2).results
            yours = m.search("which hotel in Miami did you recommend", user_id="u", limit=2).results
            if prior:
                assert mine[0].metadata["role"] == "user" and mine[0].score >= 1.5 * mine[1].score
                assert yours[0].metadata["role"] == "assistant"
            else:
                assert mine[0].score < 1.5 * mine[1].score
                assert yours[0].metadata["role"] == "user"


def test_ids_increase_strictly_in_creation_order() -> None:
    from retain.memory import new_id

    ids = [new_id() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(i[14] == "7" for i in ids)  # still UUIDv7


def test_a_sentence_said_in_passing_finds_its_turn_by_vector(tmp_path: Path) -> None:
    m = Memory(str(tmp_path / "f.db"), HashEmbedder(), settings=Settings(track_access=False))
    turn = (
        "Can you suggest good sauce recipes for a big garden party with friends, family and many neighbours "
        "tonight? By the way, I bought a smoker last week."
    )
    (hit, said) = m.add(
        [{"role": "user", "content": turn}, {"role": "assistant", "content": turn}], user_id="u", infer=False
    ).results
    query = m.embedder.embed(["By the way, I bought a smoker last week."])[0]
    scope = m._scope("u", None, None)
    scores = {c.id: c.score for c in m.store.vector_search(scope, query, 5, None, None, 0)}
    assert scores[hit.id] == pytest.approx(1.0, abs=1e-5)  # its facet is the query's sentence
    assert scores[said.id] < 0.95  # the assistant's same words, one vector for the whole turn
    updated = m.update(hit.id, text="I bought a smoker last week. It smokes ribs well.")
    scores = {c.id: c.score for c in m.store.vector_search(scope, query, 5, None, None, 0)}
    assert hit.id not in scores and scores[updated.id] < 0.99  # the new text's facets, not the old ones
    fact = m.embedder.embed(["It smokes ribs well."])[0]
    assert m.store.vector_search(scope, fact, 1, None, None, 0)[0].score == pytest.approx(1.0, abs=1e-5)
    m.close()


def test_facets_can_be_turned_off(tmp_path: Path) -> None:
    settings = Settings(track_access=False, index_facets=False)
    m = Memory(str(tmp_path / "nf.db"), HashEmbedder(), settings=settings)
    turn = (
        "Can you suggest good sauce recipes for a big garden party with friends, family and many neighbours "
        "tonight? By the way, I bought a smoker last week."
    )
    (hit,) = m.add([{"role": "user", "content": turn}], user_id="u", infer=False).results
    query = m.embedder.embed(["By the way, I bought a smoker last week."])[0]
    (found,) = m.store.vector_search(m._scope("u", None, None), query, 1, None, None, 0)
    assert found.id == hit.id and found.score < 0.95  # the turn's own vector only
    m.close()
