"""Settings, read once and strictly cast.

Nothing reads the environment at import. `Settings.from_env()` reads it when
asked; everything else receives a `Settings` object. Values come from the
environment, then from an optional `.env` file, then from defaults.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError

DEFAULT_CATEGORIES = ("preference", "fact", "goal", "context")


def default_store_url(environ: Mapping[str, str] | None = None) -> str:
    """A file in the user's data directory, never /tmp."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'retain' / 'retain.db'}"


@dataclass(frozen=True)
class Settings:
    store: str = field(default_factory=default_store_url)
    embedder: str = "local:minilm"
    llm: str | None = None
    max_message_chars: int = 32_000
    max_messages_per_add: int = 10_000
    embed_threads: int = 1
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    track_access: bool = True
    #: Extra extraction instructions applied to every add (a call's `instructions=` overrides them).
    instructions: str | None = None
    #: Existing memories shown to the extraction call.
    similar_memories: int = 10
    #: Cosine similarity at or above which a new fact is the same as a current memory.
    dedup_threshold: float = 0.92
    job_max_attempts: int = 5
    job_backoff_seconds: float = 2.0
    job_lease_seconds: float = 600.0
    in_process_worker: bool = True
    worker_poll_seconds: float = 1.0
    #: Requests per minute per API key (the service's rate limit, per process).
    rate_limit_per_minute: int = 600
    #: Largest request body the service accepts.
    max_request_bytes: int = 4 * 1024 * 1024
    #: Earlier turns of the same conversation indexed with a verbatim memory (0: the turn alone).
    index_context_turns: int = 2
    #: Turns further apart than this belong to different conversations (no shared context, no neighbours).
    conversation_gap_seconds: float = 1800.0
    #: Weight of a keyword (BM25) rank against a vector rank in reciprocal-rank fusion.
    keyword_weight: float = 2.0
    #: Turns spoken by someone the query names score (1 + this) times higher (0: off).
    speaker_boost: float = 1.0
    #: A search hit lifts its adjacent turns to this fraction of its score (0: off).
    neighbour_weight: float = 0.5
    #: Relevance weight of maximal-marginal-relevance re-ordering (1: off, pure relevance).
    mmr_lambda: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> Settings:
        """Read `RETAIN_*` variables; `env_file` (a `.env`) fills what the environment leaves unset."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).exists():
            values.update(_read_env_file(Path(env_file)))
        values.update(os.environ if environ is None else environ)
        settings = cls()
        updates: dict[str, object] = {"store": values.get("RETAIN_STORE") or default_store_url(values)}
        if v := values.get("RETAIN_EMBEDDER"):
            updates["embedder"] = v
        if v := values.get("RETAIN_LLM"):
            updates["llm"] = None if v.strip().lower() == "none" else v
        if v := values.get("RETAIN_MAX_MESSAGE_CHARS"):
            updates["max_message_chars"] = _positive_int("RETAIN_MAX_MESSAGE_CHARS", v)
        if v := values.get("RETAIN_MAX_MESSAGES_PER_ADD"):
            updates["max_messages_per_add"] = _positive_int("RETAIN_MAX_MESSAGES_PER_ADD", v)
        if v := values.get("RETAIN_EMBED_THREADS"):
            updates["embed_threads"] = _positive_int("RETAIN_EMBED_THREADS", v)
        if v := values.get("RETAIN_CATEGORIES"):
            cats = tuple(c.strip() for c in v.split(",") if c.strip())
            if not cats:
                raise ConfigError("RETAIN_CATEGORIES is empty: give a comma-separated list such as 'preference,fact'.")
            updates["categories"] = cats
        if v := values.get("RETAIN_TRACK_ACCESS"):
            updates["track_access"] = _bool("RETAIN_TRACK_ACCESS", v)
        if v := values.get("RETAIN_INSTRUCTIONS"):
            updates["instructions"] = v
        if v := values.get("RETAIN_JOB_MAX_ATTEMPTS"):
            updates["job_max_attempts"] = _positive_int("RETAIN_JOB_MAX_ATTEMPTS", v)
        if v := values.get("RETAIN_IN_PROCESS_WORKER"):
            updates["in_process_worker"] = _bool("RETAIN_IN_PROCESS_WORKER", v)
        if v := values.get("RETAIN_DEDUP_THRESHOLD"):
            updates["dedup_threshold"] = _fraction("RETAIN_DEDUP_THRESHOLD", v)
        if v := values.get("RETAIN_RATE_LIMIT"):
            updates["rate_limit_per_minute"] = _positive_int("RETAIN_RATE_LIMIT", v)
        if v := values.get("RETAIN_MAX_REQUEST_BYTES"):
            updates["max_request_bytes"] = _positive_int("RETAIN_MAX_REQUEST_BYTES", v)
        if (v := values.get("RETAIN_INDEX_CONTEXT_TURNS")) is not None and v != "":
            updates["index_context_turns"] = _non_negative_int("RETAIN_INDEX_CONTEXT_TURNS", v)
        if v := values.get("RETAIN_NEIGHBOUR_WEIGHT"):
            updates["neighbour_weight"] = _fraction("RETAIN_NEIGHBOUR_WEIGHT", v, zero_ok=True)
        if v := values.get("RETAIN_KEYWORD_WEIGHT"):
            updates["keyword_weight"] = _positive_float("RETAIN_KEYWORD_WEIGHT", v)
        if (v := values.get("RETAIN_SPEAKER_BOOST")) is not None and v != "":
            updates["speaker_boost"] = _non_negative_float("RETAIN_SPEAKER_BOOST", v)
        if v := values.get("RETAIN_MMR_LAMBDA"):
            updates["mmr_lambda"] = _fraction("RETAIN_MMR_LAMBDA", v)
        return replace(settings, **updates)  # type: ignore[arg-type]


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer.") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive integer.")
    return value


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number.") from None
    if not 0.0 < value < float("inf"):
        raise ConfigError(f"{name}={raw!r} must be a positive number.")
    return value


def _non_negative_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number.") from None
    if not 0.0 <= value < float("inf"):
        raise ConfigError(f"{name}={raw!r} must be 0 or more.")
    return value


def _non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer.") from None
    if value < 0:
        raise ConfigError(f"{name}={raw!r} must be 0 or more.")
    return value


def _fraction(name: str, raw: str, *, zero_ok: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number.") from None
    if not (value >= 0.0 if zero_ok else value > 0.0) or value > 1.0:
        raise ConfigError(f"{name}={raw!r} must be in {'[0' if zero_ok else '(0'}, 1].")
    return value


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true, false, 1 or 0.")


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{number}: expected KEY=VALUE, got {stripped!r}.")
        values[key.strip()] = value.strip().strip("'\"")
    return values
