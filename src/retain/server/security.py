"""Who is calling: API-key authentication and a per-key rate limit.

Every data route receives a `Caller`, and reads and writes only through
`memory.for_tenant(caller.tenant_id)`, so the tenant comes from the key and
never from the request body. The rate limit is a token bucket per key, held in
process memory (so with several replicas the effective limit is per replica).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from ..keys import Keys

#: The tenant used when the server runs without authentication (`retain serve --no-auth`).
DEV_TENANT = "default"


@dataclass(frozen=True)
class Caller:
    tenant_id: str
    key_id: str | None
    admin: bool


class Unauthorized(Exception):
    """No valid key: missing, malformed, unknown or revoked (401)."""


class Forbidden(Exception):
    """A valid key that may not do this (403); only for admin routes, never for data."""


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"Too many requests; retry in {retry_after:.1f}s.")
        self.retry_after = retry_after


class Authenticator:
    def __init__(self, keys: Keys, *, enabled: bool, rate_per_minute: int) -> None:
        self.keys = keys
        self.enabled = enabled
        self._limiter = RateLimiter(rate_per_minute)

    def caller(self, authorization: str | None) -> Caller:
        if not self.enabled:
            return Caller(tenant_id=DEV_TENANT, key_id=None, admin=True)
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("Send an API key as 'Authorization: Bearer <key>' (make one with `retain keys create`).")
        key = self.keys.authenticate(secret.strip())
        if key is None:
            raise Unauthorized("This API key is not valid (unknown or revoked).")
        self._limiter.take(key.id)
        return Caller(tenant_id=key.tenant_id, key_id=key.id, admin=key.admin)


class RateLimiter:
    """A token bucket per key: `rate_per_minute` sustained, bursts of up to a tenth of a minute's worth."""

    def __init__(self, rate_per_minute: int) -> None:
        self.rate = rate_per_minute / 60.0
        self.capacity = max(10.0, rate_per_minute / 6.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key_id] = (tokens, now)
                raise RateLimited(math.ceil((1.0 - tokens) / self.rate * 10) / 10)
            self._buckets[key_id] = (tokens - 1.0, now)
