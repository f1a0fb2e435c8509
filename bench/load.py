"""A bounded load test of the HTTP service: concurrent clients mixing add, search and chat.

    python bench/load.py                          # 8 clients, 30 s, 1 server process, SQLite
    python bench/load.py --replicas 2             # 2 server processes on the same store
    python bench/load.py --store postgresql://... # any store URL

Each server is a real `uvicorn` process (`create_app` over the given store,
the real MiniLM embedder, and an always-answering stand-in LLM, so no model
time is measured). Clients authenticate with an API key and pick, per
request, add (verbatim), search or chat (streamed to the end). After the
run, every acknowledged add must be in the store and every finished chat
must have stored both turns: lost writes are counted, not assumed away.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

ROUTES = ("add", "search", "chat")
TOPICS = ["tea", "coffee", "Berlin", "Lisbon", "my order", "the refund", "jazz", "hiking", "my cat", "allergies"]


def serve(args: argparse.Namespace) -> None:
    """Child process: one replica."""
    import uvicorn

    from retain import Memory, Settings
    from retain.llm.base import LLM, Completion, CompletionStream, JSONSchema, Messages
    from retain.models import Usage
    from retain.server import create_app

    class StandInLLM(LLM):
        """Answers at once: one fact per extraction, a short streamed reply per chat."""

        name = "stand-in"

        def __init__(self) -> None:
            self.model = "stand-in"

        def _complete(
            self, checked: Messages, schema: JSONSchema | None, stream: bool
        ) -> Completion | CompletionStream:
            if schema is not None:
                said = checked[-1]["content"][-200:].replace('"', "'")
                op = {"op": "ADD", "id": None, "text": f"User said: {said[:120]}", "category": "fact", "reason": "load"}
                return Completion(text=json.dumps({"operations": [op]}), usage=Usage(llm_calls=1), model=self.model)
            reply = ["Thanks, ", "I have ", "noted ", "that."]
            return (
                CompletionStream(reply, model=self.model)
                if stream
                else Completion(text="".join(reply), usage=Usage(llm_calls=1), model=self.model)
            )

    settings = Settings.from_env()
    memory = Memory(store=args.store, llm=StandInLLM(), settings=settings)
    app = create_app(settings, memory=memory)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_replicas(store: str, replicas: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    procs, urls = [], []
    env = {**os.environ, "RETAIN_RATE_LIMIT": "10000000", "OMP_NUM_THREADS": "1"}
    for _ in range(replicas):
        port = free_port()
        cmd = [sys.executable, __file__, "--serve", "--port", str(port), "--store", store]
        procs.append(subprocess.Popen(cmd, env=env))
        urls.append(f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 120
    for url in urls:
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"server at {url} did not come up")
            time.sleep(0.2)
    return procs, urls


class Client(threading.Thread):
    def __init__(self, n: int, urls: list[str], key: str, until: float, weights: list[int]) -> None:
        super().__init__(daemon=True)
        self.n = n
        self.http = [httpx.Client(base_url=u, headers={"Authorization": f"Bearer {key}"}, timeout=60) for u in urls]
        self.until = until
        self.weights = weights
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.acked_adds = 0
        self.finished_chats = 0
        self.rng = random.Random(n)

    def run(self) -> None:
        user = f"user{self.n}"
        i = 0
        while time.monotonic() < self.until:
            http = self.http[i % len(self.http)]
            i += 1
            route = self.rng.choices(ROUTES, self.weights)[0]
            topic = self.rng.choice(TOPICS)
            start = time.perf_counter()
            try:
                if route == "add":
                    body = {"messages": f"Note {i} about {topic} from {user}", "user_id": user, "infer": False}
                    ok = http.post("/v1/memories", json=body).status_code == 200
                    self.acked_adds += ok
                elif route == "search":
                    ok = http.post("/v1/memories/search", json={"query": topic, "user_id": user}).status_code == 200
                else:
                    body = {"user_id": user, "session_id": f"{user}-s", "message": f"What about {topic}?"}
                    with http.stream("POST", "/v1/chat", json=body) as response:
                        text = "".join(response.iter_text())
                    ok = response.status_code == 200 and "event: done" in text
                    self.finished_chats += ok
            except httpx.HTTPError:
                ok = False
            self.latency[route].append((time.perf_counter() - start) * 1000)
            if not ok:
                self.errors[route] += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--store", help="store URL (default: a new SQLite file in a temp dir)")
    parser.add_argument("--mix", default="3,6,1", help="weights of add,search,chat")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    from retain import Memory, Settings
    from retain.keys import Keys

    store = args.store or f"sqlite:///{Path(tempfile.mkdtemp(prefix='retain-load-')) / 'load.db'}"
    setup = Memory(store=store, settings=Settings(in_process_worker=False))
    key = Keys(setup.store).create("load", name="bench/load.py")[1]
    setup.close()

    procs, urls = start_replicas(store, args.replicas)
    try:
        weights = [int(w) for w in args.mix.split(",")]
        until = time.monotonic() + args.seconds
        clients = [Client(n, urls, key, until, weights) for n in range(args.clients)]
        started = time.perf_counter()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        elapsed = time.perf_counter() - started
        time.sleep(3)  # let the in-process workers finish the chats' extraction jobs
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)

    check = Memory(store=store, settings=Settings(in_process_worker=False)).for_tenant("load")
    stored_adds = stored_turns = 0
    for c in clients:
        user = f"user{c.n}"
        cursor = None
        while True:
            page = check.get_all(user_id=user, filters={"role": "user"}, limit=1000, cursor=cursor)
            stored_adds += sum(1 for r in page.results if r.memory.startswith("Note "))
            if (cursor := page.next_cursor) is None:
                break
        stored_turns += len(check.messages(check._scope(user, None, f"{user}-s")))
    check.close()
    acked = sum(c.acked_adds for c in clients)
    chats = sum(c.finished_chats for c in clients)

    result: dict[str, Any] = {"clients": args.clients, "replicas": args.replicas, "seconds": round(elapsed, 1)}
    total = 0
    print(f"{'route':<8}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p95 ms':>10}")
    for route in ROUTES:
        values = [v for c in clients for v in c.latency[route]]
        errors = sum(c.errors[route] for c in clients)
        total += len(values)
        p50, p95 = percentile(values, 50), percentile(values, 95)
        print(f"{route:<8}{len(values):>10}{errors:>8}{p50:>10.1f}{p95:>10.1f}")
        result[route] = {"requests": len(values), "errors": errors, "p50_ms": round(p50, 1), "p95_ms": round(p95, 1)}
    result["requests_per_s"] = round(total / elapsed, 1)
    result["acked_adds"], result["stored_adds"] = acked, stored_adds
    result["finished_chats"], result["stored_chat_messages"] = chats, stored_turns
    result["lost_writes"] = (acked - stored_adds) + max(0, 2 * chats - stored_turns)
    print(
        f"throughput {result['requests_per_s']} req/s; adds acked {acked}, stored {stored_adds}; "
        f"chats {chats}, turns stored {stored_turns}; lost writes {result['lost_writes']}"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
