"""API keys: random secrets bound to one tenant, stored only as hashes.

A key looks like `rtn_<43 url-safe characters>` (256 random bits). Because the
secret is long and random, one SHA-256 is the right hash: a slow password hash
would add latency to every request without adding safety. The store keeps the
hash, the tenant and a short prefix for listings; the secret is shown once, when
the key is made.
"""

from __future__ import annotations

import hashlib
import secrets

from .errors import InvalidInputError, NotFoundError
from .inputs import make_scope
from .memory import new_id
from .store.base import ApiKey, Store
from .timeutil import now_micros

SECRET_PREFIX = "rtn_"
MAX_NAME_CHARS = 100


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Keys:
    """Make, check, list and revoke the API keys kept in one store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, tenant_id: str, *, name: str = "", admin: bool = False) -> tuple[ApiKey, str]:
        """A new key for `tenant_id` and its secret (the only time the secret exists in the clear)."""
        tenant = make_scope(tenant_id, None, None, None, require=False).tenant_id
        if not isinstance(name, str) or len(name) > MAX_NAME_CHARS:
            raise InvalidInputError(f"name must be a string of at most {MAX_NAME_CHARS} characters.", field="name")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=new_id(),
            tenant_id=tenant,
            name=name.strip() or ("admin key" if admin else "key"),
            prefix=secret[:10],
            admin=admin,
            created_at=now_micros(),
        )
        self.store.create_api_key(key, hash_secret(secret))
        return key, secret

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key with this secret, or None (unknown, malformed or revoked)."""
        if not secret.startswith(SECRET_PREFIX) or len(secret) > 200:
            return None
        key = self.store.api_key_by_hash(hash_secret(secret))
        if key is None or key.revoked_at is not None:
            return None
        return key

    def list(self, tenant_id: str | None = None) -> list[ApiKey]:
        return self.store.list_api_keys(tenant_id)

    def revoke(self, key_id: str, *, tenant_id: str | None = None) -> None:
        """Revoke an active key (only within `tenant_id` when given)."""
        if not self.store.revoke_api_key(key_id, now_micros(), tenant_id):
            raise NotFoundError("active API key", key_id)

    def exist(self) -> bool:
        """Whether any key (active or revoked) exists."""
        return bool(self.store.list_api_keys(None))
