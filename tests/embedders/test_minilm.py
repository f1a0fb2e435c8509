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
from retain.embedders.minilm import MAX_TOKENS


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
    with pytest.raises(ConfigError, match="local:minilm"):
        embedder_from_spec("local:bert-large")


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
