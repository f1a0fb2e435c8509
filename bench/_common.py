"""Shared helpers for the Retain benchmark harnesses (LoCoMo, LongMemEval, vs-mem0).

Not a test suite: these scripts measure retrieval quality, ingest throughput
and search latency of Retain on the development data in ../shared/data/.

What lives here:
- paths, logging to stderr, percentiles, token counting (MiniLM WordPiece);
- `CachingEmbedder`: an optional on-disk embedding cache (keyed by model id +
  text) so that repeated runs and retrieval experiments do not re-embed the
  same texts. Ingest timings taken with a warm cache are *not* real timings,
  and the harnesses say so in their output;
- ranking metrics (recall@k, NDCG@k) over hits that may map to several gold ids;
- search variants (`Variant`): `Memory.search` itself with search-time
  settings changed (neighbour lift, MMR), over the same ingested store, so
  an idea is measured in the library, not in a re-implementation.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from retain import Memory
from retain.embedders import Embedder
from retain.embedders.base import Vectors
from retain.settings import Settings

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

_T0 = time.perf_counter()


def log(message: str) -> None:
    """Progress goes to stderr; stdout is for the report."""
    print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def parse_ks(text: str) -> list[int]:
    ks = sorted({int(part) for part in text.split(",") if part.strip()})
    if not ks or ks[0] < 1:
        raise ValueError(f"--k needs positive integers such as 1,5,10,25, got {text!r}")
    return ks


def percentile(values: Sequence[float], p: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), p)) if values else float("nan")


def mean(values: Iterable[float]) -> float:
    items = list(values)
    return float(sum(items) / len(items)) if items else float("nan")


def load_json(path: Path) -> Any:
    if str(path).endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def emit(summary: dict[str, Any], full: dict[str, Any] | None, json_out: str | None) -> None:
    """Write the full results (if asked) and print the summary as the last stdout line."""
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(full if full is not None else summary, indent=1, default=str))
        log(f"wrote {json_out}")
    print(json.dumps(summary, default=str), flush=True)


def rounded(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain fixed-width table on stdout."""
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(header)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


# -- tokens ---------------------------------------------------------------------------------


class TokenCounter:
    """Counts MiniLM WordPiece tokens (no special tokens, no truncation) with Retain's own tokenizer file."""

    method = "MiniLM WordPiece tokens of the returned memory texts (uncased BERT vocab, no truncation)"

    def __init__(self) -> None:
        from tokenizers import Tokenizer

        raw = resources.files("retain.embedders").joinpath("assets/minilm-tokenizer.json.gz").read_bytes()
        tokenizer = Tokenizer.from_str(gzip.decompress(raw).decode())
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        self._cache: dict[str, int] = {}

    def count(self, texts: Sequence[str]) -> int:
        new = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if new:
            for text, enc in zip(new, self._tokenizer.encode_batch(new, add_special_tokens=False), strict=True):
                self._cache[text] = len(enc.ids)
        return sum(self._cache[t] for t in texts)


# -- embedders ------------------------------------------------------------------------------


class CachingEmbedder(Embedder):
    """Wraps an embedder with a persistent cache keyed by sha1(model id, text). Thread-safe."""

    def __init__(self, base: Embedder, path: Path) -> None:
        self.base = base
        self.model_id = base.model_id  # type: ignore[misc]
        self.dimensions = base.dimensions
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=120, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, v BLOB)")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _key(self, text: str) -> str:
        return hashlib.sha1(f"{self.model_id}\x00{text}".encode()).hexdigest()

    def embed(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dimensions), dtype=np.float32)
        if not texts:
            return out
        keys = [self._key(t) for t in texts]
        found: dict[str, bytes] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, v FROM vec WHERE key IN ({marks})", chunk).fetchall())
        missing = [i for i, k in enumerate(keys) if k not in found]
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        for i, k in enumerate(keys):
            if k in found:
                out[i] = np.frombuffer(found[k], dtype=np.float32)
        if missing:
            fresh = self.base.embed([texts[i] for i in missing])
            out[missing] = fresh
            with self._lock:
                self._db.execute("BEGIN")
                self._db.executemany(
                    "INSERT OR REPLACE INTO vec VALUES (?, ?)",
                    [(keys[i], fresh[j].astype(np.float32).tobytes()) for j, i in enumerate(missing)],
                )
                self._db.execute("COMMIT")
        return out


def make_embedder(spec: str, cache: str | None) -> Embedder:
    """The embedder named by `spec` (e.g. local:minilm), optionally cached."""
    from retain.embedders import embedder_from_spec

    embedder: Embedder = embedder_from_spec(spec, Settings.from_env())
    if cache:
        embedder = CachingEmbedder(embedder, Path(cache))
    return embedder


def cache_stats(embedder: Embedder) -> dict[str, int] | None:
    if isinstance(embedder, CachingEmbedder):
        return {"hits": embedder.hits, "misses": embedder.misses}
    return None


def open_memory(db_path: Path, embedder: Embedder) -> Memory:
    """A fresh Retain store at `db_path` with the given embedder and the environment's other settings."""
    return Memory(store=str(db_path), embedder=embedder)


# -- metrics --------------------------------------------------------------------------------


def recall_at(ranked: Sequence[set[str]], gold: set[str], k: int) -> float:
    """Fraction of `gold` covered by the union of the top-k items' ids."""
    if not gold:
        return float("nan")
    found: set[str] = set()
    for ids in ranked[:k]:
        found |= ids
    return len(found & gold) / len(gold)


def any_at(ranked: Sequence[set[str]], gold: set[str], k: int) -> float:
    return float(recall_at(ranked, gold, k) > 0)


def all_at(ranked: Sequence[set[str]], gold: set[str], k: int) -> float:
    return float(recall_at(ranked, gold, k) == 1.0)


def ndcg_at(ranked: Sequence[set[str]], gold: set[str], k: int) -> float:
    """Binary-gain NDCG: an item gains 1 if it brings at least one not-yet-seen gold id."""
    if not gold:
        return float("nan")
    seen: set[str] = set()
    dcg = 0.0
    for rank, ids in enumerate(ranked[:k], start=1):
        new = (ids & gold) - seen
        if new:
            dcg += 1.0 / math.log2(rank + 1)
            seen |= new
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold), k) + 1))
    return dcg / ideal


# -- search variants -----------------------------------------------------------------------

#: Settings that only change how a search ranks, so variants can share one ingested store.
SEARCH_SETTINGS = (
    "keyword_weight",
    "speaker_boost",
    "time_boost",
    "neighbour_weight",
    "neighbour_weight_2",
    "mmr_lambda",
    "conversation_gap_seconds",
    "role_prior",
)


def add_retrieval_args(parser: argparse.ArgumentParser) -> None:
    """The options every recall harness shares: the embedder, its cache, and search variants."""
    parser.add_argument("--embedder", default="local:minilm")
    parser.add_argument(
        "--embed-cache",
        default=None,
        metavar="PATH",
        help="sqlite cache of embeddings (ingest timings then are not real; the output says so)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="SPEC",
        help="also score Memory.search with search settings changed, e.g. 'mmr:mmr_lambda=0.8' (repeatable)",
    )


@dataclass(frozen=True)
class Variant:
    """A named set of search-time `Settings` overrides, e.g. `mmr:mmr_lambda=0.8,neighbour_weight=0`."""

    name: str
    overrides: dict[str, float]

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition(":")
        overrides: dict[str, float] = {}
        for part in filter(None, rest.split(",")):
            key, _, raw = part.partition("=")
            if key not in SEARCH_SETTINGS:
                raise ValueError(f"unknown search setting {key!r} in {spec!r}; one of {SEARCH_SETTINGS}")
            overrides[key] = float(raw)
        return cls(spec if rest else name, overrides)

    def view(self, memory: Memory) -> Memory:
        """The same store and embedder, searched with these settings (the library's own search)."""
        view = object.__new__(Memory)
        view.__dict__.update(memory.__dict__)
        view.settings = replace(memory.settings, **self.overrides)  # type: ignore[arg-type]
        return view


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000.0
