from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from retain import ConfigError, ProviderError
from retain.embedders.openai import OpenAIEmbedder
from retain.llm._http import RetryPolicy


def _server(responses: list[httpx.Response], seen: list[dict]) -> httpx.MockTransport:  # type: ignore[type-arg]
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return responses.pop(0)

    return httpx.MockTransport(handle)


def _ok(vectors: list[list[float]]) -> httpx.Response:
    data = [{"index": i, "embedding": v} for i, v in reversed(list(enumerate(vectors)))]
    return httpx.Response(200, json={"data": data, "usage": {"prompt_tokens": 3}})


def test_embeds_in_order_normalised_and_batched() -> None:
    seen: list[dict] = []  # type: ignore[type-arg]
    transport = _server([_ok([[3, 4], [0, 2]]), _ok([[1, 0]])], seen)
    e = OpenAIEmbedder("m", api_key="k", dimensions=2, batch_size=2, transport=transport)
    out = e.embed(["a", "b", "c"])
    np.testing.assert_allclose(out, [[0.6, 0.8], [0, 1], [1, 0]], atol=1e-6)
    assert [s["input"] for s in seen] == [["a", "b"], ["c"]]
    assert e.model_id == "openai:m"


def test_outage_is_retried_with_backoff_then_succeeds() -> None:
    sleeps: list[float] = []
    transport = _server([httpx.Response(503), httpx.Response(429), _ok([[1, 0]])], [])
    e = OpenAIEmbedder(
        "m", api_key="k", dimensions=2, transport=transport, sleep=sleeps.append, retry=RetryPolicy(jitter=0)
    )
    assert e.embed(["a"]).shape == (1, 2)
    assert sleeps == [0.5, 1.0]


def test_bad_key_fails_at_once_and_probe_finds_dimensions() -> None:
    transport = _server([httpx.Response(401, json={"error": {"message": "bad key"}})], [])
    with pytest.raises(ProviderError, match="OPENAI_API_KEY") as info:
        OpenAIEmbedder("custom", api_key="k", transport=transport)
    assert info.value.retryable is False
    probed = OpenAIEmbedder("custom", api_key="k", transport=_server([_ok([[1, 2, 3]])], []))
    assert probed.dimensions == 3


def test_missing_key_names_the_fix() -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIEmbedder.from_env("text-embedding-3-small", env={})
