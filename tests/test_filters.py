from __future__ import annotations

from typing import Any

import pytest

from retain import InvalidInputError, Memory
from retain.filters import parse_filters

ROWS: list[dict[str, Any]] = [
    {"name": "a", "city": "Berlin", "year": 2020, "score": 1.5, "tags": ["x", "y"], "vip": True, "n": 1},
    {"name": "b", "city": "Munich", "year": 2022, "score": 3.0, "tags": ["y"], "vip": False, "n": "1"},
    {"name": "c", "city": "Berlin", "year": 2024, "nested": {"k": "v"}, "note": "hello world"},
    {"name": "d", "empty": None},
]


@pytest.fixture
def loaded(memory: Memory) -> Memory:
    for row in ROWS:
        memory.add(f"memory {row['name']}", user_id="u", infer=False, metadata=row)
    return memory


CASES: list[tuple[dict[str, Any], set[str]]] = [
    ({"city": "Berlin"}, {"a", "c"}),
    ({"city": {"eq": "Berlin"}, "year": {"gt": 2020}}, {"c"}),
    ({"city": {"ne": "Berlin"}}, {"b", "d"}),
    ({"city": {"in": ["Munich", "Paris"]}}, {"b"}),
    ({"city": {"nin": ["Munich"]}}, {"a", "c", "d"}),
    ({"year": {"gte": 2022}}, {"b", "c"}),
    ({"year": {"lt": 2022}}, {"a"}),
    ({"year": {"lte": 2022, "gte": 2021}}, {"b"}),
    ({"score": {"gt": 2}}, {"b"}),
    ({"tags": {"contains": "x"}}, {"a"}),
    ({"tags": {"contains": "y"}}, {"a", "b"}),
    ({"note": {"contains": "world"}}, {"c"}),
    ({"vip": True}, {"a"}),
    ({"vip": False}, {"b"}),
    ({"n": 1}, {"a"}),
    ({"n": "1"}, {"b"}),
    ({"nested.k": "v"}, {"c"}),
    ({"empty": None}, {"a", "b", "c", "d"}),
    ({"OR": [{"city": "Munich"}, {"year": 2024}]}, {"b", "c"}),
    ({"AND": [{"city": "Berlin"}, {"NOT": {"year": 2020}}]}, {"c"}),
    ({"NOT": {"city": "Berlin"}}, {"b", "d"}),
    ({"metadata.name": "d"}, {"d"}),
]


@pytest.mark.parametrize(("where", "expected"), CASES)
def test_filter_semantics_in_get_all_and_search(loaded: Memory, where: dict[str, Any], expected: set[str]) -> None:
    listed = {r.metadata["name"] for r in loaded.get_all(user_id="u", filters=where).results}
    assert listed == expected
    found = {h.metadata["name"] for h in loaded.search("memory", user_id="u", filters=where, limit=50).results}
    assert found == expected


def test_column_filters(loaded: Memory) -> None:
    assert len(loaded.get_all(user_id="u", filters={"category": None}).results) == 4
    assert loaded.get_all(user_id="u", filters={"created_at": {"lt": "2000-01-01"}}).results == []
    assert len(loaded.get_all(user_id="u", filters={"created_at": {"gt": "2000-01-01T00:00:00+00:00"}}).results) == 4


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"city": {"like": "B%"}}, "'like'"),
        ({"and": [{"a": 1}]}, "upper-case AND"),
        ({"OR": []}, "'OR' needs a non-empty list"),
        ({"OR": {"a": 1}}, "'OR' needs a non-empty list"),
        ({"a": {"in": "x"}}, "'in' on 'a' needs a non-empty list"),
        ({"a": {"gt": True}}, "'gt' on 'a' needs a number or a string"),
        ({"a": {"eq": [1]}}, "got list"),
        ({"a": {}}, "empty operator object"),
        ({'a"b': 1}, "Invalid filter key"),
        ({"created_at": {"gt": "soon"}}, "ISO-8601"),
        ({"NOT": "x"}, "non-empty object"),
    ],
)
def test_malformed_filters_name_the_problem(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        parse_filters(raw)


def test_deep_nesting_is_refused() -> None:
    raw: dict[str, Any] = {"a": 1}
    for _ in range(20):
        raw = {"NOT": raw}
    with pytest.raises(InvalidInputError, match="deeper"):
        parse_filters(raw)
