"""Bad input fails with a clear error before anything is written."""

from __future__ import annotations

import pytest

from retain import InvalidInputError, Memory, NotFoundError, Settings
from retain.testing import HashEmbedder


def _count(memory: Memory) -> int:
    return memory.store.counts()["memories"]  # type: ignore[attr-defined, no-any-return]


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.add("hello", infer=False),
        lambda m: m.search("hello"),
        lambda m: m.get_all(),
        lambda m: m.delete_all(),
        lambda m: m.sessions(None),
    ],
)
def test_no_scope_is_rejected(memory: Memory, call) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=r"No scope given|non-empty"):
        call(memory)


@pytest.mark.parametrize("bad", ["", "   \n\t", ["ok", "  "], [], {"role": "user", "content": ""}])
def test_empty_messages_are_rejected_and_nothing_is_written(memory: Memory, bad) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match="empty"):
        memory.add(bad, user_id="u", infer=False)
    assert _count(memory) == 0


def test_oversized_message_names_the_limit(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = Memory(str(tmp_path / "r.db"), HashEmbedder(), settings=Settings(max_message_chars=100))
    with pytest.raises(InvalidInputError, match="over the limit of 100") as info:
        m.add(["fine", "x" * 101], user_id="u", infer=False)
    assert "RETAIN_MAX_MESSAGE_CHARS" in str(info.value)
    assert _count(m) == 0
    with pytest.raises(InvalidInputError, match="limit of 100"):
        m.search("q" * 101, user_id="u")
    m.close()


def test_too_many_messages_in_one_call(tmp_path) -> None:  # type: ignore[no-untyped-def]
    m = Memory(str(tmp_path / "r.db"), HashEmbedder(), settings=Settings(max_messages_per_add=3))
    with pytest.raises(InvalidInputError, match="limit of 3"):
        m.add(["a", "b", "c", "d"], user_id="u", infer=False)
    m.close()


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"role": "robot", "content": "hi"}, "role"),
        ({"content": 3}, "content"),
        (42, "must be a string"),
        ([None], "must be a string or a dict"),
    ],
)
def test_malformed_messages(memory: Memory, bad, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=match):
        memory.add(bad, user_id="u", infer=False)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"user_id": ""}, "user_id must be a non-empty"),
        ({"user_id": "a\x00b"}, "control characters"),
        ({"user_id": "x" * 300}, "longer than 256"),
        ({"user_id": 5}, "user_id must be a non-empty string"),
    ],
)
def test_bad_ids(memory: Memory, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=match):
        memory.add("hello", infer=False, **kwargs)


def test_unknown_ids_raise_not_found(memory: Memory) -> None:
    for call in (memory.get, memory.delete, memory.history, lambda i: memory.update(i, text="x")):
        with pytest.raises(NotFoundError, match="no-such-id"):
            call("no-such-id")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"limit": 0}, "limit must be an integer from 1"),
        ({"limit": True}, "limit"),
        ({"threshold": 2.0}, "threshold"),
        ({"as_of": "yesterday"}, "as_of must be a datetime"),
    ],
)
def test_bad_search_arguments(memory: Memory, kwargs, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidInputError, match=match):
        memory.search("q", user_id="u", **kwargs)


def test_bad_metadata_and_cursor(memory: Memory) -> None:
    with pytest.raises(InvalidInputError, match="JSON-serialisable"):
        memory.add("hi", user_id="u", infer=False, metadata={"when": object()})
    with pytest.raises(InvalidInputError, match="string keys"):
        memory.add("hi", user_id="u", infer=False, metadata={1: "x"})
    with pytest.raises(InvalidInputError, match="cursor"):
        memory.get_all(user_id="u", cursor="abc")


def test_infer_without_llm_names_the_fix(memory: Memory) -> None:
    from retain import ConfigError

    with pytest.raises(ConfigError, match="RETAIN_LLM=") as info:
        memory.add("I like tea", user_id="u")
    assert "infer=False" in str(info.value)


def test_nul_characters_are_refused_before_any_backend_sees_them(memory: Memory) -> None:
    """PostgreSQL cannot store U+0000 in text or jsonb; SQLite could, so both refuse it alike."""
    with pytest.raises(InvalidInputError, match="NUL"):
        memory.add("tea\x00time", user_id="u", infer=False)
    with pytest.raises(InvalidInputError, match="NUL"):
        memory.add("tea time", user_id="u", infer=False, metadata={"k": "a\x00b"})
    assert memory.get_all(user_id="u").results == []
