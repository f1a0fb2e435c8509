"""Embedders and the one registry that names them.

A spec is `provider:model`, e.g. `local:minilm`, `openai:text-embedding-3-small`
or `hash:64` (the deterministic test embedder). Register your own provider with
`register_embedder`; settings validation asks this registry, so a registered
name works everywhere.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from ..settings import Settings
from .base import Embedder, Vectors, normalise

__all__ = ["Embedder", "Vectors", "embedder_from_spec", "normalise", "register_embedder", "registered_embedders"]

EmbedderFactory = Callable[[str, Settings], Embedder]
_REGISTRY: dict[str, EmbedderFactory] = {}


def register_embedder(provider: str, factory: EmbedderFactory) -> None:
    """Make `provider:<model>` specs build embedders with `factory(model, settings)`."""
    _REGISTRY[provider] = factory


def registered_embedders() -> list[str]:
    return sorted(_REGISTRY)


def embedder_from_spec(spec: str, settings: Settings | None = None) -> Embedder:
    provider, _, model = spec.partition(":")
    factory = _REGISTRY.get(provider)
    if factory is None:
        raise ConfigError(
            f"Unknown embedder {spec!r}: RETAIN_EMBEDDER takes one of "
            f"{', '.join(p + ':<model>' for p in registered_embedders())}, e.g. local:minilm."
        )
    return factory(model, settings or Settings())


def _local(model: str, settings: Settings) -> Embedder:
    from .minilm import MiniLMEmbedder, MiniLMFloatEmbedder

    models = {"": MiniLMEmbedder, "minilm": MiniLMEmbedder, "minilm-float": MiniLMFloatEmbedder}
    if model not in models:
        raise ConfigError(
            f"Unknown local embedder {model!r}: the local embedders are local:minilm (int8, the default) "
            "and local:minilm-float."
        )
    return models[model](threads=settings.embed_threads)


def _openai(model: str, settings: Settings) -> Embedder:
    from .openai import OpenAIEmbedder

    return OpenAIEmbedder.from_env(model or "text-embedding-3-small")


def _hash(model: str, settings: Settings) -> Embedder:
    from ..testing.hash_embedder import HashEmbedder

    try:
        return HashEmbedder(int(model) if model else 64)
    except ValueError:
        raise ConfigError(f"hash:{model} needs a dimension count, e.g. hash:64.") from None


register_embedder("local", _local)
register_embedder("openai", _openai)
register_embedder("hash", _hash)
