"""Embeddings from any OpenAI-compatible `/embeddings` endpoint (OpenAI, vLLM, Ollama, LM Studio, ...).

Retries and error mapping are the LLM providers' (`retain.llm._http`), so both
seams behave the same under rate limits and outages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import ClassVar

import httpx
import numpy as np

from ..errors import ConfigError, ProviderError
from ..llm._http import RetryPolicy, Sleep, error_from_response, read_json, send_with_retry
from .base import Embedder, Vectors, normalise

KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PROVIDER = "openai embeddings"


class OpenAIEmbedder(Embedder):
    model_id: ClassVar[str] = ""

    def __init__(
        self,
        model: str,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        dimensions: int | None = None,
        batch_size: int = 128,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
        retry: RetryPolicy | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.model = model
        self.model_id = f"openai:{model}"  # type: ignore[misc]
        self._url = base_url.rstrip("/") + "/embeddings"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=timeout, transport=transport)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._batch_size = batch_size
        known = dimensions or KNOWN_DIMENSIONS.get(model)
        self.dimensions = known if known is not None else int(self._request(["dimension probe"]).shape[1])

    @classmethod
    def from_env(cls, model: str, env: Mapping[str, str] | None = None) -> OpenAIEmbedder:
        env = os.environ if env is None else env
        base_url = env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        api_key = env.get("OPENAI_API_KEY")
        if not api_key and base_url == DEFAULT_BASE_URL:
            raise ConfigError(
                "OPENAI_API_KEY is not set: export it, or set OPENAI_BASE_URL to a local OpenAI-compatible server."
            )
        dims = env.get("RETAIN_EMBEDDER_DIMENSIONS")
        return cls(model, api_key=api_key, base_url=base_url, dimensions=int(dims) if dims else None)

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        parts = [self._request(list(texts[i : i + self._batch_size])) for i in range(0, len(texts), self._batch_size)]
        out = np.concatenate(parts)
        if out.shape[1] != self.dimensions:
            raise ProviderError(
                f"{PROVIDER} returned {out.shape[1]} dimensions, expected {self.dimensions}.", provider=PROVIDER
            )
        return out

    def _request(self, batch: list[str]) -> Vectors:
        response = send_with_retry(
            self._client,
            lambda: self._client.build_request(
                "POST", self._url, json={"model": self.model, "input": batch}, headers=self._headers
            ),
            provider=PROVIDER,
            policy=self._retry,
            sleep=self._sleep,
        )
        if response.status_code != 200:
            raise error_from_response(response, PROVIDER, key_env="OPENAI_API_KEY")
        body = read_json(response, PROVIDER)
        try:
            rows = sorted(body["data"], key=lambda item: item["index"])
            vectors = np.array([row["embedding"] for row in rows], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise ProviderError(f"{PROVIDER} returned an unexpected body: {exc}", provider=PROVIDER) from exc
        if vectors.ndim != 2 or len(vectors) != len(batch):
            raise ProviderError(
                f"{PROVIDER} returned {len(vectors)} vectors for {len(batch)} texts.", provider=PROVIDER
            )
        return normalise(vectors)
