"""Time as Retain stores it: integer microseconds since the Unix epoch, UTC.

Integers compare and index cheaply on every backend; datetimes appear only at
the public edges. Naive datetimes are taken to be UTC.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def now_micros() -> int:
    return time.time_ns() // 1000


def to_micros(value: datetime | str) -> int:
    """A datetime or ISO-8601 string as microseconds since the epoch."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an ISO-8601 date or datetime") from exc
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_micros(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, tz=UTC).replace(microsecond=value % 1_000_000)


def opt_from_micros(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)
