"""The local embedder in int8 compute (`local:minilm`) against float compute (`local:minilm-float`).

Both embed the same LoCoMo questions (one query at a time, as a search does) and the same turns (in
batches of 32, as `add` does), interleaved query by query so that load on the machine hits both
alike. Reports p50/p95 per query, turns per second, the ratios, and how close the two models'
vectors are (cosine per text).

    python bench/embedder.py [--queries 200] [--turns 2000] [--rounds 3]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from _common import emit, log, percentile, print_table
from locomo import DEFAULT_DATA, load_conversations

from retain.embedders import Embedder
from retain.embedders.minilm import MiniLMEmbedder, MiniLMFloatEmbedder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="distinct LoCoMo questions")
    parser.add_argument("--turns", type=int, default=2000, help="LoCoMo turns embedded in batches")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the queries")
    args = parser.parse_args(argv)

    conversations = load_conversations(DEFAULT_DATA)
    queries = [str(q["question"]) for c in conversations for q in c.qa][: args.queries]
    turns = [t.text for c in conversations for s in c.sessions for t in s][: args.turns]
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
    vectors = {}
    for name, model in models.items():
        start = time.perf_counter()
        vectors[name] = model.embed(turns)
        throughput[name] = len(turns) / (time.perf_counter() - start)
    cosines = (vectors["int8"] * vectors["float"]).sum(axis=1)
    query_cos = (models["int8"].embed(queries) * models["float"].embed(queries)).sum(axis=1)

    summary = {
        "load": round(os.getloadavg()[0], 2),
        "queries": len(queries) * args.rounds,
        "turns": len(turns),
        **{f"{n}_query_p50_ms": round(percentile(v, 50), 2) for n, v in per_query.items()},
        **{f"{n}_query_p95_ms": round(percentile(v, 95), 2) for n, v in per_query.items()},
        **{f"{n}_turns_per_s": round(v, 1) for n, v in throughput.items()},
        "query_p50_speedup": round(percentile(per_query["float"], 50) / percentile(per_query["int8"], 50), 2),
        "turns_speedup": round(throughput["int8"] / throughput["float"], 2),
        "cosine_min": round(float(min(cosines.min(), query_cos.min())), 4),
        "cosine_mean": round(float(np.concatenate([cosines, query_cos]).mean()), 4),
    }
    print_table(
        f"local embedder, int8 vs float compute (load {summary['load']})",
        ["model", "query p50 ms", "query p95 ms", "turns/s"],
        [
            [name, summary[f"{name}_query_p50_ms"], summary[f"{name}_query_p95_ms"], summary[f"{name}_turns_per_s"]]
            for name in models
        ],
    )
    log("done")
    emit(summary, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
