"""The local embedder in int8 compute (`local:minilm`) against float compute (`local:minilm-float`).

Both embed the same LoCoMo questions (one query at a time, as a search does), interleaved query by
query so that load on the machine hits both alike, and the same turns as one `embed` call each, as
`add` does: short LoCoMo turns and long LongMemEval ones (assistant answers run to MiniLM's 256
tokens). Reports p50/p95 per query, turns per second, the ratios, and how close the two models'
vectors are (cosine per text).

    python bench/embedder.py [--queries 200] [--turns 2000] [--long-turns 300] [--rounds 3]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import emit, load_json, log, percentile, print_table
from locomo import DEFAULT_DATA, load_conversations
from longmemeval import DEFAULT_DATA as LME_DATA

from retain.embedders import Embedder
from retain.embedders.minilm import MiniLMEmbedder, MiniLMFloatEmbedder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="distinct LoCoMo questions")
    parser.add_argument("--turns", type=int, default=2000, help="LoCoMo turns embedded in batches")
    parser.add_argument("--long-turns", type=int, default=300, help="LongMemEval turns embedded in one call")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the queries")
    args = parser.parse_args(argv)

    conversations = load_conversations(DEFAULT_DATA)
    queries = [str(q["question"]) for c in conversations for q in c.qa][: args.queries]
    turns = [t.text for c in conversations for s in c.sessions for t in s][: args.turns]
    haystack = load_json(LME_DATA)[0]["haystack_sessions"]
    long_turns = [t["content"] for session in haystack for t in session if t["content"].strip()][: args.long_turns]
    models: dict[str, Embedder] = {"int8": MiniLMEmbedder(), "float": MiniLMFloatEmbedder()}
    for model in models.values():
        model.embed(queries[:10])

    per_query: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for query in queries:
            for name, model in models.items():
                start = time.perf_counter()
                model.embed([query])
                per_query[name].append((time.perf_counter() - start) * 1000)
    throughput: dict[str, float] = {}
    long_throughput: dict[str, float] = {}
    vectors = {}
    long_vectors = {}
    for name, model in models.items():
        start = time.perf_counter()
        vectors[name] = model.embed(turns)
        throughput[name] = len(turns) / (time.perf_counter() - start)
        start = time.perf_counter()
        long_vectors[name] = model.embed(long_turns)
        long_throughput[name] = len(long_turns) / (time.perf_counter() - start)
    cosines = np.concatenate([(v["int8"] * v["float"]).sum(axis=1) for v in (vectors, long_vectors)])
    query_cos = (models["int8"].embed(queries) * models["float"].embed(queries)).sum(axis=1)

    summary = {
        "load": round(os.getloadavg()[0], 2),
        "queries": len(queries) * args.rounds,
        "turns": len(turns),
        "long_turns": len(long_turns),
        **{f"{n}_query_p50_ms": round(percentile(v, 50), 2) for n, v in per_query.items()},
        **{f"{n}_query_p95_ms": round(percentile(v, 95), 2) for n, v in per_query.items()},
        **{f"{n}_turns_per_s": round(v, 1) for n, v in throughput.items()},
        **{f"{n}_long_turns_per_s": round(v, 1) for n, v in long_throughput.items()},
        "query_p50_speedup": round(percentile(per_query["float"], 50) / percentile(per_query["int8"], 50), 2),
        "turns_speedup": round(throughput["int8"] / throughput["float"], 2),
        "long_turns_speedup": round(long_throughput["int8"] / long_throughput["float"], 2),
        "cosine_min": round(float(min(cosines.min(), query_cos.min())), 4),
        "cosine_mean": round(float(np.concatenate([cosines, query_cos]).mean()), 4),
    }
    print_table(
        f"local embedder, int8 vs float compute (load {summary['load']})",
        ["model", "query p50 ms", "query p95 ms", "LoCoMo turns/s", "LongMemEval turns/s"],
        [
            [
                name,
                summary[f"{name}_query_p50_ms"],
                summary[f"{name}_query_p95_ms"],
                summary[f"{name}_turns_per_s"],
                summary[f"{name}_long_turns_per_s"],
            ]
            for name in models
        ],
    )
    log("done")
    emit(summary, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
