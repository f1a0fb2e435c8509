"""Scale-out for real: 2 `retain serve` and 2 `retain worker` processes on one PostgreSQL database.

Adds and searches go through both APIs at once. Every job must be processed exactly
once, concurrent identical adds must leave one memory, and a write acknowledged by
one API must be visible through the other at once.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from retain import Memory, Settings
from retain.keys import Keys

pytestmark = pytest.mark.postgres
HERE = Path(__file__).parent
LAUNCH = "import scale_out_llm; from retain.cli import main; main()"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def cluster(postgres_dsn: str, tmp_path: Path) -> Iterator[tuple[list[httpx.Client], str]]:
    with Memory(store=postgres_dsn, embedder="hash:64", settings=Settings(in_process_worker=False)) as setup:
        key = Keys(setup.store).create("acme")[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETAIN_")}
    env.update(
        RETAIN_STORE=postgres_dsn,
        RETAIN_EMBEDDER="hash:64",
        RETAIN_LLM="echo:facts",
        RETAIN_IN_PROCESS_WORKER="false",  # only the worker processes run jobs
        RETAIN_RATE_LIMIT="1000000",
        RETAIN_DEDUP_THRESHOLD="0.999",  # the hash embedder puts "locker 23" and "locker 24" too close
        PYTHONPATH=os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]),
        HOME=str(tmp_path),
    )
    ports = [free_port(), free_port()]
    procs = [
        subprocess.Popen([sys.executable, "-c", LAUNCH, "serve", "--port", str(p)], env=env, stderr=subprocess.DEVNULL)
        for p in ports
    ]
    procs += [
        subprocess.Popen([sys.executable, "-c", LAUNCH, "worker", "--poll", "0.1"], env=env, stderr=subprocess.DEVNULL)
        for _ in range(2)
    ]
    clients = [
        httpx.Client(base_url=f"http://127.0.0.1:{p}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        for p in ports
    ]
    try:
        deadline = time.monotonic() + 90
        for client in clients:
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "retain serve did not come up"
                time.sleep(0.2)
        yield clients, postgres_dsn
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        for client in clients:
            client.close()


def test_two_apis_and_two_workers_share_one_database(cluster: tuple[list[httpx.Client], str]) -> None:
    apis, dsn = cluster

    def add(i: int) -> str:
        api = apis[i % 2]
        message = "I love tea" if i < 20 else f"my locker number is {i}"
        user = "dup" if i < 20 else "many"
        response = api.post("/v1/memories", json={"messages": message, "user_id": user})
        assert response.status_code == 200, response.text
        return str(response.json()["job_id"])

    def write_then_read_elsewhere(i: int) -> None:
        body = {"messages": f"verbatim note {i}", "user_id": "reader", "infer": False}
        created = apis[i % 2].post("/v1/memories", json=body).json()["results"][0]["id"]
        other = apis[(i + 1) % 2]
        assert other.get(f"/v1/memories/{created}").status_code == 200, "acknowledged, so visible everywhere"
        hits = other.post("/v1/memories/search", json={"query": f"verbatim note {i}", "user_id": "reader"}).json()
        assert created in [h["id"] for h in hits["results"]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        job_ids = list(pool.map(add, range(60)))
        list(pool.map(write_then_read_elsewhere, range(20)))
    assert len(set(job_ids)) == 60

    deadline = time.monotonic() + 120
    while True:
        jobs = apis[0].get("/v1/jobs", params={"limit": 1000}).json()
        if all(j["status"] == "done" for j in jobs) and len(jobs) == 60:
            break
        assert time.monotonic() < deadline, f"jobs did not finish: {[j['status'] for j in jobs]}"
        time.sleep(0.3)
    assert sorted(j["id"] for j in jobs) == sorted(job_ids)
    assert all(j["attempts"] == 1 for j in jobs), "every job was claimed once: exactly-once processing"

    dup = apis[1].get("/v1/memories", params={"user_id": "dup", "limit": 1000}).json()["results"]
    assert [m["memory"] for m in dup] == ["User said: I love tea"], "20 identical adds, one memory"
    many = apis[0].get("/v1/memories", params={"user_id": "many", "limit": 1000}).json()["results"]
    assert len(many) == 40 and len({m["memory"] for m in many}) == 40

    with Memory(store=dsn, embedder="hash:64", settings=Settings(in_process_worker=False)) as check:
        events = check.for_tenant("acme").history(dup[0]["id"])
        adds = [e for e in events if e.event == "ADD"]
        assert len(adds) == 1, "the duplicates became NOOPs on the one memory, not extra versions"
