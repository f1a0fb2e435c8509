from __future__ import annotations

import pytest

from retain.ranking import (
    Fused,
    asked_role,
    boost_in_windows,
    boost_speakers,
    diversify,
    fuse,
    lift_neighbours,
    named_speakers,
    prefer_role,
    voices,
    without_speakers,
)
from retain.store.base import Origin


def _f(id: str, score: float) -> Fused:
    return Fused(id, score, 1, None, None)


def test_neighbours_are_lifted_to_a_fraction_of_the_hit_never_added() -> None:
    fused = [_f("a", 1.0), _f("b", 0.45), _f("c", 0.2)]
    out = lift_neighbours(fused, {"a": [("c", 1), ("n", 1)], "b": [("c", 1)]}, [0.5], new_ok=True)
    scores = {f.id: f.score for f in out}
    assert scores == {"a": 1.0, "b": 0.45, "c": 0.5, "n": 0.5}
    assert [f.id for f in out] == ["a", "c", "n", "b"]


def test_a_higher_own_score_is_kept() -> None:
    out = lift_neighbours([_f("a", 1.0), _f("b", 0.9)], {"a": [("b", 1)]}, [0.5], new_ok=True)
    assert [(f.id, f.score) for f in out] == [("a", 1.0), ("b", 0.9)]


def test_without_new_ok_only_candidates_are_lifted() -> None:
    out = lift_neighbours([_f("a", 1.0), _f("b", 0.1)], {"a": [("b", 1), ("n", 1)]}, [0.5], new_ok=False)
    assert [(f.id, f.score) for f in out] == [("a", 1.0), ("b", 0.5)]


def test_turns_two_places_away_are_lifted_by_the_second_weight() -> None:
    fused = [_f("a", 1.0), _f("b", 0.5), _f("x", 0.3)]
    adjacent = {"a": [("n1", 1), ("n2", 2), ("n3", 3)], "b": [("x", 1)]}
    out = lift_neighbours(fused, adjacent, [0.7, 0.4], new_ok=True)
    scores = {f.id: f.score for f in out}
    assert scores["n1"] == pytest.approx(0.7) and scores["n2"] == pytest.approx(0.4)
    assert "n3" not in scores  # beyond the weights given
    assert scores["x"] == pytest.approx(0.35)  # the max over its hits: b's 0.7 x 0.5 beats nothing else
    assert [f.id for f in out] == ["a", "n1", "b", "n2", "x"]
    # With one weight, the turns two places away are left alone.
    assert "n2" not in {f.id for f in lift_neighbours(fused, adjacent, [0.7], new_ok=True)}


def test_a_turn_near_two_hits_takes_the_larger_lift() -> None:
    fused = [_f("a", 1.0), _f("b", 0.9)]
    out = lift_neighbours(fused, {"a": [("m", 2)], "b": [("m", 1)]}, [0.7, 0.4], new_ok=True)
    assert {f.id: f.score for f in out}["m"] == pytest.approx(0.63)  # b's adjacent lift, not a's 0.4


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


def test_turns_of_a_speaker_the_query_names_are_boosted() -> None:
    fused = [_f("mel", 1.0), _f("caro", 0.6), _f("none", 0.55)]
    origins = {"mel": Origin(0, "user", "Mel"), "caro": Origin(0, "user", "Caroline"), "none": Origin(0, None, None)}
    out = boost_speakers(fused, origins, frozenset({"Caroline"}), 1.0)
    assert [(f.id, f.score) for f in out] == [("caro", 1.2), ("mel", 1.0), ("none", 0.55)]
    assert boost_speakers(fused, origins, frozenset(), 1.0) == fused


def test_speakers_are_named_as_whole_words_in_any_case() -> None:
    speakers = {"Mel", "Caroline", "Mary Ann"}
    assert named_speakers("What did caroline and MEL research?", speakers) == {"Caroline", "Mel"}
    assert named_speakers("What did Carol research? Melons?", speakers) == frozenset()
    assert named_speakers("Where does Mary Ann live?", speakers) == {"Mary Ann"}
    assert named_speakers("What will Will do?", {"Will"}) == {"Will"}
    assert named_speakers("what will I do?", {"Will"}) == frozenset()  # a common word: only as written


def test_named_speakers_are_taken_out_of_what_the_query_asks() -> None:
    named = frozenset({"Melanie", "Caroline", "Mel"})
    assert without_speakers("What do Melanie's kids like?", named) == "What do kids like?"
    assert without_speakers("Did melanie’s and Caroline's paintings sell?", named) == "Did and paintings sell?"
    assert without_speakers("Where is Mel going?", named) == "Where is going?"
    assert without_speakers("Melanie?", named) == "Melanie?"  # nothing else left: the query as it is
    assert without_speakers("Who is Mel?", named) == "Who is Mel?"  # only stopwords left: it asks about Mel
    assert without_speakers("What do Melanie's kids like?", frozenset()) == "What do Melanie's kids like?"
    assert without_speakers("What will Will's dog do?", {"Will"}) == "What will dog do?"


def test_a_speaker_named_only_as_an_owner_beside_another_is_the_topic_not_the_voice() -> None:
    two = frozenset({"Melanie", "Caroline"})
    assert voices("What does Melanie think about Caroline's decision to adopt?", two) == {"Melanie"}
    assert voices("What did Caroline say about Melanie’s painting?", two) == {"Caroline"}
    assert voices("Who is Melanie and Caroline's favorite artist?", two) == two  # joint owners
    assert voices("Did Melanie's and Caroline's paintings sell?", two) == two  # all owners: all kept
    assert voices("What did Melanie say about Caroline's talk to Caroline?", two) == two  # also named plainly
    assert voices("What do Melanie's kids like?", frozenset({"Melanie"})) == {"Melanie"}
    assert voices("What did Will say about Ann's dog?", frozenset({"Will", "Ann"})) == {"Will"}


def test_memories_in_a_named_window_are_boosted() -> None:
    fused = [_f("a", 1.0), _f("b", 0.6), _f("c", 0.4)]
    origins = {id: Origin(at, "user", None) for id, at in (("a", 5), ("b", 10), ("c", 20))}
    out = boost_in_windows(fused, origins, [(10, 20)], 1.0)
    assert [(f.id, f.score) for f in out] == [("b", 1.2), ("a", 1.0), ("c", 0.4)]
    assert boost_in_windows(fused, origins, [], 1.0) == fused


@pytest.mark.parametrize(
    ("query", "role"),
    [
        ("What breed is my dog?", "user"),
        ("Can you suggest a hotel for my trip to Miami?", "user"),
        ("You recommended five bottles to me; which were they?", "assistant"),
        ("Can you remind me of that vegan eatery you mentioned?", "assistant"),
        ("Following up on our previous conversation about binaural beats", "assistant"),
        ("what was the hostel you told me about", "assistant"),
        ("Which hotel did you recommend?", "assistant"),
        ("What do you suggest I cook tonight?", "user"),
    ],
)
def test_a_query_about_what_the_assistant_said_asks_for_its_turns(query: str, role: str) -> None:
    assert asked_role(query) == role


def test_unnamed_turns_in_the_other_role_are_damped_named_and_roleless_memories_kept() -> None:
    records = {
        "a": Origin(0, "assistant", None),
        "u": Origin(0, "user", None),
        "f": Origin(0, None, None),
        "g": Origin(0, "assistant", "bot"),
    }
    fused = [_f("a", 1.0), _f("f", 0.8), _f("u", 0.6), _f("g", 0.55)]
    out = prefer_role(fused, records, "user", 1.0)
    assert [(f.id, f.score) for f in out] == [("f", 0.8), ("u", 0.6), ("g", 0.55), ("a", 0.5)]
    assert [f.id for f in prefer_role(fused, records, "assistant", 1.0)] == ["a", "f", "g", "u"]
