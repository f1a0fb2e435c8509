from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from retain import InvalidInputError, Memory
from retain.testing import HashEmbedder
from retain.transfer import export_jsonl, import_jsonl


def _populated(path: Path) -> Memory:
    m = Memory(str(path), HashEmbedder())
    (tea,) = m.add("I love tea", user_id="alice", run_id="s1", infer=False, metadata={"k": [1, 2]}).results
    m.update(tea.id, text="I hate tea", reason="changed mind")
    m.add(["I live in Oslo", "Bob likes jazz"], user_id="bob", agent_id="bot", infer=False)
    m.sessions("s1", user_id="alice").add_message("assistant", "noted")
    return m


def _snapshot(m: Memory) -> list[dict]:  # type: ignore[type-arg]
    rows = [r for r in m.store.export_rows(m.tenant_id)]
    return sorted(rows, key=lambda r: json.dumps(r, sort_keys=True))


def test_round_trip_is_lossless_including_history(tmp_path: Path) -> None:
    source = _populated(tmp_path / "a.db")
    buffer = io.StringIO()
    lines = export_jsonl(source, buffer)
    assert lines == 4 + 4 + 4  # memory versions, events, messages
    target = Memory(str(tmp_path / "b.db"), HashEmbedder())
    counts = import_jsonl(target, buffer.getvalue().splitlines())
    assert counts == {"imported": lines, "skipped": 0, "reembedded": 0}
    assert _snapshot(target) == _snapshot(source)
    assert "Bob likes jazz\nuser: I live in Oslo" in {r.get("index_text") for r in _snapshot(target)}
    current = target.search("tea", user_id="alice").results
    assert [h.memory for h in current] == ["I hate tea"]
    assert [h.event for h in target.history(current[0].id)] == ["ADD", "UPDATE"]
    assert target.store.check_integrity() == []
    again = import_jsonl(target, buffer.getvalue().splitlines())
    assert again["skipped"] == 8 and _snapshot(target) == _snapshot(source)


def test_import_into_another_embedder_reembeds(tmp_path: Path) -> None:
    source = _populated(tmp_path / "a.db")
    buffer = io.StringIO()
    export_jsonl(source, buffer)
    target = Memory(str(tmp_path / "b.db"), HashEmbedder(16))
    counts = import_jsonl(target, buffer.getvalue().splitlines())
    assert counts["reembedded"] == 4
    assert target.search("jazz", user_id="bob").results[0].memory == "Bob likes jazz"


@pytest.mark.parametrize(
    ("lines", "match"),
    [
        ([], "empty"),
        (['{"type": "memory"}'], "header"),
        (['{"type": "header", "format": "retain-jsonl", "version": 1}', "{oops"], "line 2: not JSON"),
        (['{"type": "header", "format": "retain-jsonl", "version": 1}', '{"type": "ghost"}'], "line 2: unknown row"),
        (['{"type": "header", "format": "retain-jsonl", "version": 1}', '{"type": "message", "id": "x"}'], "line 2:"),
        (['{"type": "header", "format": "retain-jsonl", "version": 9}'], "version 9"),
    ],
)
def test_malformed_files_fail_before_writing(tmp_path: Path, lines: list[str], match: str) -> None:
    target = Memory(str(tmp_path / "b.db"), HashEmbedder())
    with pytest.raises(InvalidInputError, match=match):
        import_jsonl(target, lines)
    assert target.store.counts()["messages"] == 0  # type: ignore[attr-defined]


def test_facets_travel_with_an_export_and_are_rebuilt_for_older_ones(tmp_path: Path) -> None:
    source = Memory(str(tmp_path / "a.db"), HashEmbedder())
    turn = "We moved to a quiet town near the coast last spring with all our furniture. I adopted a beagle named Rex."
    source.add(
        [{"role": "user", "content": turn}],
        user_id="u",
        infer=False,
    )
    buffer = io.StringIO()
    export_jsonl(source, buffer)
    lines = buffer.getvalue().splitlines()
    query = source.embedder.embed(["I adopted a beagle named Rex."])[0]
    older = [json.dumps({k: v for k, v in json.loads(line).items() if k != "facets"}) for line in lines]
    for name, export in (("b", lines), ("c", older)):
        target = Memory(str(tmp_path / f"{name}.db"), HashEmbedder())
        import_jsonl(target, export)
        (best,) = target.store.vector_search(target._scope("u", None, None), query, 1, None, None, 0)
        assert best.score == pytest.approx(1.0, abs=1e-5), name
        assert _snapshot(target) == _snapshot(source), name


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"facets": "not base64!"}, "facets: Value error, not base64"),
        ({"facets": "AAAA"}, "facets: Value error, not float32 values"),
        ({"facets": "AAAAAAAAAAA="}, "the facets are not rows of 64 dimensions"),
        ({"embedding": "AAAAAAAAAAA="}, "the embedding does not have 64 dimensions"),
    ],
)
def test_damaged_vectors_fail_the_import_before_writing(tmp_path: Path, change: dict, match: str) -> None:  # type: ignore[type-arg]
    source = _populated(tmp_path / "a.db")
    buffer = io.StringIO()
    export_jsonl(source, buffer)
    lines = buffer.getvalue().splitlines()
    first = next(i for i, line in enumerate(lines) if json.loads(line)["type"] == "memory")
    lines[first] = json.dumps(json.loads(lines[first]) | change)
    target = Memory(str(tmp_path / "b.db"), HashEmbedder())
    with pytest.raises(InvalidInputError, match=match):
        import_jsonl(target, lines)
    assert target.store.counts()["memories"] == 0  # type: ignore[attr-defined]
