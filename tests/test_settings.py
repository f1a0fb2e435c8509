from __future__ import annotations

from pathlib import Path

import pytest

from retain import ConfigError, Settings


def test_defaults_put_the_store_in_the_data_dir_not_tmp() -> None:
    settings = Settings.from_env({"XDG_DATA_HOME": "/srv/data"})
    assert settings.store == "sqlite:////srv/data/retain/retain.db"
    assert settings.embedder == "local:minilm"
    assert settings.llm is None


def test_env_values_are_cast_strictly() -> None:
    s = Settings.from_env(
        {
            "RETAIN_STORE": "sqlite:///x.db",
            "RETAIN_MAX_MESSAGE_CHARS": "10",
            "RETAIN_TRACK_ACCESS": "false",
            "RETAIN_INDEX_FACETS": "0",
            "RETAIN_CATEGORIES": "a, b",
        }
    )
    assert (s.store, s.max_message_chars, s.track_access, s.categories) == ("sqlite:///x.db", 10, False, ("a", "b"))
    assert (s.index_facets, Settings().index_facets) == (False, True)


def test_retrieval_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "RETAIN_INDEX_CONTEXT_TURNS": "0",
            "RETAIN_NEIGHBOUR_WEIGHT": "0",
            "RETAIN_NEIGHBOUR_WEIGHT_2": "0.25",
            "RETAIN_KEYWORD_WEIGHT": "2.5",
            "RETAIN_MMR_LAMBDA": "0.8",
            "RETAIN_SPEAKER_BOOST": "0",
            "RETAIN_TIME_BOOST": "2",
            "RETAIN_ROLE_PRIOR": "0.5",
            "RETAIN_VECTOR_CACHE_MB": "0",
        }
    )
    assert s.vector_cache_mb == 0
    assert (s.neighbour_weight_2, Settings().neighbour_weight_2) == (0.25, 0.4)
    assert (Settings().neighbour_weights, Settings(neighbour_weight_2=0).neighbour_weights) == ((0.6, 0.4), (0.6,))
    assert (s.index_context_turns, s.neighbour_weight, s.keyword_weight, s.mmr_lambda) == (0, 0.0, 2.5, 0.8)
    assert (s.speaker_boost, s.time_boost, s.role_prior) == (0.0, 2.0, 0.5)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("RETAIN_MAX_MESSAGE_CHARS", "ten", "not an integer"),
        ("RETAIN_MAX_MESSAGE_CHARS", "-1", "positive"),
        ("RETAIN_TRACK_ACCESS", "yes", "use true, false, 1 or 0"),
        ("RETAIN_INDEX_CONTEXT_TURNS", "-1", "0 or more"),
        ("RETAIN_NEIGHBOUR_WEIGHT", "1.5", r"\[0, 1\]"),
        ("RETAIN_NEIGHBOUR_WEIGHT_2", "-0.1", r"\[0, 1\]"),
        ("RETAIN_KEYWORD_WEIGHT", "0", "positive"),
        ("RETAIN_MMR_LAMBDA", "0", r"\(0, 1\]"),
        ("RETAIN_SPEAKER_BOOST", "-1", "0 or more"),
        ("RETAIN_TIME_BOOST", "-1", "0 or more"),
        ("RETAIN_ROLE_PRIOR", "-1", "0 or more"),
        ("RETAIN_VECTOR_CACHE_MB", "-5", "0 or more"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Settings.from_env({name: value})
    assert name in str(info.value)


def test_env_file_fills_gaps_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nRETAIN_EMBEDDER=hash:32\nRETAIN_STORE='sqlite:///from-file.db'\n")
    s = Settings.from_env({"RETAIN_STORE": "sqlite:///from-env.db"}, env_file=env_file)
    assert s.embedder == "hash:32"
    assert s.store == "sqlite:///from-env.db"
