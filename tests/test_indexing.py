from __future__ import annotations

import numpy as np

from retain.indexing import (
    CONTEXT_CHARS,
    FACET_REDUNDANT,
    MAX_FACETS,
    facet_texts,
    index_texts,
    keyword_query,
    split_facets,
)
from retain.models import Message


def test_index_text_is_the_speaker_line_then_the_turns_before_it() -> None:
    messages = [
        Message(content="Where did you go?", name="Ann"),
        Message(content="Lisbon, twice!", name="Bob"),
        Message(content="Nice", name="Ann"),
    ]
    out = index_texts(messages, [], context_turns=1)
    assert out == [
        "Ann: Where did you go?",
        "Bob: Lisbon, twice!\nAnn: Where did you go?",
        "Ann: Nice\nBob: Lisbon, twice!",
    ]


def test_earlier_turns_give_context_and_unnamed_turns_use_their_role() -> None:
    earlier = [Message(role="assistant", content="Any plans?")]
    out = index_texts([Message(content="A trip")], earlier, context_turns=2)
    assert out == ["A trip\nassistant: Any plans?"]


def test_a_turn_without_name_or_context_indexes_as_itself() -> None:
    assert index_texts([Message(content="hello")], [], context_turns=2) == [None]
    assert index_texts([Message(content="hello"), Message(content="x")], [], context_turns=0) == [None, None]


def test_long_context_turns_are_cut() -> None:
    long = Message(content="word " * 500)
    (text,) = index_texts([Message(content="short")], [long], context_turns=1)
    assert text is not None and text.startswith("short\nuser: word")
    assert len(text) < CONTEXT_CHARS + 40


def test_keyword_query_drops_stopwords_and_possessives() -> None:
    assert keyword_query("What did Caroline's sister research in 2022?") == "Caroline sister research 2022"
    assert keyword_query("what is it") == "what is it"  # nothing left: keep the query


def test_only_short_turns_get_context() -> None:
    long = " ".join(["word"] * 31)
    out = index_texts([Message(content="Q?", name="A"), Message(content=long, name="B")], [], 2, short_words=30)
    assert out == ["A: Q?", f"B: {long}"]
    assert index_texts([Message(content="Q?", name="A"), Message(content="ok", name="B")], [], 2)[1] == "B: ok\nA: Q?"


def test_a_user_turn_of_several_sentences_is_faceted_by_them() -> None:
    turn = "Can you suggest BBQ sauce recipes? Cheers!\nBy the way, I got a smoker last week."
    assert facet_texts(turn, "user") == ["Can you suggest BBQ sauce recipes?", "By the way, I got a smoker last week."]
    assert facet_texts(turn, "assistant") == []  # assistant turns run long: not faceted
    assert facet_texts("I got a smoker last week. Thanks!", "user") == []  # one sentence worth a vector
    many = " ".join(f"Sentence number {i} is here." for i in range(MAX_FACETS + 3))
    assert len(facet_texts(many, "user")) == MAX_FACETS


def test_split_facets_hands_each_turn_its_own_rows_without_redundant_ones() -> None:
    x, y = np.eye(2, dtype=np.float32)
    vectors = np.array([x, y, (x + y) / np.sqrt(2), y], dtype=np.float32)
    turns = np.array([y, x, (x + 0.01 * y) / np.linalg.norm(x + 0.01 * y)], dtype=np.float32)
    a, none, b = split_facets(vectors, [["x", "y"], [], ["z", "w"]], turns)
    assert none is None and a is not None and b is not None
    assert a.tolist() == [x.tolist()]  # y is its turn's own vector: redundant
    assert float(vectors[2] @ turns[2]) >= FACET_REDUNDANT
    assert b.tolist() == [y.tolist()]  # (x + y) / sqrt 2 is that close to its turn: dropped
    assert split_facets(vectors[:1], [["x"]], np.array([x])) == [None]
