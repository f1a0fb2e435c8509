"""The real local embedder: offline, normalised, 256-token truncation, meaningful similarity."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retain import ConfigError
from retain.embedders import embedder_from_spec
from retain.embedders import minilm as minilm_module
from retain.embedders.minilm import MAX_TOKENS, MiniLMEmbedder, MiniLMFloatEmbedder, quantised_model_file


def test_vectors_are_unit_length_and_order_preserving(minilm) -> None:  # type: ignore[no-untyped-def]
    texts = ["short", "a much longer sentence about the weather in Berlin today", "tea"]
    vectors = minilm.embed(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[2], minilm.embed(["tea"])[0], atol=1e-6)
    assert minilm.embed([]).shape == (0, 384)


def test_similarity_is_semantic(minilm) -> None:  # type: ignore[no-untyped-def]
    q, near, far = minilm.embed(["where does the user live", "I moved to Berlin last year", "I like pizza"])
    assert float(q @ near) > float(q @ far)


def test_truncates_at_256_tokens_not_128(minilm) -> None:  # type: ignore[no-untyped-def]
    head = "word " * 150
    a, b = minilm.embed([head + "tea " * 200, head + "rocket " * 200])
    assert float(a @ b) < 0.99, "text past token 128 must still count"
    c, d = minilm.embed([head + "filler " * 200 + "tea", head + "filler " * 200 + "rocket"])
    np.testing.assert_allclose(c, d, atol=1e-6)  # past token 256 it is cut
    assert MAX_TOKENS == 256


def test_unknown_embedder_spec_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="local:<model>"):
        embedder_from_spec("nope:thing")
    with pytest.raises(ConfigError, match="local:minilm-float"):
        embedder_from_spec("local:bert-large")


def test_int8_compute_stays_close_to_float_but_is_its_own_vector_space(minilm) -> None:  # type: ignore[no-untyped-def]
    float_model = embedder_from_spec("local:minilm-float")
    assert isinstance(float_model, MiniLMFloatEmbedder) and isinstance(minilm, MiniLMEmbedder)
    assert float_model.model_id != minilm.model_id, "a store must refuse to mix the two models' vectors"
    texts = ["hi", "where does the user live", "I moved to Berlin last year and love the lakes in summer"]
    cosines = (minilm.embed(texts) * float_model.embed(texts)).sum(axis=1)
    assert cosines.min() > 0.95 and cosines.max() < 0.99999, cosines


def test_converted_model_is_reused_and_converted_again_when_damaged(tmp_path: Path) -> None:
    cached = quantised_model_file()  # the session's conversion
    target = tmp_path / cached.name
    target.write_bytes(cached.read_bytes())
    target.with_suffix(".sha256").write_text(cached.with_suffix(".sha256").read_text())
    assert quantised_model_file(tmp_path) == target
    assert target.read_bytes() == cached.read_bytes(), "a valid cached file is used as it is"

    minilm_module._verified.discard(target)
    target.write_bytes(target.read_bytes()[:1000])  # a crash or a full disk left half a file
    assert quantised_model_file(tmp_path) == target
    assert target.read_bytes() == cached.read_bytes(), "the damaged file is converted again, identically"
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "no conversion leftovers"


def test_unwritable_cache_is_a_clear_error(tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(ConfigError, match="RETAIN_MODEL_DIR"):
        quantised_model_file(blocked / "retain")


def test_done_when_command_runs_offline(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "HF_HUB_OFFLINE": "1",
        "no_proxy": "*",
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    env.pop("RETAIN_STORE", None)
    code = (
        "from retain import Memory; m=Memory(); m.add('I moved to Berlin', user_id='a', infer=False); "
        "print(m.search('where does the user live', user_id='a'))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "I moved to Berlin" in out.stdout
    assert (tmp_path / "data" / "retain" / "retain.db").exists()
