"""A deterministic, dependency-free embedder for tests."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from ..embedders.base import Embedder, Vectors, normalise

_WORD = re.compile(r"\w+", re.UNICODE)


class HashEmbedder(Embedder):
    """Feature-hashes lower-cased words (and their 3-letter prefixes) into a fixed-size vector.

    Texts that share words get similar vectors, so tests of ranking mean
    something, and the same text always gives the same vector.
    """

    model_id: ClassVar[str] = "hash"

    def __init__(self, dimensions: int = 64) -> None:
        self.dimensions = dimensions
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls += 1
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                for feature in (word, word[:3] + "~"):
                    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
                    bucket = int.from_bytes(digest[:4], "little") % self.dimensions
                    out[row, bucket] += 1.0 if digest[4] & 1 else -1.0
            if not out[row].any():
                out[row, 0] = 1.0
        return normalise(out)
