from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from retain.cli import main


@pytest.fixture
def run(tmp_path: Path):  # type: ignore[no-untyped-def]
    runner = CliRunner()
    env = {"RETAIN_STORE": f"sqlite:///{tmp_path / 'cli.db'}", "RETAIN_EMBEDDER": "hash:32"}

    def invoke(*args: str, code: int = 0, input: str | None = None) -> str:
        result = runner.invoke(main, list(args), env=env, input=input)
        assert result.exit_code == code, result.output
        return result.output

    return invoke


def test_add_search_list_history_delete(run) -> None:  # type: ignore[no-untyped-def]
    out = run("memories", "add", "I love tea", "--user", "alice", "--metadata", '{"k": 1}')
    assert out.startswith("ADD")
    run("memories", "add", "I live in Oslo", "--user", "alice")
    hits = json.loads(run("memories", "search", "tea", "--user", "alice", "--json", "--explain"))["results"]
    assert hits[0]["memory"] == "I love tea" and hits[0]["scores"]["vector_rank"] == 1.0
    listed = json.loads(run("memories", "list", "--user", "alice", "--json"))["results"]
    assert [r["memory"] for r in listed] == ["I live in Oslo", "I love tea"]
    tea_id = listed[1]["id"]
    assert "ADD" in run("memories", "history", tea_id)
    assert json.loads(run("memories", "get", tea_id))["metadata"] == {"k": 1, "role": "user"}
    assert "memories=1" in run("memories", "delete", tea_id)
    assert "memories=1" in run("memories", "delete", "--all", "--user", "alice", "--yes")


def test_user_errors_are_one_line(run) -> None:  # type: ignore[no-untyped-def]
    out = run("memories", "search", "tea", code=2)
    assert out.strip().startswith("error: No scope given") and "Traceback" not in out
    assert "No memory with id" in run("memories", "get", "missing", code=1)
    assert "Unknown filter operator 'like'" in run(
        "memories", "list", "--user", "a", "--filters", '{"x": {"like": 1}}', code=2
    )
    assert "not valid JSON" in run("memories", "list", "--user", "a", "--filters", "{", code=2)
    assert "Give a memory ID" in run("memories", "delete", code=2)


def test_export_import_round_trip(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run("memories", "add", "I love tea", "--user", "alice")
    out_file = tmp_path / "dump.jsonl"
    run("export", "--out", str(out_file))
    assert out_file.read_text().splitlines()[0].startswith('{"type": "header"')
    runner = CliRunner()
    env = {"RETAIN_STORE": f"sqlite:///{tmp_path / 'other.db'}", "RETAIN_EMBEDDER": "hash:32"}
    result = runner.invoke(main, ["import", str(out_file)], env=env)
    assert result.exit_code == 0, result.output
    assert "imported=3" in result.output
    result = runner.invoke(main, ["store", "check"], env=env)
    assert result.exit_code == 0 and "ok" in result.output


def test_jobs_and_worker_commands(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from retain import Memory, Settings
    from retain.testing import HashEmbedder, ScriptedLLM

    m = Memory(
        str(tmp_path / "cli.db"), HashEmbedder(32), llm=ScriptedLLM(), settings=Settings(in_process_worker=False)
    )
    job_id = m.add("I like tea", user_id="u", background=True).job_id
    m.close()
    listed = json.loads(run("jobs", "list", "--json"))
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "queued")]
    assert "needs an LLM" in run("worker", "--once", code=1)
    assert "No retryable job" in run("jobs", "retry", "nope", code=1)


def test_keys_create_list_revoke(run) -> None:  # type: ignore[no-untyped-def]
    secret = run("keys", "create", "--tenant", "acme", "--name", "ci").strip().splitlines()[-1]
    assert secret.startswith("rtn_") and len(secret) > 40
    listed = run("keys", "list")
    assert "acme" in listed and "active" in listed and secret not in listed
    key_id = listed.split()[0]
    run("keys", "revoke", key_id)
    assert "revoked" in run("keys", "list", "--tenant", "acme")
    assert "No active API key" in run("keys", "revoke", key_id, code=1)
    assert "tenant_id must be a non-empty string" in run("keys", "create", "--tenant", " ", code=2)


def test_serve_starts_on_a_fresh_machine_and_prints_a_working_key(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETAIN_")}
    env.update(HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "data"), RETAIN_LLM="none")
    cmd = [sys.executable, "-m", "retain.cli", "serve", "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        secret = server.stdout.readline().strip()
        assert secret.startswith("rtn_")
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and server.poll() is None, "retain serve did not start"
                time.sleep(0.2)
        assert "Support chat" in httpx.get(f"http://127.0.0.1:{port}/").text
        assert httpx.get(f"http://127.0.0.1:{port}/v1/info").status_code == 401
        info = httpx.get(f"http://127.0.0.1:{port}/v1/info", headers={"Authorization": f"Bearer {secret}"}).json()
        assert info["tenant_id"] == "default" and info["admin"] is True and info["llm"] is None
        assert (tmp_path / "data" / "retain" / "retain.db").exists()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=30)
    assert "made the first API key" in err and f"#key={secret}" in err
