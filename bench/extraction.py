"""Fact extraction quality and cost on LoCoMo sessions: `add(infer=True)` against LoCoMo's observations.

LoCoMo ships model-written reference facts per session (`observation`). Each
session of a conversation is added as one `add(infer=True)` call (one user per
conversation, session date as `at`); the memories that come out are compared
with the reference facts by MiniLM cosine similarity:

- recall: the share of reference facts with an extracted memory at cosine >= --match;
- precision: the share of extracted memories with a reference fact at cosine >= --match
  (judged against all of the conversation's facts so far, since a later memory may
  restate an earlier fact);
- seconds, prompt/completion tokens and LLM calls per add (the design target is 1).

The LLM is `--llm` (default `local:qwen2.5-1.5b`, offline). Any OpenAI-compatible
endpoint works: `OPENAI_BASE_URL=... OPENAI_API_KEY=... python bench/extraction.py --llm openai:MODEL`.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from retain import Memory, Settings
from retain.embedders.minilm import MiniLMEmbedder

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo" / "locomo_dev.json"


def session_date(raw: str) -> datetime:
    """LoCoMo dates look like '1:56 pm on 8 May, 2023'."""
    return datetime.strptime(raw.replace(" on ", " ").replace(",", ""), "%I:%M %p %d %B %Y")


def sessions(conversation: dict[str, Any]) -> list[tuple[int, datetime, list[dict[str, Any]]]]:
    conv = conversation["conversation"]
    out = []
    for key, turns in conv.items():
        match = re.fullmatch(r"session_(\d+)", key)
        if match and isinstance(turns, list) and turns:
            out.append((int(match.group(1)), session_date(conv[f"{key}_date_time"]), turns))
    return sorted(out, key=lambda item: item[0])


def turn_text(turn: dict[str, Any]) -> str:
    text = str(turn["text"])
    if turn.get("blip_caption"):
        text += f" [shares image: {turn['blip_caption']}]"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--llm", default="local:qwen2.5-1.5b", help="LLM spec, e.g. openai:gpt-4o-mini")
    parser.add_argument("--conversations", type=int, default=1, help="how many conversations (from the first)")
    parser.add_argument("--sessions", type=int, default=4, help="sessions per conversation (from the first)")
    parser.add_argument("--match", type=float, default=0.6, help="cosine at which two facts are the same")
    args = parser.parse_args()

    data = json.loads(args.data.read_text())[: args.conversations]
    embedder = MiniLMEmbedder()
    settings = Settings(track_access=False, in_process_worker=False)
    per_session: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        memory = Memory(str(Path(tmp) / "extraction.db"), embedder, llm=args.llm, settings=settings)
        for conversation in data:
            user = conversation["sample_id"]
            reference_so_far: list[str] = []
            for number, when, turns in sessions(conversation)[: args.sessions]:
                observed = conversation["observation"].get(f"session_{number}_observation", {})
                reference = [fact for facts in observed.values() for fact, _ in facts]
                reference_so_far += reference
                messages = [{"role": "user", "name": t["speaker"], "content": turn_text(t)} for t in turns]
                start = time.perf_counter()
                result = memory.add(messages, user_id=user, at=when)
                seconds = time.perf_counter() - start
                extracted = [e.memory for e in result.results if e.event in ("ADD", "UPDATE")]
                usage = result.usage
                row = {
                    "conversation": user,
                    "session": number,
                    "turns": len(turns),
                    "seconds": round(seconds, 2),
                    "llm_calls": usage.llm_calls if usage else 0,
                    "prompt_tokens": usage.prompt_tokens if usage else 0,
                    "completion_tokens": usage.completion_tokens if usage else 0,
                    "reference": len(reference),
                    "extracted": len(extracted),
                    "events": [e.event for e in result.results],
                    **match_counts(embedder, reference, extracted, reference_so_far, args.match),
                }
                per_session.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        memory.close()

    total_ref = sum(r["reference"] for r in per_session)
    total_ext = sum(r["extracted"] for r in per_session)
    summary = {
        "llm": args.llm,
        "conversations": args.conversations,
        "sessions": len(per_session),
        "match_cosine": args.match,
        "fact_recall": round(sum(r["recalled"] for r in per_session) / max(total_ref, 1), 4),
        "fact_precision": round(sum(r["precise"] for r in per_session) / max(total_ext, 1), 4),
        "reference_facts": total_ref,
        "extracted_facts": total_ext,
        "seconds_per_session": round(float(np.mean([r["seconds"] for r in per_session])), 2),
        "prompt_tokens_per_session": round(float(np.mean([r["prompt_tokens"] for r in per_session])), 1),
        "completion_tokens_per_session": round(float(np.mean([r["completion_tokens"] for r in per_session])), 1),
        "llm_calls_per_add": round(float(np.mean([r["llm_calls"] for r in per_session])), 3),
    }
    print(json.dumps(summary))


def match_counts(
    embedder: MiniLMEmbedder, reference: list[str], extracted: list[str], reference_so_far: list[str], cosine: float
) -> dict[str, int]:
    if not reference or not extracted:
        return {"recalled": 0, "precise": 0}
    ref = embedder.embed(reference)
    ext = embedder.embed(extracted)
    so_far = embedder.embed(reference_so_far)
    recalled = int(((ref @ ext.T).max(axis=1) >= cosine).sum())
    precise = int(((ext @ so_far.T).max(axis=1) >= cosine).sum())
    return {"recalled": recalled, "precise": precise}


if __name__ == "__main__":
    main()
