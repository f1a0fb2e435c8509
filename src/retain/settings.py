"""Settings, read once and strictly cast.

Nothing reads the environment at import. `Settings.from_env()` reads it when
asked; everything else receives a `Settings` object. Values come from the
environment, then from an optional `.env` file, then from defaults.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError

DEFAULT_CATEGORIES = ("preference", "fact", "goal", "context")


def default_store_url(environ: Mapping[str, str] | None = None) -> str:
    """A file in the user's data directory, never /tmp."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(base) / 'retain' / 'retain.db'}"


def default_model_dir(env: Mapping[str, str] | None = None) -> Path:
    """`RETAIN_MODEL_DIR`, else `$XDG_CACHE_HOME/retain/models`, else `~/.cache/retain/models`."""
    env = os.environ if env is None else env
    explicit = env.get("RETAIN_MODEL_DIR", "").strip()
    if explicit:
        return Path(explicit).expanduser()
    cache = env.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "retain" / "models"


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
    #: Embed each sentence of a verbatim user turn too (`retain.indexing.facet_texts`); off halves the
    #: embedding work of ingesting chat turns, at a cost in recall (see BENCHMARKS.md).
    index_facets: bool = True
    #: Turns further apart than this belong to different conversations (no shared context, no neighbours).
    conversation_gap_seconds: float = 1800.0
    #: Weight of a keyword (BM25) rank against a vector rank in reciprocal-rank fusion.
    keyword_weight: float = 1.5
    #: Turns spoken by someone the query names score (1 + this) times higher (0: off).
    speaker_boost: float = 1.0
    #: Memories whose time falls in a date the query names ("10 days ago", "in May") score (1 + this) times higher.
    time_boost: float = 3.0
    #: Chat turns in the other role than the one a query asks about score (1 + this) times lower (0: off).
    role_prior: float = 1.0
    #: A search hit lifts its adjacent turns to this fraction of its score (0: off). 0.6 with the lift at
    #: distance 2 (0.7 before it; BENCHMARKS.md).
    neighbour_weight: float = 0.6
    #: A search hit lifts the turns two places away to this fraction of its score (0: off). In a two-party
    #: chat they are the hit's speaker's own turns just before and after it, which often carry the rest of
    #: what the hit is about (LongMemEval: the user's next message; LoCoMo: the same person's next line).
    neighbour_weight_2: float = 0.4
    #: Relevance weight of maximal-marginal-relevance re-ordering (1: off, pure relevance).
    mmr_lambda: float = 1.0
    #: Per-process memory for cached users' vectors and keyword postings, in MiB (least recently used
    #: users are evicted; 0 turns the cache off). A user with 10k memories takes about 20 MiB.
    vector_cache_mb: int = 512

    @property
    def neighbour_weights(self) -> tuple[float, ...]:
        """The neighbour lift's weight by distance from a hit (what `Store.adjacent`'s window spans)."""
        return (
            (self.neighbour_weight, self.neighbour_weight_2)
            if self.neighbour_weight_2 > 0
            else (self.neighbour_weight,)
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> Settings:
        """Read `RETAIN_*` variables; `env_file` (a `.env`) fills what the environment leaves unset."""
        values: dict[str, str] = {}
        if env_file is not None and Path(env_file).exists():
            values.update(_read_env_file(Path(env_file)))
        values.update(os.environ if environ is None else environ)
        settings = cls()
        updates: dict[str, object] = {"store": values.get("RETAIN_STORE") or default_store_url(values)}
        if v := values.get("RETAIN_CATEGORIES"):
            cats = tuple(c.strip() for c in v.split(",") if c.strip())
            if not cats:
                raise ConfigError("RETAIN_CATEGORIES is empty: give a comma-separated list such as 'preference,fact'.")
            updates["categories"] = cats
        for variable, (field_name, parse) in _PARSED.items():
            if v := values.get(variable):
                updates[field_name] = parse(variable, v)
        return replace(settings, **updates)  # type: ignore[arg-type]


def _number(name: str, raw: str, cast: type[float] | type[int], low: float, high: float, low_open: bool) -> float:
    """`raw` as a number in the range; the error names the variable and the range."""
    try:
        value = cast(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not {'an integer' if cast is int else 'a number'}.") from None
    if (value <= low if low_open else value < low) or value > high or not math.isfinite(value):
        if high == math.inf:
            kind = "integer" if cast is int else "number"
            rule = f"a positive {kind}" if low_open and low == 0 else f"{low:g} or more"
        else:
            rule = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
        raise ConfigError(f"{name}={raw!r} must be {rule}.")
    return value


def _ranged(cast: type[float] | type[int], low: float, high: float = math.inf, *, low_open: bool = False) -> _Parser:
    return lambda name, raw: _number(name, raw, cast, low, high, low_open)


def _bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean: use true, false, 1 or 0.")


_Parser = Callable[[str, str], object]

#: Variable -> (field, parser) for every setting read the same way: set and non-empty means parse it.
_PARSED: dict[str, tuple[str, _Parser]] = {
    "RETAIN_EMBEDDER": ("embedder", lambda _, raw: raw),
    "RETAIN_INSTRUCTIONS": ("instructions", lambda _, raw: raw),
    "RETAIN_LLM": ("llm", lambda _, raw: None if raw.strip().lower() == "none" else raw),
    "RETAIN_MAX_MESSAGE_CHARS": ("max_message_chars", _ranged(int, 0, low_open=True)),
    "RETAIN_MAX_MESSAGES_PER_ADD": ("max_messages_per_add", _ranged(int, 0, low_open=True)),
    "RETAIN_EMBED_THREADS": ("embed_threads", _ranged(int, 0, low_open=True)),
    "RETAIN_TRACK_ACCESS": ("track_access", _bool),
    "RETAIN_JOB_MAX_ATTEMPTS": ("job_max_attempts", _ranged(int, 0, low_open=True)),
    "RETAIN_IN_PROCESS_WORKER": ("in_process_worker", _bool),
    "RETAIN_DEDUP_THRESHOLD": ("dedup_threshold", _ranged(float, 0, 1, low_open=True)),
    "RETAIN_RATE_LIMIT": ("rate_limit_per_minute", _ranged(int, 0, low_open=True)),
    "RETAIN_MAX_REQUEST_BYTES": ("max_request_bytes", _ranged(int, 0, low_open=True)),
    "RETAIN_INDEX_CONTEXT_TURNS": ("index_context_turns", _ranged(int, 0)),
    "RETAIN_INDEX_FACETS": ("index_facets", _bool),
    "RETAIN_NEIGHBOUR_WEIGHT": ("neighbour_weight", _ranged(float, 0, 1)),
    "RETAIN_NEIGHBOUR_WEIGHT_2": ("neighbour_weight_2", _ranged(float, 0, 1)),
    "RETAIN_KEYWORD_WEIGHT": ("keyword_weight", _ranged(float, 0, low_open=True)),
    "RETAIN_SPEAKER_BOOST": ("speaker_boost", _ranged(float, 0)),
    "RETAIN_TIME_BOOST": ("time_boost", _ranged(float, 0)),
    "RETAIN_ROLE_PRIOR": ("role_prior", _ranged(float, 0)),
    "RETAIN_VECTOR_CACHE_MB": ("vector_cache_mb", _ranged(int, 0)),
    "RETAIN_MMR_LAMBDA": ("mmr_lambda", _ranged(float, 0, 1, low_open=True)),
}


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
