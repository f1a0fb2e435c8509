"""Every route over a real server, the error mapping, and tenant-isolation attacks."""

from __future__ import annotations

from typing import Any

import httpx
from conftest import BOTH_BACKENDS, Live, StartServer

from retain import ProviderError
from retain.testing import ScriptedLLM

pytestmark = BOTH_BACKENDS


def ops(*items: tuple[str, Any, str, str]) -> dict[str, Any]:
    return {
        "operations": [{"op": op, "id": id, "text": t, "category": c, "reason": "said so"} for op, id, t, c in items]
    }


def add_verbatim(client: httpx.Client, text: str, user_id: str = "alice") -> str:
    response = client.post("/v1/memories", json={"messages": text, "user_id": user_id, "infer": False})
    assert response.status_code == 200, response.text
    return str(response.json()["results"][0]["id"])


def error_type(response: httpx.Response) -> str:
    return str(response.json()["error"]["type"])


def test_search_counts_dates_in_the_query_from_at(live: Live) -> None:
    c = live.client(live.acme)
    for day in ("2024-03-01", "2024-03-20"):
        body = {"messages": "I bought a smoker", "user_id": "dana", "infer": False, "at": f"{day}T12:00:00Z"}
        assert c.post("/v1/memories", json=body).status_code == 200
    ranked = {}
    for asked in ("2024-03-11T12:00:00Z", "2024-03-30T12:00:00Z"):
        body = {"query": "what did I buy 10 days ago", "user_id": "dana", "limit": 1, "at": asked}
        ranked[asked] = c.post("/v1/memories/search", json=body).json()["results"][0]["valid_from"][:10]
    assert ranked == {"2024-03-11T12:00:00Z": "2024-03-01", "2024-03-30T12:00:00Z": "2024-03-20"}


def test_memory_routes_round_trip(live: Live) -> None:
    c = live.client(live.acme)
    tea = add_verbatim(c, "I love green tea")
    add_verbatim(c, "My cat is called Tom")

    found = c.post("/v1/memories/search", json={"query": "green tea", "user_id": "alice", "explain": True}).json()
    assert found["results"][0]["id"] == tea
    assert {"rrf", "vector"} <= set(found["results"][0]["scores"])

    page = c.get("/v1/memories", params={"user_id": "alice", "limit": 1}).json()
    assert len(page["results"]) == 1 and page["next_cursor"]
    rest = c.get("/v1/memories", params={"user_id": "alice", "cursor": page["next_cursor"]}).json()
    assert len(rest["results"]) == 1 and rest["next_cursor"] is None

    assert c.get(f"/v1/memories/{tea}").json()["memory"] == "I love green tea"
    updated = c.patch(f"/v1/memories/{tea}", json={"text": "I love oolong tea", "reason": "corrected"}).json()
    assert updated["event"] == "UPDATE" and updated["previous_memory"] == "I love green tea"
    history = c.get(f"/v1/memories/{updated['id']}/history").json()
    assert [h["event"] for h in history] == ["ADD", "UPDATE"]
    assert history[-1]["reason"] == "corrected"
    sources = c.get(f"/v1/memories/{tea}/sources").json()
    assert [m["content"] for m in sources] == ["I love green tea"]

    with_old = c.get("/v1/memories", params={"user_id": "alice", "include_superseded": True}).json()["results"]
    assert len(with_old) == 3

    purged = c.delete(f"/v1/memories/{updated['id']}").json()
    assert purged["memories"] == 2, "both versions of the lineage go"
    assert c.get(f"/v1/memories/{tea}").status_code == 404
    everything = c.delete("/v1/memories", params={"user_id": "alice"}).json()
    assert everything["memories"] == 1
    assert c.get("/v1/memories", params={"user_id": "alice"}).json()["results"] == []


def test_add_with_inference_queues_a_job_that_a_worker_completes(live: Live) -> None:
    assert live.llm is not None
    c = live.client(live.acme)
    queued = c.post(
        "/v1/memories", json={"messages": [{"role": "user", "content": "I moved to Oslo"}], "user_id": "bob"}
    )
    assert queued.status_code == 200 and queued.json()["job_id"] and queued.json()["results"] == []
    jobs = c.get("/v1/jobs").json()
    assert [(j["id"], j["status"]) for j in jobs] == [(queued.json()["job_id"], "queued")]

    live.llm.enqueue(ops(("ADD", None, "User lives in Oslo", "fact")))
    assert live.memory.run_jobs() == 1
    assert [m["memory"] for m in c.get("/v1/memories", params={"user_id": "bob"}).json()["results"]] == [
        "User lives in Oslo"
    ]
    assert c.get("/v1/jobs", params={"status": "done"}).json()[0]["status"] == "done"


def test_provider_outage_is_502_and_the_messages_stay_queued(live: Live) -> None:
    assert live.llm is not None
    c = live.client(live.acme)
    live.llm.enqueue(ProviderError("upstream 503"))
    body = {"messages": "I am allergic to peanuts", "user_id": "bob", "background": False}
    response = c.post("/v1/memories", json=body)
    assert response.status_code == 502 and error_type(response) == "provider_error"
    (job,) = c.get("/v1/jobs").json()
    assert job["status"] == "queued" and job["attempts"] == 1 and "upstream 503" in job["last_error"]

    live.llm.enqueue(ops(("ADD", None, "User is allergic to peanuts", "fact")))
    assert live.memory.run_jobs() == 1
    assert c.get("/v1/memories", params={"user_id": "bob"}).json()["results"][0]["memory"] == (
        "User is allergic to peanuts"
    )


def test_dead_job_can_be_retried_over_http(start_server: StartServer) -> None:
    llm = ScriptedLLM()
    live = start_server(llm=llm, job_max_attempts=1)
    c = live.client(live.acme)
    llm.enqueue(ProviderError("down"))
    job_id = c.post("/v1/memories", json={"messages": "I like jazz", "user_id": "u"}).json()["job_id"]
    live.memory.run_jobs()
    assert c.get("/v1/jobs", params={"status": "dead"}).json()[0]["id"] == job_id
    retried = c.post(f"/v1/jobs/{job_id}/retry")
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    assert live.client(live.globex).post(f"/v1/jobs/{job_id}/retry").status_code == 404


def test_session_message_routes(live: Live) -> None:
    c = live.client(live.acme)
    for role, text in (("user", "hi"), ("assistant", "hello!"), ("user", "bye")):
        created = c.post("/v1/sessions/s1/messages", json={"role": role, "content": text, "user_id": "alice"})
        assert created.status_code == 201
    messages = c.get("/v1/sessions/s1/messages", params={"user_id": "alice"}).json()
    assert [m["content"] for m in messages] == ["hi", "hello!", "bye"]
    assert [m["content"] for m in c.get("/v1/sessions/s1/messages", params={"limit": 2}).json()] == ["hello!", "bye"]
    assert c.delete("/v1/sessions/s1/messages").json() == {"deleted": 3}
    assert c.get("/v1/sessions/s1/messages").json() == []


def test_service_routes(live: Live) -> None:
    anonymous = live.client(None)
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    assert "text/html" in anonymous.get("/").headers["content-type"]
    assert anonymous.get("/static/app.js").status_code == 200
    docs = anonymous.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower(), "no CDN: /docs works offline"
    assert anonymous.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    spec = anonymous.get("/openapi.json").json()
    assert {"/v1/memories", "/v1/memories/search", "/v1/chat", "/v1/memories/{memory_id}/history"} <= set(spec["paths"])

    c = live.client(live.acme)
    add_verbatim(c, "I like tea")
    info = c.get("/v1/info").json()
    assert info["tenant_id"] == "acme" and info["auth"] is True and info["llm"] == "scripted"
    metrics = anonymous.get("/metrics").text
    assert 'retain_http_request_duration_seconds_count{method="POST",route="/v1/memories",status="200"} 1.0' in metrics
    assert 'retain_jobs{status="queued"} 0.0' in metrics
    assert "retain_llm_tokens_total" in metrics


def test_info_explains_how_to_enable_an_llm(start_server: StartServer) -> None:
    live = start_server(llm=None)
    c = live.client(live.acme)
    info = c.get("/v1/info").json()
    assert info["llm"] is None and "RETAIN_LLM=" in info["llm_help"]
    add_verbatim(c, "CRUD still works without an LLM")
    assert len(c.get("/v1/memories", params={"user_id": "alice"}).json()["results"]) == 1
    chat = c.post("/v1/chat", json={"user_id": "alice", "session_id": "s", "message": "hi"})
    assert chat.status_code == 503 and "RETAIN_LLM=" in chat.json()["error"]["message"]
    inferred = c.post("/v1/memories", json={"messages": "I like tea", "user_id": "alice"})
    assert inferred.status_code == 503 and error_type(inferred) == "not_configured"


def test_error_mapping(start_server: StartServer) -> None:
    live = start_server(llm=ScriptedLLM(), max_request_bytes=20_000, max_message_chars=1_000)
    c = live.client(live.acme)
    tea = add_verbatim(c, "I like tea")
    new = c.patch(f"/v1/memories/{tea}", json={"text": "I like coffee"}).json()["id"]

    malformed = c.post("/v1/memories", content=b'{"messages": ', headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400 and error_type(malformed) == "malformed_body"
    assert live.client(None).get("/v1/memories", params={"user_id": "a"}).status_code == 401
    assert live.client("rtn_not-a-real-key").get("/v1/memories", params={"user_id": "a"}).status_code == 401
    assert live.client("Basic xyz").get("/v1/info").status_code == 401
    assert c.get("/v1/memories/00000000-0000-0000-0000-000000000000").status_code == 404
    stale = c.patch(f"/v1/memories/{tea}", json={"text": "again"})
    assert stale.status_code == 409 and new in stale.json()["error"]["message"]

    big = c.post("/v1/memories", json={"messages": "x" * 30_000, "user_id": "a", "infer": False})
    assert big.status_code == 413 and error_type(big) == "too_large"
    chunked = c.post(
        "/v1/memories",
        content=iter([b'{"messages": "', b"y" * 25_000, b'", "user_id": "a"}']),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413, "a streamed body is cut off too"
    long_message = c.post("/v1/memories", json={"messages": "z" * 1_500, "user_id": "a", "infer": False})
    assert long_message.status_code == 422 and "1000" in long_message.json()["error"]["message"]

    for bad in (
        {"messages": "", "user_id": "a", "infer": False},
        {"messages": "no scope", "infer": False},
        {"messages": [], "user_id": "a", "infer": False},
        {"messages": "x", "user_id": "a", "unknown": 1},
        {"messages": "x", "user_id": "a", "at": "yesterday-ish"},
    ):
        response = c.post("/v1/memories", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert error_type(response) == "invalid_input"
    assert c.post("/v1/memories/search", json={"query": "x", "user_id": "a", "limit": 0}).status_code == 422
    bad_filter = c.post(
        "/v1/memories/search", json={"query": "x", "user_id": "a", "filters": {"year": {"around": 2020}}}
    )
    assert bad_filter.status_code == 422
    assert c.get("/v1/memories", params={"user_id": "a", "cursor": "abc"}).status_code == 422
    assert c.get("/v1/jobs", params={"status": "lost"}).status_code == 422
    assert c.post("/v1/chat", json={"user_id": "a", "session_id": "s", "message": "   "}).status_code == 422


def test_rate_limit_per_key(start_server: StartServer) -> None:
    live = start_server(rate_limit_per_minute=6)  # a burst of 10, then one every 10 s
    c = live.client(live.acme)
    statuses = [c.get("/v1/memories", params={"user_id": "a"}).status_code for _ in range(12)]
    assert statuses[:10] == [200] * 10
    assert statuses[10] == 429
    limited = c.get("/v1/memories", params={"user_id": "a"})
    assert int(limited.headers["Retry-After"]) >= 1
    assert live.client(live.globex).get("/v1/memories", params={"user_id": "a"}).status_code == 200, "per key"


def test_tenants_cannot_reach_each_other(live: Live) -> None:
    acme, globex = live.client(live.acme), live.client(live.globex)
    secret = add_verbatim(acme, "acme alice's secret: the vault code is 1234")
    add_verbatim(globex, "globex alice likes tennis")  # the same user id in another tenant
    acme.post("/v1/sessions/s1/messages", json={"role": "user", "content": "acme session", "user_id": "alice"})

    for method, path in (
        ("GET", f"/v1/memories/{secret}"),
        ("PATCH", f"/v1/memories/{secret}"),
        ("DELETE", f"/v1/memories/{secret}"),
        ("GET", f"/v1/memories/{secret}/history"),
        ("GET", f"/v1/memories/{secret}/sources"),
    ):
        response = globex.request(method, path, json={"text": "pwned"} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path)
        assert "vault" not in response.text

    searched = globex.post("/v1/memories/search", json={"query": "vault code secret", "user_id": "alice"}).json()
    assert [h["memory"] for h in searched["results"]] == ["globex alice likes tennis"]
    listed = globex.get("/v1/memories", params={"user_id": "alice", "include_superseded": True}).json()["results"]
    assert [r["memory"] for r in listed] == ["globex alice likes tennis"]
    assert globex.get("/v1/sessions/s1/messages", params={"user_id": "alice"}).json() == []
    assert globex.delete("/v1/sessions/s1/messages").json() == {"deleted": 0}
    assert globex.delete("/v1/memories", params={"user_id": "alice"}).json()["memories"] == 1

    assert acme.get(f"/v1/memories/{secret}").json()["memory"].startswith("acme alice's secret")
    assert len(acme.get("/v1/sessions/s1/messages").json()) == 1
    # Naming a tenant in the body is refused, not obeyed.
    assert globex.post("/v1/memories", json={"messages": "x", "user_id": "a", "tenant_id": "acme"}).status_code == 422


def test_admin_keys(live: Live) -> None:
    admin, plain = live.client(live.admin), live.client(live.acme)
    assert plain.get("/v1/admin/keys").status_code == 403
    assert plain.post("/v1/admin/keys", json={"tenant_id": "acme"}).status_code == 403

    created = admin.post("/v1/admin/keys", json={"tenant_id": "initech", "name": "ci"})
    assert created.status_code == 201
    key = created.json()
    newcomer = live.client(key["secret"])
    add_verbatim(newcomer, "initech data", user_id="peter")
    assert newcomer.get("/v1/info").json()["tenant_id"] == "initech"

    listed = admin.get("/v1/admin/keys", params={"tenant_id": "initech"}).json()
    assert [(k["id"], k["name"]) for k in listed] == [(key["id"], "ci")]
    assert "secret" not in listed[0]
    assert admin.delete(f"/v1/admin/keys/{key['id']}").status_code == 204
    assert newcomer.get("/v1/info").status_code == 401, "a revoked key stops working at once"
    assert admin.delete(f"/v1/admin/keys/{key['id']}").status_code == 404
    assert admin.post("/v1/admin/keys", json={"tenant_id": ""}).status_code == 422


def test_dev_mode_without_auth_uses_the_default_tenant(start_server: StartServer) -> None:
    live = start_server(auth=False)
    c = live.client(None)
    add_verbatim(c, "no key needed")
    assert c.get("/v1/info").json()["tenant_id"] == "default"
    assert live.memory.for_tenant("default").get_all(user_id="alice").results[0].memory == "no key needed"


def test_a_store_that_is_gone_answers_503_not_500(start_server: StartServer) -> None:
    live = start_server()
    c = live.client(live.acme)
    add_verbatim(c, "kept")
    live.memory.store.close()  # what a lost database looks like to the routes: StoreError
    assert live.client(None).get("/healthz").status_code == 503
    response = c.get("/v1/memories", params={"user_id": "alice"})
    assert response.status_code == 503 and error_type(response) == "store_unavailable"
