"""Shared helpers for the Retain benchmark harnesses (LoCoMo, LongMemEval, vs-mem0).

Not a test suite: these scripts measure retrieval quality, ingest throughput
and search latency of Retain on the development data in ../shared/data/.

What lives here:
- paths, logging to stderr, percentiles, token counting (MiniLM WordPiece);
- `CachingEmbedder`: an optional on-disk embedding cache (keyed by model id +
  text) so that repeated runs and retrieval experiments do not re-embed the
  same texts. Ingest timings taken with a warm cache are *not* real timings,
  and the harnesses say so in their output;
- `ContextEmbedder`: embeds a stored text together with extra context (for
  example its preceding turn) while the store keeps the plain text; a bench-
  only way to try "contextual" embeddings without touching `src/`;
- ranking metrics (recall@k, NDCG@k) over hits that may map to several gold ids;
- the retrieval prototype (`Variant`, `proto_search`): re-implements Retain's
  hybrid search (vector KNN + BM25, fused by reciprocal rank) from the store's
  own primitives, with knobs for the ideas under test (pool size, RRF k,
  signal weights, query stopword removal for BM25, neighbour-turn score
  propagation, MMR). With default knobs it reproduces `Memory.search`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from retain import Memory
from retain.embedders import Embedder
from retain.embedders.base import Vectors
from retain.inputs import make_scope
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


class ContextEmbedder(Embedder):
    """Embeds `alias[text]` instead of `text` for registered texts; the store keeps `text`.

    Used for experiments: embedding a turn together with its preceding turns, or embedding the
    plain turn while the stored (and BM25-indexed) text carries a prefix. Queries (not registered)
    embed as themselves. A text that occurs twice keeps its last alias.
    """

    def __init__(self, base: Embedder) -> None:
        self.base = base
        self.model_id = base.model_id  # type: ignore[misc]
        self.dimensions = base.dimensions
        self.alias: dict[str, str] = {}

    def embed(self, texts: Sequence[str]) -> Vectors:
        return self.base.embed([self.alias.get(t, t) for t in texts])


def make_embedder(spec: str, cache: str | None, *, context: bool = False) -> Embedder:
    """The embedder named by `spec` (e.g. local:minilm), optionally cached and context-wrapped."""
    from retain.embedders import embedder_from_spec

    embedder: Embedder = embedder_from_spec(spec, Settings.from_env())
    if cache:
        embedder = CachingEmbedder(embedder, Path(cache))
    if context:
        embedder = ContextEmbedder(embedder)
    return embedder


def cache_stats(embedder: Embedder) -> dict[str, int] | None:
    while isinstance(embedder, ContextEmbedder):
        embedder = embedder.base
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


# -- retrieval prototype ---------------------------------------------------------------------

_STOPWORD_TEXT = """
a about above after again against all am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
herself him himself his how i if in into is it its itself just me might more most must my myself no nor not now
of off on once only or other our ours ourselves out over own same she should so some such than that the their
theirs them themselves then there these they this those through to too under until up very was we were what
when where which while who whom why will with would you your yours yourself yourselves ever also like likely
"""
#: A small English stopword list for the BM25 side of queries (question words included).
STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_WORD = re.compile(r"[\w']+", re.UNICODE)


def strip_stopwords(query: str) -> str:
    words = [w for w in _WORD.findall(query) if w.lower().strip("'") not in STOPWORDS and not w.endswith("'s")]
    words += [w[:-2] for w in _WORD.findall(query) if w.endswith("'s")]
    return " ".join(words) if words else query


@dataclass(frozen=True)
class Variant:
    """Knobs of the prototype search. Defaults reproduce `Memory.search` (RRF k=60, pool 50 per signal)."""

    name: str = "proto"
    pool: int = 50  # candidates per signal, at least 2 * limit
    rrf_k: float = 60.0
    w_vec: float = 1.0
    w_kw: float = 1.0
    stop: bool = False  # drop stopwords from the BM25 query only
    nb: float = 0.0  # neighbour propagation: score += nb * (score(prev) + score(next)) over fused scores
    nbw: int = 1  # neighbour window (turns each side)
    nbmax: bool = False  # neighbour score = max(own, nb * anchor) instead of own + nb * anchor
    nbback: float = 1.0  # weight multiplier for propagation to *earlier* turns (1 = symmetric, 0 = only later)
    mmr: float = 0.0  # 0 = off; else MMR lambda (relevance weight) over the fused list
    recency: float = 0.0  # add recency * (normalised position of the memory in time) to the fused score
    score: bool = False  # fuse min-max-normalised scores (cosine, BM25) instead of reciprocal ranks
    sess: float = 0.0  # add sess * (the turn's session score / best session score) * best turn score
    prf: float = 0.0  # dense pseudo-relevance feedback: re-query with q + prf * mean(top-3 fused vectors)

    @classmethod
    def parse(cls, spec: str) -> Variant:
        """`proto`, or `NAME:key=value,key=value` (keys: the field names below)."""
        name, _, rest = spec.partition(":")
        kinds = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {"name": spec if rest else name}
        for part in filter(None, rest.split(",")):
            key, _, raw = part.partition("=")
            if key not in kinds or key == "name":
                raise ValueError(f"unknown variant knob {key!r} in {spec!r}; knobs: {sorted(kinds)}")
            kind = kinds[key]
            values[key] = raw in ("1", "true", "yes") if kind == "bool" else int(raw) if kind == "int" else float(raw)
        return cls(**values)


@dataclass
class TurnIndex:
    """What the harness knows about the stored turns of one user: order and neighbours by memory id."""

    position: dict[str, int] = field(default_factory=dict)  # memory id -> global order of ingest
    neighbours: dict[str, list[str]] = field(default_factory=dict)  # memory id -> same-session neighbours
    session: dict[str, int] = field(default_factory=dict)  # memory id -> session number

    def add_session(self, ids: Sequence[str], window: int = 3) -> None:
        base = len(self.position)
        number = len(set(self.session.values()))
        for i, mid in enumerate(ids):
            self.position[mid] = base + i
            self.session[mid] = number
            self.neighbours[mid] = [ids[j] for j in range(max(0, i - window), min(len(ids), i + window + 1))]


class ProtoSearcher:
    """Runs prototype variants against one `Memory`, caching query vectors across variants."""

    def __init__(self, memory: Memory) -> None:
        self.memory = memory
        self._vectors: dict[str, Any] = {}
        self._candidates: dict[tuple[str, str, int, bool], tuple[list[Any], list[Any]]] = {}

    def _vector(self, query: str) -> Any:
        if query not in self._vectors:
            self._vectors[query] = self.memory.embedder.embed([query])[0]
        return self._vectors[query]

    def search(self, query: str, user_id: str, limit: int, v: Variant, turns: TurnIndex | None) -> list[str]:
        """Memory ids, best first."""
        store = self.memory.store
        scope = make_scope(self.memory.tenant_id, user_id, None, None)
        pool = max(v.pool, 2 * limit)
        vector = self._vector(query)
        key = (user_id, query, pool, v.stop)
        if key not in self._candidates:
            now = time.time_ns() // 1000
            dense = store.vector_search(scope, vector, pool, None, None, now)
            kw_query = strip_stopwords(query) if v.stop else query
            sparse = store.keyword_search(scope, kw_query, pool, None, None, now)
            self._candidates[key] = (dense, sparse)
        dense, sparse = self._candidates[key]
        if v.prf:
            first = Variant(pool=v.pool, rrf_k=v.rrf_k, w_vec=v.w_vec, w_kw=v.w_kw, stop=v.stop)
            top = self.search(query, user_id, 3, first, None)
            vectors = store.vectors(self.memory.tenant_id, top)
            if vectors:
                q2 = vector + v.prf * np.mean([vectors[i] for i in top if i in vectors], axis=0)
                q2 = q2 / (np.linalg.norm(q2) or 1.0)
                dense = store.vector_search(scope, q2.astype(np.float32), pool, None, None, time.time_ns() // 1000)
        scores: dict[str, float] = {}
        for weight, cands in ((v.w_vec, dense), (v.w_kw, sparse)):
            if weight == 0 or not cands:
                continue
            if v.score:
                hi, lo = max(c.score for c in cands), min(c.score for c in cands)
                for cand in cands:
                    norm = (cand.score - lo) / (hi - lo) if hi > lo else 1.0
                    scores[cand.id] = scores.get(cand.id, 0.0) + weight * norm
                continue
            for rank, cand in enumerate(cands, start=1):
                scores[cand.id] = scores.get(cand.id, 0.0) + weight / (v.rrf_k + rank)
        if v.nb and turns is not None:
            base = dict(scores)
            for mid, s in base.items():
                for other in turns.neighbours.get(mid, []):
                    gap = turns.position.get(other, 0) - turns.position.get(mid, 0)
                    if other != mid and 0 < abs(gap) <= v.nbw:
                        weight = v.nb * (v.nbback if gap < 0 else 1.0)
                        if v.nbmax:
                            scores[other] = max(scores.get(other, 0.0), weight * s)
                        else:
                            scores[other] = scores.get(other, 0.0) + weight * s
        if v.sess and turns is not None and scores:
            by_session: dict[int, float] = {}
            for mid, sc in scores.items():
                if mid in turns.session:
                    by_session[turns.session[mid]] = by_session.get(turns.session[mid], 0.0) + sc
            best_session = max(by_session.values(), default=0.0) or 1.0
            best_turn = max(scores.values())
            for mid in scores:
                if mid in turns.session:
                    scores[mid] += v.sess * best_turn * by_session[turns.session[mid]] / best_session
        if v.recency and turns is not None and turns.position:
            n = max(len(turns.position) - 1, 1)
            top = max(scores.values(), default=0.0)
            for mid in scores:
                scores[mid] += v.recency * top * turns.position.get(mid, 0) / n
        ranked = sorted(scores, key=lambda mid: (-scores[mid], mid))
        if v.mmr:
            ranked = self._mmr(ranked[: max(3 * limit, 50)], scores, vector, v.mmr, limit)
        return ranked[:limit]

    def _mmr(self, ids: list[str], scores: dict[str, float], query: Any, lam: float, limit: int) -> list[str]:
        vectors = self.memory.store.vectors(self.memory.tenant_id, ids)
        ids = [i for i in ids if i in vectors]
        if not ids:
            return []
        top = max(scores[i] for i in ids) or 1.0
        rel = {i: scores[i] / top for i in ids}
        chosen: list[str] = []
        rest = list(ids)
        while rest and len(chosen) < limit:
            def gain(i: str) -> float:
                sim = max((float(vectors[i] @ vectors[j]) for j in chosen), default=0.0)
                return lam * rel[i] - (1 - lam) * sim

            best = max(rest, key=gain)
            chosen.append(best)
            rest.remove(best)
        return chosen + [i for i in ids if i not in chosen]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - start) * 1000.0
