"""Search latency and ingest throughput of Retain on a big SQLite store.

What is measured, and why:

* `search_p50_ms` / `search_p95_ms` / `search_mean_ms`: the wall time of one
  whole `Memory.search` call for a user who owns `--user` memories inside a
  store of `--total` memories spread over `--users` users. That is what an
  application waits for before it can build a prompt: embedding the query with
  the real local MiniLM model, exact vector KNN in the user's partition, BM25
  over the user's keyword postings, fusion, and fetching the records. Every
  query is distinct, so the query-embedding cache never hides the model.
* A breakdown of the same queries through the store's own calls (embed,
  `vector_search`, `keyword_search`, `adjacent`, `origins`, `similarity`, `get`), to show where the
  time goes.
* `ingest_per_s`: messages per second through the real
  `Memory.add(..., infer=False)` in batches of `--ingest-batch`, into a fresh
  user of the same big store: embedding, validation and the transaction.

The store is filled with synthetic memories written straight through
`SQLiteStore.write` (the same code path `Memory.add` ends in) with random unit
vectors, since embedding a million texts would take hours on a laptop and KNN
is exact, so its cost does not depend on the vectors' values. The texts are
chat-memory sentences built from templates and a Zipf-distributed vocabulary
(the whole words of the MiniLM tokenizer, which are roughly in frequency
order), so BM25 meets realistic posting-list lengths: common words match most
of a user's memories, rare ones only a few. Users are interleaved the way they
would be in a store that grew over time, so one user's rows are scattered
through the file.

Run from the repository root: `python bench/latency.py`. Progress goes to
stderr; the last line on stdout is one JSON object with the results.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import numpy.typing as npt

from retain.embedders.minilm import MiniLMEmbedder
from retain.indexing import keyword_query
from retain.memory import PRIOR_POOL, Memory, new_id, text_hash
from retain.models import Scope
from retain.ranking import fuse
from retain.settings import Settings
from retain.store.base import NewEvent, NewMemory, WriteBatch
from retain.store.sqlite import SQLiteStore
from retain.testing import ScriptedLLM
from retain.timeutil import now_micros

TENANT = "default"
QUERIED_USER = "user-00000"
INGEST_USER_PREFIX = "bench-ingest-"
DIMENSIONS = MiniLMEmbedder.dimensions
#: The vector space the synthetic stores are labelled with. Their vectors are random unit vectors, no
#: model's, so queries from the current local embedder search them alike; the label stays fixed so that
#: stores filled before the embedder's id changed are reused.
SYNTHETIC_SPACE = "all-MiniLM-L6-v2-int8"
#: Candidates per signal, as `Memory.search` asks for them with limit=10.
POOL = 50

# -- text ------------------------------------------------------------------------------

#: Words that the vocabulary must not draw: they come from the templates instead.
_FUNCTION_WORDS_TEXT = """
    a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have having
    he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
    nor not now of off on once only or other our ours ourselves out over own same she should so some such than
    that the their theirs them themselves then there these they this those through to too under until up very
    was we were what when where which while who whom why will with would you your yours yourself yourselves
    also said one two first new may many made used later such"""
FUNCTION_WORDS = frozenset(_FUNCTION_WORDS_TEXT.split())

RELATIONS = [
    "sister",
    "brother",
    "mother",
    "father",
    "wife",
    "husband",
    "partner",
    "son",
    "daughter",
    "boss",
    "colleague",
    "friend",
    "neighbour",
    "cousin",
    "grandmother",
    "teacher",
    "doctor",
    "landlord",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
NAMES = [
    "Alice",
    "Bob",
    "Carla",
    "Dmitri",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemal",
    "Lena",
    "Marco",
    "Nadia",
    "Omar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Wei",
    "Yusuf",
]

# `{0}`.. are Zipf-drawn vocabulary words; `{rel}`, `{day}`, `{month}`, `{name}` come from the lists above.
MEMORY_TEMPLATES = [
    "I prefer {0} over {1} when I am working on {2}.",
    "My {rel} lives near {0} and works in {1}.",
    "My {rel} is planning a trip to {0} with {name} in {month}.",
    "I have been learning {0} and want to get better at {1} this year.",
    "Remember that I am allergic to {0} and do not like {1}.",
    "We talked about the {0} {1} and what to do with the {2} after the meeting.",
    "I usually go to {0} on {day} mornings before the {1} class.",
    "My favourite {0} is {1} because it reminds me of {2}.",
    "The {0} project deadline moved to {day}; {name} is handling the {1}.",
    "I bought a new {0} and a {1} for my {rel}'s birthday in {month}.",
    "Call {name} about the {0} and the {1} next week.",
    "User is vegetarian but eats {0} occasionally, and dislikes {1}.",
    "User works as a {0} at a {1} company and manages {2} people.",
    "I want to read more about {0} and {1} before the {2} conference.",
    "The car needs a new {0}; the garage near {1} quoted a fair price.",
    "My {rel} {name} recommended {0} for the {1} problem.",
    "User's goal is to run a {0} race in {month} and to improve their {1}.",
    "We decided to use {0} instead of {1} for the {2} at work.",
    "I moved to {0} last {month} and still miss the {1}.",
    "User asked for reminders about {0} every {day}.",
    "I find {0} stressful, especially when {1} and {2} happen together.",
    "The doctor said to avoid {0} and to take {1} twice a day.",
    "I am saving money for a {0} and a trip to {1}.",
    "User likes {0} music, {1} films and books about {2}.",
]
QUERY_TEMPLATES = [
    "what do I prefer when working on {0}?",
    "where does my {rel} live?",
    "when is my {rel} travelling to {0}?",
    "what am I learning about {0}?",
    "am I allergic to {0}?",
    "what did we decide about the {0}?",
    "what is my favourite {0}?",
    "when is the {0} project deadline?",
    "what should I buy for my {rel}'s birthday?",
    "who should I call about the {0}?",
    "does the user eat {0}?",
    "what does the user do for work at the {0} company?",
    "{0} {1}",
    "anything about {0} or {1}?",
    "what did {name} recommend for {0}?",
    "what are my goals for {month}?",
    "remind me what I said about {0} and {1}",
    "which music and films do I like?",
    "what did the doctor say about {0}?",
    "what am I saving money for?",
]
TAILS = [" I mentioned {0} and {1} too.", " Also {0}, {1} and {2} came up.", " It was about {0} really.", ""]


def _vocabulary(limit: int) -> list[str]:
    """Whole lowercase words of the MiniLM tokenizer, in vocabulary order (roughly by frequency)."""
    raw = resources.files("retain.embedders").joinpath("assets/minilm-tokenizer.json.gz").read_bytes()
    vocab: dict[str, int] = json.loads(gzip.decompress(raw))["model"]["vocab"]
    words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w.isalpha() and w.isascii()]
    return [w for w in words if len(w) >= 3 and w not in FUNCTION_WORDS][:limit]


class TextGenerator:
    """Memories and queries from templates whose content words follow a Zipf law."""

    def __init__(self, seed: int, vocabulary_size: int = 20_000, zipf_s: float = 1.05) -> None:
        self.rng = np.random.default_rng(seed)
        self.words = _vocabulary(vocabulary_size)
        weights = 1.0 / np.arange(1, len(self.words) + 1) ** zipf_s
        self._cdf = np.cumsum(weights / weights.sum())

    def _draw(self, n: int) -> npt.NDArray[np.intp]:
        return np.minimum(np.searchsorted(self._cdf, self.rng.random(n)), len(self.words) - 1)

    def _fill(self, templates: Sequence[str], n: int, tails: bool) -> list[str]:
        rng, words = self.rng, self.words
        picks = rng.integers(0, len(templates), n)
        tail_picks = rng.integers(0, len(TAILS), n) if tails else np.full(n, len(TAILS) - 1)
        drawn = iter(self._draw(n * 6).tolist())
        small = rng.integers(0, 1 << 30, (n, 4)).tolist()
        out = []
        for i in range(n):
            slots = [words[next(drawn)] for _ in range(3)]
            r = small[i]
            text = templates[picks[i]].format(
                *slots,
                rel=RELATIONS[r[0] % len(RELATIONS)],
                day=DAYS[r[1] % 7],
                month=MONTHS[r[2] % 12],
                name=NAMES[r[3] % len(NAMES)],
            )
            out.append(text + TAILS[tail_picks[i]].format(*(words[next(drawn)] for _ in range(3))))
        return out

    def memories(self, n: int) -> list[str]:
        return self._fill(MEMORY_TEMPLATES, n, tails=True)

    def queries(self, n: int) -> list[str]:
        """`n` distinct queries (so the query-embedding cache never answers one)."""
        seen: dict[str, None] = {}
        while len(seen) < n:
            seen.update(dict.fromkeys(self._fill(QUERY_TEMPLATES, n, tails=False)))
        return list(seen)[:n]

    def unit_vectors(self, n: int) -> npt.NDArray[np.float32]:
        v = self.rng.standard_normal((n, DIMENSIONS), dtype=np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v


# -- filling ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FillSpec:
    total: int
    user: int
    users: int
    seed: int
    #: Facet vectors per memory (a verbatim user turn of that many sentences; 0: none, as before facets).
    facets: int = 0

    def as_dict(self) -> dict[str, int]:
        spec = {"total": self.total, "user": self.user, "users": self.users, "seed": self.seed}
        return spec | ({"facets": self.facets} if self.facets else {})  # older sidecars stay reusable


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def user_sequence(spec: FillSpec, rng: np.random.Generator) -> npt.NDArray[np.int32]:
    """Which user owns each memory, in insertion order: user 0 owns exactly `spec.user`, interleaved."""
    others = rng.integers(1, max(spec.users, 2), spec.total - spec.user, dtype=np.int32)
    owners = np.concatenate([np.zeros(spec.user, dtype=np.int32), others])
    rng.shuffle(owners)
    return owners


def fill(store: SQLiteStore, spec: FillSpec, batch_size: int) -> float:
    """Write `spec.total` memories (each with its ADD event) in transactions of `batch_size`."""
    gen = TextGenerator(spec.seed)
    owners = user_sequence(spec, gen.rng)
    scopes = [Scope(tenant_id=TENANT, user_id=f"user-{u:05d}") for u in range(max(spec.users, 2))]
    reason = "stored verbatim (infer=False)"
    started = time.perf_counter()
    for start in range(0, spec.total, batch_size):
        n = min(batch_size, spec.total - start)
        texts = gen.memories(n)
        vectors = gen.unit_vectors(n)
        at = now_micros()
        batch = WriteBatch(at=at)
        for text, vector, owner in zip(texts, vectors, owners[start : start + n].tolist(), strict=True):
            id = new_id()
            memory = NewMemory(
                id=id,
                lineage_id=id,
                scope=scopes[owner],
                text=text,
                category=None,
                metadata={"role": "user"},
                hash=text_hash(text),
                valid_from=at,
                source_message_ids=[],
                embedding=vector,
                facets=gen.unit_vectors(spec.facets) if spec.facets else None,
            )
            batch.memories.append(memory)
            batch.events.append(
                NewEvent(
                    memory_id=id,
                    lineage_id=id,
                    scope=memory.scope,
                    event="ADD",
                    old_text=None,
                    new_text=text,
                    reason=reason,
                    actor="api",
                    source_message_ids=[],
                )
            )
        store.write(TENANT, batch)
        done = start + n
        elapsed = time.perf_counter() - started
        if done == spec.total or (done // batch_size) % 10 == 0:
            rate = done / elapsed
            log(f"filled {done:,}/{spec.total:,} ({rate:,.0f}/s, eta {(spec.total - done) / rate:,.0f} s)")
    return time.perf_counter() - started


def sidecar(db: Path) -> Path:
    return db.with_name(db.name + ".bench.json")


def count_memories(db: Path, user_id: str | None = None) -> int:
    con = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        if user_id is None:
            row = con.execute("SELECT count(*) FROM memories").fetchone()
        else:
            row = con.execute(
                "SELECT count(*) FROM memories WHERE tenant_id = ? AND user_id = ?", (TENANT, user_id)
            ).fetchone()
        assert row is not None
        return int(row[0])
    finally:
        con.close()


def reusable(db: Path, spec: FillSpec) -> bool:
    """A previous run left exactly this fill behind (its sidecar says so and the counts agree)."""
    try:
        recorded = json.loads(sidecar(db).read_text())
    except (OSError, ValueError):
        return False
    if not db.exists() or recorded != spec.as_dict():
        return False
    return count_memories(db) == spec.total and count_memories(db, QUERIED_USER) == spec.user


def remove_db(db: Path) -> None:
    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"), sidecar(db)):
        path.unlink(missing_ok=True)


def checkpoint(db: Path) -> None:
    con = apsw.Connection(str(db))
    try:
        con.set_busy_timeout(60_000)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


def file_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


# -- measuring -------------------------------------------------------------------------------


def summary(samples_s: Sequence[float]) -> dict[str, float]:
    ms = sorted(s * 1000.0 for s in samples_s)

    def pct(p: float) -> float:
        return round(float(np.percentile(ms, p)), 2)

    return {
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "mean": round(statistics.fmean(ms), 2),
        "max": round(ms[-1], 2),
    }


class Stopwatch:
    """Seconds since it started or since the last lap."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


def measure_search(memory: Memory, queries: Sequence[str], warmup: Sequence[str]) -> tuple[list[float], float]:
    """Wall time of each whole `Memory.search`, and the mean number of hits."""
    for q in warmup:
        memory.search(q, user_id=QUERIED_USER)
    times, hits = [], 0
    for q in queries:
        watch = Stopwatch()
        result = memory.search(q, user_id=QUERIED_USER)
        times.append(watch.lap())
        hits += len(result.results)
    return times, hits / max(len(queries), 1)


def measure_breakdown(
    store: SQLiteStore, embedder: MiniLMEmbedder, queries: Sequence[str]
) -> dict[str, dict[str, float]]:
    """The stages of a search timed one by one, as `Memory.search` runs them."""
    scope = Scope(tenant_id=TENANT, user_id=QUERIED_USER)
    names = ("embed", "keyword_search", "vector_search", "adjacent", "origins", "similarity", "get")
    stages: dict[str, list[float]] = {k: [] for k in names}
    keyword_hits = []
    for q in queries:
        now = now_micros()
        watch = Stopwatch()
        vector = embedder.embed([q])[0]
        stages["embed"].append(watch.lap())
        with store.snapshot():  # as in Memory.search: the keyword search reads the version the rest use
            sparse = store.keyword_search(scope, keyword_query(q), POOL, None, None, now)
            stages["keyword_search"].append(watch.lap())
            keyword_hits.append(len(sparse))
            dense = store.vector_search(scope, vector, POOL, None, None, now)
            stages["vector_search"].append(watch.lap())
            fused = fuse(dense, sparse)
            watch.lap()
            window = len(Settings().neighbour_weights)  # as `Memory.search` with the default settings
            store.adjacent(TENANT, [f.id for f in fused[:20]], window, 1800 * 1_000_000, now)
            stages["adjacent"].append(watch.lap())
            store.origins(TENANT, [f.id for f in fused[:PRIOR_POOL]])
            stages["origins"].append(watch.lap())
            store.similarity(TENANT, [f.id for f in fused if f.vector is None], vector)
            stages["similarity"].append(watch.lap())
            store.get(TENANT, [f.id for f in fused[:10]])
            stages["get"].append(watch.lap())
    out = {name: summary(samples) for name, samples in stages.items()}
    out["keyword_candidates"] = {"mean": round(statistics.fmean(keyword_hits), 1)}
    return out


def measure_ingest(memory: Memory, gen: TextGenerator, n: int, batch: int) -> dict[str, float]:
    """`Memory.add(infer=False)` of `n` chat messages in batches of `batch`, into a fresh user."""
    user_id = f"{INGEST_USER_PREFIX}{uuid.uuid4().hex[:8]}"
    texts = gen.memories(n)
    chunks = [texts[i : i + batch] for i in range(0, n, batch)]
    memory.add([{"role": "user", "content": "warm-up message"}], user_id=f"{user_id}-warmup", infer=False)
    times = []
    started = Stopwatch()
    for chunk in chunks:
        messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(chunk)]
        watch = Stopwatch()
        memory.add(messages, user_id=user_id, infer=False)
        times.append(watch.lap())
    total = started.lap()
    add = summary(times)
    memory.delete_all(user_id=user_id)
    purge_s = started.lap()
    memory.delete_all(user_id=f"{user_id}-warmup")
    return {
        "messages": n,
        "seconds": round(total, 2),
        "per_s": round(n / total, 1),
        "add_batch_p50_ms": add["p50"],
        "add_batch_p95_ms": add["p95"],
        "purge_user_ms": round(purge_s * 1000, 1),
    }


def measure_background_add(store: SQLiteStore, embedder: MiniLMEmbedder, n: int) -> dict[str, float]:
    """`Memory.add(background=True)`: store the messages and queue the extraction job, nothing else.

    The LLM is never called (no worker runs), so this is exactly what a chat reply waits for.
    """
    settings = Settings(in_process_worker=False, track_access=False)
    memory = Memory(store=store, embedder=embedder, llm=ScriptedLLM(), settings=settings)
    user_id = f"{INGEST_USER_PREFIX}bg-{uuid.uuid4().hex[:8]}"
    times = []
    for i in range(n):
        watch = Stopwatch()
        memory.add(
            [{"role": "user", "content": f"message {i} about my order"}, {"role": "assistant", "content": "noted"}],
            user_id=user_id,
            background=True,
        )
        times.append(watch.lap())
    memory.delete_all(user_id=user_id)
    stats = summary(times)
    return {"adds": n, "p50_ms": stats["p50"], "p95_ms": stats["p95"]}


def leftover_ingest_users(store: SQLiteStore) -> Iterator[str]:
    con = apsw.Connection(str(store.path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        rows = con.execute(
            "SELECT DISTINCT user_id FROM memories WHERE tenant_id = ? AND user_id >= ? AND user_id < ?",
            (TENANT, INGEST_USER_PREFIX, INGEST_USER_PREFIX[:-1] + chr(ord(INGEST_USER_PREFIX[-1]) + 1)),
        ).fetchall()
    finally:
        con.close()
    yield from (str(r[0]) for r in rows)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--total", type=int, default=1_000_000, help="memories in the whole store")
    p.add_argument("--user", type=int, default=10_000, help="memories of the queried user")
    p.add_argument("--users", type=int, default=1_000, help="users in the store, the queried one included")
    p.add_argument("--queries", type=int, default=200, help="measured searches (distinct queries)")
    p.add_argument("--warmup", type=int, default=10, help="searches run before measuring")
    p.add_argument("--ingest", type=int, default=1_000, help="messages added to measure ingest (0 skips)")
    p.add_argument("--ingest-batch", type=int, default=10, help="messages per add() call")
    p.add_argument("--fill-batch", type=int, default=20_000, help="memories per fill transaction")
    p.add_argument("--db", type=Path, default=Path("/tmp/retain-bench/latency.db"), help="store file")
    p.add_argument("--reuse", action="store_true", help="keep an existing store filled with the same sizes")
    p.add_argument("--no-breakdown", action="store_true", help="skip the per-stage timings")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--facets", type=int, default=0, help="facet vectors per filled memory (sentence vectors of a user turn)"
    )
    args = p.parse_args(argv)
    if not 0 < args.user <= args.total or args.users < 2 or args.queries < 1:
        p.error("need 0 < --user <= --total, --users >= 2 and --queries >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_started = time.perf_counter()
    spec = FillSpec(total=args.total, user=args.user, users=args.users, seed=args.seed, facets=args.facets)
    db: Path = args.db
    log(f"load average at start: {load_average()} on {os.cpu_count()} cpus")

    fill_s: float | None = None
    if args.reuse and reusable(db, spec):
        log(f"reusing {db} ({file_bytes(db) / 1e9:.2f} GB)")
    else:
        if args.reuse:
            log(f"{db} does not hold this fill; refilling")
        remove_db(db)
        store = SQLiteStore(db, dimensions=DIMENSIONS, embedder_id=SYNTHETIC_SPACE)
        log(f"filling {db}: {spec.total:,} memories, {spec.user:,} for {QUERIED_USER}, {spec.users:,} users")
        fill_s = fill(store, spec, args.fill_batch)
        store.close()
        checkpoint(db)
        sidecar(db).write_text(json.dumps(spec.as_dict()))
        log(f"filled in {fill_s:.0f} s ({spec.total / fill_s:,.0f}/s), {file_bytes(db) / 1e9:.2f} GB")

    store = SQLiteStore(db, dimensions=DIMENSIONS, embedder_id=SYNTHETIC_SPACE)
    for leftover in leftover_ingest_users(store):  # a run that died before cleaning up
        store.purge_scope(Scope(tenant_id=TENANT, user_id=leftover))
    embedder = MiniLMEmbedder()
    memory = Memory(store=store, embedder=embedder, settings=Settings.from_env())  # RETAIN_* search settings apply
    gen = TextGenerator(args.seed + 1)
    queries = gen.queries(args.queries + args.warmup)
    warmup, measured = queries[: args.warmup], queries[args.warmup :]

    load_search = load_average()
    log(f"searching: {len(measured)} queries after {len(warmup)} warm-up (load {load_search})")
    search_times, mean_hits = measure_search(memory, measured, warmup)
    search = summary(search_times)
    log(f"search p50 {search['p50']} ms, p95 {search['p95']} ms, mean {search['mean']} ms")

    breakdown: dict[str, dict[str, float]] = {}
    if not args.no_breakdown:
        breakdown_queries = TextGenerator(args.seed + 2).queries(len(measured))
        breakdown = measure_breakdown(store, embedder, breakdown_queries)
        log(
            "breakdown (p50/p95 ms): "
            + ", ".join(f"{k} {v['p50']}/{v['p95']}" for k, v in breakdown.items() if "p50" in v)
        )

    ingest: dict[str, float] = {}
    if args.ingest > 0:
        load_ingest = load_average()
        log(f"ingesting {args.ingest} messages in batches of {args.ingest_batch} (load {load_ingest})")
        ingest = measure_ingest(memory, gen, args.ingest, args.ingest_batch)
        log(f"ingest {ingest['per_s']} messages/s")
    background = measure_background_add(store, embedder, 200)
    log(f"add(background=True) p50 {background['p50_ms']} ms, p95 {background['p95_ms']} ms")
    memory.close()

    result: dict[str, Any] = {
        "search_p50_ms": search["p50"],
        "search_p95_ms": search["p95"],
        "search_p99_ms": search["p99"],
        "search_mean_ms": search["mean"],
        "search_max_ms": search["max"],
        "search_mean_hits": round(mean_hits, 2),
        "ingest_per_s": ingest.get("per_s"),
        "ingest": ingest,
        "background_add_p50_ms": background["p50_ms"],
        "background_add_p95_ms": background["p95_ms"],
        "breakdown_ms": breakdown,
        "total_memories": spec.total,
        "user_memories": spec.user,
        "users": spec.users,
        "queries": len(measured),
        "warmup_queries": len(warmup),
        "db": str(db),
        "file_bytes": file_bytes(db),
        "fill_seconds": None if fill_s is None else round(fill_s, 1),
        "reused": fill_s is None,
        "load_average_search": load_search,
        "load_average_end": load_average(),
        "cpus": os.cpu_count(),
        "run_seconds": round(time.perf_counter() - run_started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
