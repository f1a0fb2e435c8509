from __future__ import annotations

from datetime import UTC, datetime

import pytest

from retain.models import MemoryRecord
from retain.ranking import Fused, admit, boost_in_windows, boost_speakers, diversify, fuse, lift_neighbours


def _f(id: str, score: float) -> Fused:
    return Fused(id, score, 1, None, None)


def test_neighbours_are_lifted_to_a_fraction_of_the_hit_never_added() -> None:
    fused = [_f("a", 1.0), _f("b", 0.45), _f("c", 0.2)]
    out = lift_neighbours(fused, {"a": ["c", "n"], "b": ["c"]}, 0.5, new_ok=True)
    scores = {f.id: f.score for f in out}
    assert scores == {"a": 1.0, "b": 0.45, "c": 0.5, "n": 0.5}
    assert [f.id for f in out] == ["a", "c", "n", "b"]


def test_a_higher_own_score_is_kept() -> None:
    out = lift_neighbours([_f("a", 1.0), _f("b", 0.9)], {"a": ["b"]}, 0.5, new_ok=True)
    assert [(f.id, f.score) for f in out] == [("a", 1.0), ("b", 0.9)]


def test_without_new_ok_only_candidates_are_lifted() -> None:
    out = lift_neighbours([_f("a", 1.0), _f("b", 0.1)], {"a": ["b", "n"]}, 0.5, new_ok=False)
    assert [(f.id, f.score) for f in out] == [("a", 1.0), ("b", 0.5)]


def test_mmr_moves_a_near_duplicate_below_a_different_hit() -> None:
    import numpy as np

    v = {
        "a": np.array([1.0, 0.0], dtype=np.float32),
        "a2": np.array([1.0, 0.0], dtype=np.float32),
        "b": np.array([0.0, 1.0], dtype=np.float32),
    }
    fused = [_f("a", 1.0), _f("a2", 0.95), _f("b", 0.8), _f("novec", 0.7)]
    assert [f.id for f in diversify(fused, v, 0.8)] == ["a", "b", "a2", "novec"]
    assert [f.id for f in diversify(fused, v, 1.0)] == ["a", "a2", "b", "novec"]


def test_keyword_weight_lets_a_keyword_first_beat_a_vector_first() -> None:
    from retain.store.base import Candidate

    dense, sparse = [Candidate("a", 0.9)], [Candidate("z", 3.0)]
    assert [f.id for f in fuse(dense, sparse, k=10)] == ["a", "z"]  # a tie, broken by id
    fused = fuse(dense, sparse, k=10, keyword_weight=2.0)
    assert [f.id for f in fused] == ["z", "a"]
    assert fused[0].score == pytest.approx(2 / 3)


def _record(id: str, name: str | None) -> MemoryRecord:
    now = datetime.now(UTC)
    return MemoryRecord(
        id=id,
        memory="x",
        category=None,
        metadata={} if name is None else {"name": name},
        user_id="u",
        agent_id=None,
        run_id=None,
        lineage_id=id,
        hash="h",
        created_at=now,
        updated_at=now,
        valid_from=now,
        valid_to=None,
        superseded_by=None,
        source_message_ids=[],
        access_count=0,
        last_accessed_at=None,
        expires_at=None,
    )


def test_turns_of_a_speaker_the_query_names_are_boosted() -> None:
    fused = [_f("mel", 1.0), _f("caro", 0.6), _f("none", 0.55)]
    records = {"mel": _record("mel", "Mel"), "caro": _record("caro", "Caroline"), "none": _record("none", None)}
    out = boost_speakers("What did caroline research?", fused, records, 1.0)
    assert [(f.id, f.score) for f in out] == [("caro", 1.2), ("mel", 1.0), ("none", 0.55)]
    assert boost_speakers("What did Carol research?", fused, records, 1.0) == fused  # whole names only


def test_memories_in_a_named_window_are_boosted() -> None:
    fused = [_f("a", 1.0), _f("b", 0.6), _f("c", 0.4)]
    out = boost_in_windows(fused, {"a": 5, "b": 10, "c": 20}, [(10, 20)], 1.0)
    assert [(f.id, f.score) for f in out] == [("b", 1.2), ("a", 1.0), ("c", 0.4)]
    assert boost_in_windows(fused, {"a": 5}, [], 1.0) == fused


def test_admitted_candidates_score_as_a_vector_rank_alone_and_known_ones_keep_theirs() -> None:
    from retain.store.base import Candidate

    fused = fuse([Candidate("a", 0.9)], [Candidate("a", 3.0)], k=10, keyword_weight=2.0)
    out = admit(fused, [Candidate("a", 0.9), Candidate("n", 0.5)], k=10, keyword_weight=2.0)
    assert [(f.id, round(f.score, 4)) for f in out] == [("a", 1.0), ("n", round((1 / 12) / (3 / 11), 4))]
