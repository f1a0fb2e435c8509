"""LoCoMo retrieval benchmark for Retain: evidence recall@k, NDCG@10, context tokens, ingest and search latency.

Each LoCoMo conversation becomes one user in a fresh temporary SQLite store
with the real local embedder (MiniLM int8 ONNX). Sessions are ingested in
order with the session date as `at`; each turn is one message (role "user",
name = speaker, metadata {dia_id, speaker}); image turns get
"[shares image: <blip_caption>]" appended. Every question of categories 1-4
is searched in its user's memories and scored against its evidence dia_ids
(split on [;\\s]+, leading zeros stripped, unresolvable ids dropped).
Category 5 (adversarial) is reported separately.

Modes: `raw` stores each turn verbatim (add(infer=False)); `facts` extracts
facts with the configured LLM (add(infer=True)) and counts a fact's source
messages as retrieved.

Examples:
    python bench/locomo.py                                  # raw mode, dev split
    python bench/locomo.py --limit-conversations 1 --k 1,5,10,25
    python bench/locomo.py --variant "no-neighbours:neighbour_weight=0" --variant "mmr:mmr_lambda=0.8"
    RETAIN_INDEX_CONTEXT_TURNS=0 python bench/locomo.py     # index settings come from the environment

Each turn is added as {role: user, name: speaker, content: turn}; how it is indexed
(speaker line, preceding turns) is the library's default, set by RETAIN_* settings.
`--variant` re-runs the questions through `Memory.search` with search-time settings
changed, over the same stores.

The last stdout line is one JSON object with the headline numbers.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import (
    SHARED_DATA,
    TokenCounter,
    Variant,
    add_retrieval_args,
    cache_stats,
    emit,
    load_json,
    log,
    make_embedder,
    mean,
    ndcg_at,
    open_memory,
    parse_ks,
    percentile,
    print_table,
    recall_at,
    rounded,
    timed,
)

from retain import Memory
from retain.errors import ConfigError
from retain.settings import Settings

DEFAULT_DATA = SHARED_DATA / "locomo" / "locomo_dev.json"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop", 5: "adversarial"}


@dataclass(frozen=True)
class Turn:
    dia_id: str
    speaker: str
    text: str  # with the image caption appended
    session: int
    date: datetime


@dataclass
class Conversation:
    sample_id: str
    sessions: list[list[Turn]]
    qa: list[dict[str, Any]]

    @property
    def turn_ids(self) -> set[str]:
        return {t.dia_id for s in self.sessions for t in s}


def parse_locomo_date(text: str) -> datetime:
    """'1:56 pm on 8 May, 2023' -> datetime(2023, 5, 8, 13, 56)."""
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y")


def normalise_dia_id(raw: str) -> str:
    """'D30:05' -> 'D30:5'; leaves malformed ids (they will not resolve)."""
    m = re.fullmatch(r"D0*(\d+):0*(\d+)", raw.strip())
    return f"D{m.group(1)}:{m.group(2)}" if m else raw.strip()


def clean_evidence(evidence: list[Any], valid: set[str]) -> set[str]:
    out: set[str] = set()
    for item in evidence:
        for part in re.split(r"[;\s]+", str(item)):
            if part and (dia := normalise_dia_id(part)) in valid:
                out.add(dia)
    return out


def load_conversations(path: Path) -> list[Conversation]:
    conversations = []
    for raw in load_json(path):
        conv = raw["conversation"]
        numbers = sorted(
            int(m.group(1))
            for key, value in conv.items()
            if (m := re.fullmatch(r"session_(\d+)", key)) and isinstance(value, list)
        )
        sessions = []
        for n in numbers:
            date = parse_locomo_date(conv[f"session_{n}_date_time"])
            turns = []
            for t in conv[f"session_{n}"]:
                text = str(t.get("text") or "").strip()
                if t.get("blip_caption"):
                    text = f"{text} [shares image: {t['blip_caption']}]".strip()
                if text:
                    turns.append(Turn(normalise_dia_id(t["dia_id"]), t["speaker"], text, n, date))
            sessions.append(turns)
        conversations.append(Conversation(raw["sample_id"], sessions, raw["qa"]))
    return conversations


@dataclass
class UserStore:
    """One conversation ingested into Retain, plus how to map hits back to dia_ids."""

    user_id: str
    memory: Memory
    message_to_dia: dict[str, str]
    memory_to_dia: dict[str, set[str]]
    ingest_s: float
    n_turns: int

    def dia_ids(self, memory_id: str, metadata: dict[str, Any] | None, source: list[str] | None) -> set[str]:
        if memory_id in self.memory_to_dia:
            return self.memory_to_dia[memory_id]
        ids: set[str] = set()
        if metadata and isinstance(metadata.get("dia_id"), str):
            ids.add(metadata["dia_id"])
        if source is None:
            records = self.memory.store.get(self.memory.tenant_id, [memory_id])
            source = records[0].source_message_ids if records else []
        ids |= {self.message_to_dia[s] for s in source if s in self.message_to_dia}
        self.memory_to_dia[memory_id] = ids
        return ids


def session_messages(session: list[Turn]) -> list[dict[str, Any]]:
    """A LoCoMo session as `Memory.add` takes it: each turn a user message named after its speaker."""
    return [
        {"role": "user", "content": t.text, "name": t.speaker, "metadata": {"dia_id": t.dia_id, "speaker": t.speaker}}
        for t in session
    ]


def ingest(conv: Conversation, memory: Memory, mode: str, facts_batch: int) -> UserStore:
    user_id = conv.sample_id
    message_to_dia: dict[str, str] = {}
    memory_to_dia: dict[str, set[str]] = {}
    n_turns = 0
    start = time.perf_counter()
    for session in conv.sessions:
        if not session:
            continue
        messages = session_messages(session)
        batch = len(messages) if mode == "raw" else max(1, facts_batch)
        for lo in range(0, len(messages), batch):
            chunk, chunk_turns = messages[lo : lo + batch], session[lo : lo + batch]
            result = memory.add(chunk, user_id=user_id, infer=(mode == "facts"), at=session[0].date)
            for mid, t in zip(result.message_ids, chunk_turns, strict=True):
                message_to_dia[mid] = t.dia_id
            if mode == "raw":
                for ev, t in zip(result.results, chunk_turns, strict=True):
                    memory_to_dia[ev.id] = {t.dia_id}
        n_turns += len(session)
    return UserStore(user_id, memory, message_to_dia, memory_to_dia, time.perf_counter() - start, n_turns)


def evaluate_conversation(
    conv: Conversation,
    user: UserStore,
    ks: list[int],
    variants: list[Variant | None],
    tokens: TokenCounter,
) -> list[list[dict[str, Any]]]:
    """Per variant, one row per question: category, recall@k, ndcg@10, tokens@k, latency (Retain only)."""
    valid = conv.turn_ids
    kmax = max(ks)
    views = [user.memory if v is None else v.view(user.memory) for v in variants]
    out: list[list[dict[str, Any]]] = [[] for _ in variants]
    for qa in conv.qa:
        category = int(qa["category"])
        gold = clean_evidence(qa.get("evidence") or [], valid)
        question = str(qa["question"])
        for vi, view in enumerate(views):
            result, ms = timed(lambda q=question, m=view: m.search(q, user_id=user.user_id, limit=kmax))
            latency = ms if vi == 0 else None
            ranked = [user.dia_ids(h.id, h.metadata, h.source) for h in result.results]
            texts = [h.memory for h in result.results]
            row: dict[str, Any] = {
                "category": category,
                "question": question,
                "n_evidence": len(gold),
                "latency_ms": latency,
                "ranked": [sorted(r) for r in ranked[:10]],
            }
            for k in ks:
                row[f"recall@{k}"] = recall_at(ranked, gold, k)
                row[f"tokens@{k}"] = tokens.count(texts[:k])
            row["ndcg@10"] = ndcg_at(ranked, gold, 10)
            out[vi].append(row)
    return out


def summarise(rows: list[dict[str, Any]], ks: list[int]) -> dict[str, Any]:
    scored = [r for r in rows if r["category"] in (1, 2, 3, 4) and r["n_evidence"] > 0]

    def block(items: list[dict[str, Any]]) -> dict[str, Any]:
        b: dict[str, Any] = {"n": len(items)}
        for k in ks:
            b[f"recall@{k}"] = mean(r[f"recall@{k}"] for r in items)
        b["ndcg@10"] = mean(r["ndcg@10"] for r in items)
        for k in ks:
            b[f"tokens@{k}"] = mean(r[f"tokens@{k}"] for r in items)
        return b

    summary = block(scored)
    summary["per_category"] = {
        f"{c}-{CATEGORIES[c]}": block([r for r in scored if r["category"] == c]) for c in (1, 2, 3, 4)
    }
    cat5 = [r for r in rows if r["category"] == 5 and r["n_evidence"] > 0]
    summary["category_5_adversarial"] = block(cat5)
    summary["skipped_no_valid_evidence"] = sum(1 for r in rows if r["n_evidence"] == 0)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="locomo JSON (default: %(default)s)")
    parser.add_argument("--mode", choices=("raw", "facts"), default="raw")
    parser.add_argument("--k", default="1,5,10,25", help="comma-separated cut-offs (default: %(default)s)")
    parser.add_argument("--limit-conversations", type=int, default=None, metavar="N")
    add_retrieval_args(parser)
    parser.add_argument("--facts-batch", type=int, default=8, help="turns per add(infer=True) call in facts mode")
    parser.add_argument(
        "--shared-store",
        action="store_true",
        help="put all conversations (users) in ONE store instead of one store per conversation",
    )
    parser.add_argument("--keep-db", type=Path, default=None, metavar="DIR", help="keep the stores in DIR")
    parser.add_argument("--json-out", default=None, metavar="PATH", help="write the full results JSON here")
    args = parser.parse_args(argv)

    ks = parse_ks(args.k)
    if 10 not in ks:
        ks = sorted({*ks, 10})
    if args.mode == "facts" and Settings.from_env().llm is None:
        parser.exit(
            2,
            (
                "locomo.py --mode facts needs an LLM to extract facts, and none is configured.\n"
                "Set RETAIN_LLM, e.g. RETAIN_LLM=openai:gpt-4o-mini (with OPENAI_API_KEY) or "
                "RETAIN_LLM=local:qwen2.5-1.5b, or run --mode raw.\n"
            ),
        )
    variants: list[Variant | None] = [None, *(Variant.parse(s) for s in args.variant)]
    names = ["retain", *(v.name for v in variants if v is not None)]
    conversations = load_conversations(args.data)[: args.limit_conversations]
    embedder = make_embedder(args.embedder, args.embed_cache)
    tokens = TokenCounter()
    settings = Settings.from_env()
    log(
        f"{len(conversations)} conversations, mode={args.mode}, index_context_turns="
        f"{settings.index_context_turns}, variants={names}"
    )

    per_variant: list[list[dict[str, Any]]] = [[] for _ in variants]
    ingest_s = 0.0
    n_turns = 0
    with tempfile.TemporaryDirectory(prefix="retain-locomo-") as tmp:
        root = args.keep_db or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        shared: Memory | None = None
        if args.shared_store:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{root / 'shared.db'}{suffix}").unlink(missing_ok=True)
            shared = open_memory(root / "shared.db", embedder)
        for ci, conv in enumerate(conversations):
            db = root / f"{conv.sample_id}.db"
            if shared is None:
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{db}{suffix}").unlink(missing_ok=True)
            memory = shared or open_memory(db, embedder)
            try:
                try:
                    user = ingest(conv, memory, args.mode, args.facts_batch)
                except ConfigError as exc:
                    parser.exit(2, f"locomo.py --mode {args.mode}: {exc}\n")
                ingest_s += user.ingest_s
                n_turns += user.n_turns
                log(
                    f"[{ci + 1}/{len(conversations)}] {conv.sample_id}: {user.n_turns} turns in "
                    f"{user.ingest_s:.1f}s; searching {len(conv.qa)} questions"
                )
                rows = evaluate_conversation(conv, user, ks, variants, tokens)
                for vi, vrows in enumerate(rows):
                    for r in vrows:
                        r["conversation"] = conv.sample_id
                    per_variant[vi].extend(vrows)
            finally:
                if shared is None:
                    memory.close()
        if shared is not None:
            shared.close()

    latencies = [r["latency_ms"] for r in per_variant[0] if r["latency_ms"] is not None]
    summaries = {name: summarise(rows, ks) for name, rows in zip(names, per_variant, strict=True)}
    main_summary = summaries["retain"]
    info = {
        "benchmark": "locomo",
        "mode": args.mode,
        "text": "verbatim",
        "index_context_turns": settings.index_context_turns,
        "neighbour_weight": settings.neighbour_weight,
        "mmr_lambda": settings.mmr_lambda,
        "shared_store": args.shared_store,
        "embedder": args.embedder,
        "data": str(args.data),
        "conversations": len(conversations),
        "turns": n_turns,
        "questions_scored": main_summary["n"],
        "ingest_s": ingest_s,
        "ingest_turns_per_s": n_turns / ingest_s if ingest_s else float("nan"),
        "embed_cache": cache_stats(embedder),
        "search_p50_ms": percentile(latencies, 50),
        "search_p95_ms": percentile(latencies, 95),
        "search_limit": max(ks),
        "token_method": TokenCounter.method,
    }

    print(
        f"LoCoMo retrieval - mode={args.mode}, index_context_turns={settings.index_context_turns}, "
        f"neighbour_weight={settings.neighbour_weight}, mmr_lambda={settings.mmr_lambda}, embedder={args.embedder}, "
        f"{len(conversations)} conversations, {n_turns} turns, {main_summary['n']} questions (cat 1-4)"
    )
    print(
        f"ingest {ingest_s:.1f}s ({info['ingest_turns_per_s']:.1f} turns/s)"
        + (f"  [embedding cache {info['embed_cache']}: timing not real]" if info["embed_cache"] else "")
    )
    print(f"search p50 {info['search_p50_ms']:.1f} ms, p95 {info['search_p95_ms']:.1f} ms (limit {max(ks)})")
    print(f"tokens: {TokenCounter.method}")
    for name, s in summaries.items():
        header = ["slice", "n", *(f"R@{k}" for k in ks), "NDCG@10", "tok@10"]
        blocks = [("all 1-4", s), *s["per_category"].items(), ("5-adversarial", s["category_5_adversarial"])]
        print_table(
            f"[{name}] evidence recall",
            header,
            [[label, b["n"], *(b[f"recall@{k}"] for k in ks), b["ndcg@10"], b["tokens@10"]] for label, b in blocks],
        )
    if len(summaries) > 1:
        print_table(
            "variants (cat 1-4)",
            ["variant", *(f"R@{k}" for k in ks), "NDCG@10", "tok@10"],
            [[n, *(s[f"recall@{k}"] for k in ks), s["ndcg@10"], s["tokens@10"]] for n, s in summaries.items()],
        )

    headline = {f"recall@{k}": main_summary[f"recall@{k}"] for k in ks}
    headline |= {"ndcg@10": main_summary["ndcg@10"], "tokens@10": main_summary["tokens@10"]}
    headline |= {k: info[k] for k in ("search_p50_ms", "search_p95_ms", "ingest_s", "ingest_turns_per_s")}
    headline |= {"mode": args.mode, "text": "verbatim", "questions": main_summary["n"], "turns": n_turns}
    headline |= {k: info[k] for k in ("index_context_turns", "neighbour_weight", "mmr_lambda", "shared_store")}
    if len(summaries) > 1:
        headline["variants"] = {
            n: {f"recall@{k}": s[f"recall@{k}"] for k in ks} | {"ndcg@10": s["ndcg@10"]} for n, s in summaries.items()
        }
    full = {"info": info, "summaries": summaries, "questions": {n: r for n, r in zip(names, per_variant, strict=True)}}
    emit(rounded(headline), rounded(full), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
