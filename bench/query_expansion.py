"""Does query expansion with the bundled local LLM pay on LoCoMo? Evidence recall with and without it.

Issue 4 lists "query expansion with the local LLM where it pays". This measures it where
plain retrieval is weakest (multi-hop and open-domain questions by default): every
question is searched as asked and as asked plus what the local model writes for it, over
the same raw-turn stores, and both are scored against the evidence turns.

Styles of expansion:
- `keywords`: 8-12 comma-separated words the answering messages would likely contain;
- `answer`: a one-sentence guess at the answer (HyDE: the guess is searched for, not trusted).

Generations are cached per (model, style, question) in `--cache`, so a rerun scores the same
expansions without the model; the generation time printed is that of the questions generated
in this run.

Example:
    python bench/query_expansion.py --every 2 --style keywords --style answer

The last stdout line is one JSON object with the recall of every style and the generation time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import emit, log, make_embedder, mean, open_memory, percentile, print_table, recall_at
from locomo import DEFAULT_DATA, clean_evidence, ingest, load_conversations

from retain.llm.local import DEFAULT_MODEL, LocalLLM
from retain.memory import Memory

PROMPTS = {
    "keywords": (
        "A question is asked about a long chat between {a} and {b}. Write one line of 8 to 12 keywords "
        "(comma-separated: likely words, synonyms, concrete examples) that the chat messages answering it "
        "would contain.\nQuestion: {q}\nKeywords:"
    ),
    "answer": (
        "A question is asked about a long chat between {a} and {b}. Write one short sentence that one of them "
        "might have said in the chat that answers it. Guess concrete details.\nQuestion: {q}\nSentence:"
    ),
}
KS = (10, 25)


def expand(llm: LocalLLM, style: str, speakers: list[str], question: str) -> str:
    prompt = PROMPTS[style].format(a=speakers[0], b=speakers[-1], q=question)
    text = llm.complete([{"role": "user", "content": prompt}]).text.strip()
    return text.splitlines()[0].strip() if text else ""


def recall(memory: Memory, user: Any, query: str, gold: set[str], k: int) -> float:
    hits = memory.search(query, user_id=user.user_id, limit=k).results
    ranked = [user.dia_ids(h.id, h.metadata, h.source) for h in hits]
    return recall_at(ranked, gold, k)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--categories", default="1,3", help="LoCoMo categories (default: multi-hop, open-domain)")
    parser.add_argument("--every", type=int, default=1, help="ask every Nth question of those categories")
    parser.add_argument("--style", action="append", choices=sorted(PROMPTS), default=None)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="local model key (retain.llm.local.MODELS)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--embedder", default="local:minilm")
    parser.add_argument("--embed-cache", default=None, metavar="PATH")
    parser.add_argument("--json-out", default=None, metavar="PATH")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "retain-query-expansion.json")
    args = parser.parse_args(argv)
    styles = args.style or ["keywords"]
    categories = {int(c) for c in args.categories.split(",")}

    cache: dict[str, str] = json.loads(args.cache.read_text()) if args.cache.exists() else {}
    llm = LocalLLM(args.model, n_threads=args.threads, temperature=0.0, max_tokens=80)
    embedder = make_embedder(args.embedder, args.embed_cache)
    generation_ms: list[float] = []
    rows: list[dict[str, Any]] = []
    asked = 0
    with tempfile.TemporaryDirectory() as tmp:
        for n, conv in enumerate(load_conversations(args.data)):
            memory = open_memory(Path(tmp) / f"c{n}.db", embedder)
            user = ingest(conv, memory, "raw", 8)
            speakers = sorted({t.speaker for s in conv.sessions for t in s})
            for qa in conv.qa:
                gold = clean_evidence(qa.get("evidence") or [], conv.turn_ids)
                if int(qa["category"]) not in categories or not gold:
                    continue
                asked += 1
                if (asked - 1) % args.every:
                    continue
                question = str(qa["question"])
                row: dict[str, Any] = {"category": int(qa["category"]), "question": question}
                for k in KS:
                    row[f"plain@{k}"] = recall(memory, user, question, gold, k)
                for style in styles:
                    key = f"{args.model}|{style}|{question}"
                    if key not in cache:
                        start = time.perf_counter()
                        cache[key] = expand(llm, style, speakers, question)
                        generation_ms.append((time.perf_counter() - start) * 1000)
                        args.cache.write_text(json.dumps(cache))
                    row[f"{style}:text"] = cache[key]
                    for k in KS:
                        row[f"{style}@{k}"] = recall(memory, user, f"{question} {cache[key]}", gold, k)
                rows.append(row)
            memory.close()
            log(f"conversation {n + 1}: {len(rows)} questions so far")
    llm.close()

    columns = ["plain", *styles]
    table = []
    for category in [*sorted(categories), 0]:
        subset = [r for r in rows if category in (0, r["category"])]
        label = "all" if category == 0 else f"category {category}"
        table.append([label, len(subset), *(mean([r[f"{c}@{k}"] for r in subset]) for c in columns for k in KS)])
    header = ["slice", "n", *(f"{c} R@{k}" for c in columns for k in KS)]
    print_table("evidence recall, as asked and expanded", header, table)
    summary: dict[str, Any] = {"questions": len(rows), "model": args.model}
    for c in columns:
        for k in KS:
            summary[f"{c}_recall@{k}"] = round(mean([r[f"{c}@{k}"] for r in rows]), 4)
    if generation_ms:
        summary["generation_p50_ms"] = round(percentile(generation_ms, 50), 1)
        summary["generation_p95_ms"] = round(percentile(generation_ms, 95), 1)
    emit(summary, {"summary": summary, "questions": rows}, args.json_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
