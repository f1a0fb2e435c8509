"""The store contract, run against every backend through the `store` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retain.errors import StoreError
from retain.store.base import ApiKey, Store
from retain.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s = SQLiteStore(tmp_path / "contract.db", dimensions=8, embedder_id="hash:8")
    yield s
    s.close()


def _key(id: str, tenant: str, created_at: int, admin: bool = False) -> ApiKey:
    return ApiKey(id=id, tenant_id=tenant, name=f"key {id}", prefix=f"rtn_{id}", admin=admin, created_at=created_at)


def test_api_keys_are_found_by_hash_listed_per_tenant_and_revoked_within_their_tenant(store: Store) -> None:
    store.create_api_key(_key("a1", "acme", 1), "hash-a1")
    store.create_api_key(_key("a2", "acme", 2, admin=True), "hash-a2")
    store.create_api_key(_key("b1", "globex", 3), "hash-b1")

    assert store.api_key_by_hash("hash-a2") == _key("a2", "acme", 2, admin=True)
    assert store.api_key_by_hash("nope") is None
    assert [k.id for k in store.list_api_keys("acme")] == ["a1", "a2"]
    assert [k.id for k in store.list_api_keys(None)] == ["a1", "a2", "b1"]

    assert not store.revoke_api_key("b1", at=10, tenant_id="acme")  # another tenant's key
    assert store.api_key_by_hash("hash-b1").revoked_at is None  # type: ignore[union-attr]
    assert store.revoke_api_key("b1", at=10, tenant_id="globex")
    assert not store.revoke_api_key("b1", at=11)  # already revoked
    assert store.api_key_by_hash("hash-b1").revoked_at == 10  # type: ignore[union-attr]


def test_a_secret_hash_is_unique(store: Store) -> None:
    store.create_api_key(_key("a1", "acme", 1), "same")
    with pytest.raises(StoreError):
        store.create_api_key(_key("a2", "acme", 2), "same")
    assert [k.id for k in store.list_api_keys(None)] == ["a1"]


def test_job_counts_group_by_status(store: Store) -> None:
    assert store.job_counts() == {}
