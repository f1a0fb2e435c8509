"""LongMemEval (S) retrieval benchmark for Retain: turn and session recall@k, ingest and search latency.

Each question has its own haystack (about 48 sessions), so each question is
one user in a fresh temporary SQLite store with the real local embedder.
Sessions are ingested in `haystack_dates` order, with the session date as
`at`; each turn is one message (role user/assistant, metadata session_id,
turn index, has_answer). The question is then searched at its
`question_date` (`search(at=...)`, which resolves relative dates in it).

Scoring, for k = 1, 5, 10:
- turn recall: the top-k turns of `search(limit=10)` against the
  `has_answer` turns. The main number is the fraction of a question's evidence
  turns found (averaged over questions); `turn_any@k` is the LongMemEval
  paper's recall_any (at least one found) and `turn_all@k` its recall_all
  (all found).
- session recall: the top-k *distinct sessions* against `answer_session_ids`.
  Sessions are ranked by their best turn: `search(limit=50)` returns a turn
  ranking (limit 100, 200, ... when 50 turns hold fewer than 10 distinct
  sessions), and a session's rank is the position of its first turn in it. This is
  retrieval over sessions, as in the LongMemEval paper and in issue 4's
  calibration (plain MiniLM + BM25 over turns: session recall@5 about 0.95);
  same three flavours.
- `session_of_turns@k` is the older flavour: the sessions of the top-k turns,
  with repeats, so a session holding three of the top five turns uses three of
  the five places. It is kept for comparison with earlier runs only.
Abstention questions (`_abs` suffix) are counted and skipped for recall.
Overall and per `question_type`.

Examples:
    python bench/longmemeval.py --limit 10
    python bench/longmemeval.py --workers 2 --json-out /tmp/lme.json

The last stdout line is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from _common import (
    SHARED_DATA,
    TokenCounter,
    Variant,
    add_retrieval_args,
    all_at,
    any_at,
    cache_stats,
    emit,
    load_json,
    log,
    make_embedder,
    mean,
    ndcg_at,
    open_memory,
    percentile,
    print_table,
    recall_at,
    rounded,
    timed,
)

from retain.embedders import Embedder
from retain.settings import Settings

DEFAULT_DATA = SHARED_DATA / "longmemeval" / "longmemeval_s_dev.json.gz"
KS = (1, 5, 10)
#: Turns retrieved to rank sessions (doubled until they hold max(KS) distinct sessions).
SESSION_POOL = 50


def parse_lme_date(text: str) -> datetime:
    """'2023/05/20 (Sat) 02:21' -> datetime(2023, 5, 20, 2, 21)."""
    return datetime.strptime(text.strip(), "%Y/%m/%d (%a) %H:%M")


@dataclass(frozen=True)
class Options:
    embedder: str
    embed_cache: str | None
    variants: tuple[Variant | None, ...]
    tmp: str


_EMBEDDER: Embedder | None = None
_TOKENS: TokenCounter | None = None


def _init_worker(opts: Options) -> None:
    global _EMBEDDER, _TOKENS
    _EMBEDDER = make_embedder(opts.embedder, opts.embed_cache)
    _TOKENS = TokenCounter()


def run_question(q: dict[str, Any], opts: Options) -> dict[str, Any]:
    """Ingest one question's haystack into a fresh store and score every variant."""
    assert _EMBEDDER is not None and _TOKENS is not None
    qid = str(q["question_id"])
    db = Path(opts.tmp) / f"{qid}.db"
    memory = open_memory(db, _EMBEDDER)
    turn_of: dict[str, tuple[str, int]] = {}  # memory id -> (session id, turn index)
    gold_turns: set[str] = set()
    n_turns = skipped = 0
    order = sorted(range(len(q["haystack_sessions"])), key=lambda i: parse_lme_date(q["haystack_dates"][i]))
    before = cache_stats(_EMBEDDER)
    try:
        start = time.perf_counter()
        for si in order:
            sid = str(q["haystack_session_ids"][si])
            date = parse_lme_date(q["haystack_dates"][si])
            messages, keys = [], []
            for ti, turn in enumerate(q["haystack_sessions"][si]):
                content = str(turn.get("content") or "")
                if not content.strip():
                    skipped += 1
                    continue
                messages.append(
                    {
                        "role": turn["role"],
                        "content": content,
                        "metadata": {"session_id": sid, "turn": ti, "has_answer": bool(turn.get("has_answer"))},
                    }
                )
                keys.append((sid, ti))
                if turn.get("has_answer"):
                    gold_turns.add(f"{sid}#{ti}")
            if not messages:
                continue
            result = memory.add(messages, user_id=qid, infer=False, at=date)
            for ev, key in zip(result.results, keys, strict=True):
                turn_of[ev.id] = key
            n_turns += len(messages)
        ingest_s = time.perf_counter() - start

        question = str(q["question"])
        gold_sessions = {str(s) for s in q["answer_session_ids"]}
        kmax = max(KS)
        rows = []
        asked = parse_lme_date(q["question_date"])
        for vi, variant in enumerate(opts.variants):
            view = memory if variant is None else variant.view(memory)
            result_s, ms = timed(lambda m=view: m.search(question, user_id=qid, limit=kmax, at=asked))
            latency = ms if vi == 0 else None
            ids = [h.id for h in result_s.results]
            texts = [h.memory for h in result_s.results]
            ranked_turns = [{f"{turn_of[i][0]}#{turn_of[i][1]}"} if i in turn_of else set() for i in ids]
            turn_sessions = [{turn_of[i][0]} if i in turn_of else set() for i in ids]
            ranked_sessions = session_ranking(view, question, qid, asked, turn_of, kmax)
            row: dict[str, Any] = {
                "latency_ms": latency,
                "top": [sorted(r) for r in ranked_turns],
                "sessions": [sorted(r) for r in ranked_sessions[:kmax]],
            }
            for k in KS:
                row[f"turn_recall@{k}"] = recall_at(ranked_turns, gold_turns, k)
                row[f"turn_any@{k}"] = any_at(ranked_turns, gold_turns, k) if gold_turns else float("nan")
                row[f"turn_all@{k}"] = all_at(ranked_turns, gold_turns, k) if gold_turns else float("nan")
                row[f"session_recall@{k}"] = recall_at(ranked_sessions, gold_sessions, k)
                row[f"session_any@{k}"] = any_at(ranked_sessions, gold_sessions, k) if gold_sessions else float("nan")
                row[f"session_all@{k}"] = all_at(ranked_sessions, gold_sessions, k) if gold_sessions else float("nan")
                row[f"session_of_turns@{k}"] = recall_at(turn_sessions, gold_sessions, k)
                row[f"tokens@{k}"] = _TOKENS.count(texts[:k])
            row["turn_ndcg@10"] = ndcg_at(ranked_turns, gold_turns, 10)
            row["session_ndcg@10"] = ndcg_at(ranked_sessions, gold_sessions, 10)
            rows.append(row)
    finally:
        memory.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
    return {
        "question_id": qid,
        "question_type": q["question_type"],
        "abstention": qid.endswith("_abs"),
        "n_turns": n_turns,
        "skipped_empty_turns": skipped,
        "ingest_s": ingest_s,
        "n_gold_turns": len(gold_turns),
        "n_gold_sessions": len(gold_sessions),
        "rows": rows,
        "embed_cache": _cache_delta(before),
    }


def session_ranking(
    memory: Any, question: str, user_id: str, asked: datetime, turn_of: dict[str, tuple[str, int]], k: int
) -> list[set[str]]:
    """The distinct sessions of the turn ranking, best first: SESSION_POOL turns, more if they fill fewer than k."""
    limit = SESSION_POOL
    while True:
        hits = memory.search(question, user_id=user_id, limit=limit, at=asked).results
        sessions = distinct_sessions([turn_of.get(h.id, ("", 0))[0] for h in hits])
        if len(sessions) >= k or len(hits) < limit:
            return [{s} for s in sessions]
        limit *= 2


def distinct_sessions(sessions: list[str]) -> list[str]:
    """Sessions in the order of their first turn in a turn ranking (unknown turns, "", dropped)."""
    return [s for s in dict.fromkeys(sessions) if s]


def _cache_delta(before: dict[str, int] | None) -> dict[str, int] | None:
    """This question's embedding-cache hits and misses (the counters are per process)."""
    after = cache_stats(_EMBEDDER) if _EMBEDDER is not None else None
    if before is None or after is None:
        return None
    return {k: after[k] - before[k] for k in after}


METRICS = [
    *(f"{kind}_{flavour}@{k}" for kind in ("turn", "session") for flavour in ("recall", "any", "all") for k in KS),
    *(f"session_of_turns@{k}" for k in KS),
]


def summarise(results: list[dict[str, Any]], vi: int) -> dict[str, Any]:
    scored = [r for r in results if not r["abstention"]]

    def block(items: list[dict[str, Any]]) -> dict[str, Any]:
        b: dict[str, Any] = {"n": len(items)}
        for m in [*METRICS, "turn_ndcg@10", "session_ndcg@10", *(f"tokens@{k}" for k in KS)]:
            b[m] = mean(r["rows"][vi][m] for r in items if r["rows"][vi][m] == r["rows"][vi][m])  # skip NaN
        return b

    summary = block(scored)
    types = sorted({r["question_type"] for r in scored})
    summary["per_type"] = {t: block([r for r in scored if r["question_type"] == t]) for t in types}
    summary["abstention_skipped"] = sum(1 for r in results if r["abstention"])
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSON or JSON.gz (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N questions")
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="only every Nth question (1st, N+1th, ...): a subsample that keeps every question "
        "type, since the file is ordered by type",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes, one question each at a time (1 onnxruntime thread per process)",
    )
    add_retrieval_args(parser)
    parser.add_argument("--json-out", default=None, metavar="PATH", help="write the full results JSON here")
    args = parser.parse_args(argv)

    questions = load_json(args.data)[:: max(1, args.every)][: args.limit]
    variants: tuple[Variant | None, ...] = (None, *(Variant.parse(s) for s in args.variant))
    names = ["retain", *(v.name for v in variants if v is not None)]
    settings = Settings.from_env()
    log(
        f"{len(questions)} questions, {args.workers} worker(s), index_context_turns={settings.index_context_turns}, "
        f"variants={names}"
    )
    wall = time.perf_counter()
    results: list[dict[str, Any]] = []
    partial = f"{args.json_out}.partial.jsonl" if args.json_out else None  # per-question lines as they finish
    if partial:
        Path(partial).unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="retain-lme-") as tmp:
        opts = Options(args.embedder, args.embed_cache, variants, tmp)
        if args.workers <= 1:
            _init_worker(opts)
            for i, q in enumerate(questions):
                results.append(run_question(q, opts))
                _progress(i + 1, len(questions), results[-1], wall, partial)
        else:
            with ProcessPoolExecutor(
                args.workers, mp_context=get_context("fork"), initializer=_init_worker, initargs=(opts,)
            ) as pool:
                futures = [pool.submit(run_question, q, opts) for q in questions]
                for i, fut in enumerate(as_completed(futures)):
                    results.append(fut.result())
                    _progress(i + 1, len(questions), results[-1], wall, partial)
    wall_s = time.perf_counter() - wall
    order = {str(q["question_id"]): i for i, q in enumerate(questions)}
    results.sort(key=lambda r: order[r["question_id"]])

    ingest_s = sum(r["ingest_s"] for r in results)
    n_turns = sum(r["n_turns"] for r in results)
    latencies = [r["rows"][0]["latency_ms"] for r in results]
    summaries = {name: summarise(results, vi) for vi, name in enumerate(names)}
    caches = [r["embed_cache"] for r in results if r["embed_cache"]]
    cache = {"hits": sum(c["hits"] for c in caches), "misses": sum(c["misses"] for c in caches)} if caches else None
    cold = [r for r in results if not r["embed_cache"] or r["embed_cache"]["misses"] >= 0.9 * r["n_turns"]]
    cold_s = sum(r["ingest_s"] for r in cold)
    info = {
        "benchmark": "longmemeval_s",
        "text": "verbatim",
        "index_context_turns": settings.index_context_turns,
        "neighbour_weight": settings.neighbour_weight,
        "mmr_lambda": settings.mmr_lambda,
        "embedder": args.embedder,
        "data": str(args.data),
        "every": args.every,
        "questions": len(results),
        "scored": summaries["retain"]["n"],
        "abstention_skipped": summaries["retain"]["abstention_skipped"],
        "turns": n_turns,
        "skipped_empty_turns": sum(r["skipped_empty_turns"] for r in results),
        "ingest_s": ingest_s,
        "ingest_turns_per_s": n_turns / ingest_s if ingest_s else float("nan"),
        "wall_s": wall_s,
        "workers": args.workers,
        "embed_cache": cache,
        # ingest speed over the questions whose turns were (>= 90%) really embedded, not cache hits
        "cold_questions": len(cold),
        "ingest_turns_per_s_cold": sum(r["n_turns"] for r in cold) / cold_s if cold_s else float("nan"),
        "search_p50_ms": percentile(latencies, 50),
        "search_p95_ms": percentile(latencies, 95),
        "token_method": TokenCounter.method,
    }

    main_s = summaries["retain"]
    print(
        f"LongMemEval_S retrieval - index_context_turns={settings.index_context_turns}, "
        f"neighbour_weight={settings.neighbour_weight}, mmr_lambda={settings.mmr_lambda}, "
        f"embedder={args.embedder}, {len(results)} questions "
        f"({main_s['n']} scored, {info['abstention_skipped']} abstention skipped), {n_turns} turns"
    )
    print(
        f"ingest {ingest_s:.0f}s summed over questions ({info['ingest_turns_per_s']:.1f} turns/s per worker), "
        f"wall {wall_s:.0f}s with {args.workers} worker(s)"
        + (
            f"  [embedding cache {cache}: timing not real; over the {len(cold)} cold questions "
            f"{info['ingest_turns_per_s_cold']:.1f} turns/s per worker]"
            if cache
            else ""
        )
    )
    print(f"search p50 {info['search_p50_ms']:.1f} ms, p95 {info['search_p95_ms']:.1f} ms (limit 10)")
    print(
        "turn/session recall = fraction of gold found (main); any = recall_any; all = recall_all; sess@k = top-k "
        "distinct sessions (ranked by best turn); s_of_t = sessions of the top-k turns (old flavour)"
    )
    for name, s in summaries.items():
        header = [
            "slice",
            "n",
            *(f"turn@{k}" for k in KS),
            *(f"sess@{k}" for k in KS),
            "t_any@5",
            "t_any@10",
            "t_all@10",
            "s_any@5",
            "s_all@10",
            "s_of_t@5",
            "tok@10",
        ]
        blocks = [("all", s), *s["per_type"].items()]
        print_table(
            f"[{name}] recall",
            header,
            [
                [
                    label,
                    b["n"],
                    *(b[f"turn_recall@{k}"] for k in KS),
                    *(b[f"session_recall@{k}"] for k in KS),
                    b["turn_any@5"],
                    b["turn_any@10"],
                    b["turn_all@10"],
                    b["session_any@5"],
                    b["session_all@10"],
                    b["session_of_turns@5"],
                    b["tokens@10"],
                ]
                for label, b in blocks
            ],
        )
    if len(summaries) > 1:
        print_table(
            "variants",
            ["variant", *(f"turn@{k}" for k in KS), *(f"sess@{k}" for k in KS), "s_of_t@5"],
            [
                [
                    n,
                    *(s[f"turn_recall@{k}"] for k in KS),
                    *(s[f"session_recall@{k}"] for k in KS),
                    s["session_of_turns@5"],
                ]
                for n, s in summaries.items()
            ],
        )

    headline: dict[str, Any] = {}
    for k in KS:
        headline[f"session_recall@{k}"] = main_s[f"session_recall@{k}"]
    for k in KS:
        headline[f"turn_recall@{k}"] = main_s[f"turn_recall@{k}"]
    for k in KS:
        headline[f"turn_any@{k}"] = main_s[f"turn_any@{k}"]
    for k in KS:
        headline[f"session_of_turns@{k}"] = main_s[f"session_of_turns@{k}"]
    headline |= {k: info[k] for k in ("search_p50_ms", "search_p95_ms", "ingest_s", "ingest_turns_per_s", "wall_s")}
    if cache:
        headline |= {"ingest_turns_per_s_cold": info["ingest_turns_per_s_cold"], "cold_questions": len(cold)}
    headline |= {"tokens@10": main_s["tokens@10"], "text": "verbatim", "scored": main_s["n"], "turns": n_turns}
    headline |= {k: info[k] for k in ("index_context_turns", "neighbour_weight", "mmr_lambda")}
    if len(summaries) > 1:
        headline["variants"] = {
            n: {f"{kind}_recall@{k}": s[f"{kind}_recall@{k}"] for kind in ("turn", "session") for k in KS}
            | {"session_of_turns@5": s["session_of_turns@5"]}
            for n, s in summaries.items()
        }
    emit(rounded(headline), rounded({"info": info, "summaries": summaries, "questions": results}), args.json_out)
    return 0


def _progress(done: int, total: int, r: dict[str, Any], wall: float, partial: str | None) -> None:
    if partial:
        with open(partial, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rounded(r)) + "\n")
    row = r["rows"][0]
    elapsed = time.perf_counter() - wall
    log(
        f"[{done}/{total}] {r['question_id']} ({r['question_type']}): {r['n_turns']} turns in {r['ingest_s']:.1f}s, "
        f"turn@10 {row['turn_recall@10']:.2f} sess@10 {row['session_recall@10']:.2f}; "
        f"eta {elapsed / done * (total - done):.0f}s"
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
