"""Provider names, in one place: the registry that turns `openai:gpt-4o-mini` into an LLM.

Settings, the CLI and config validation all ask this registry rather than
repeating provider names, so a provider registered here (including one a user
adds with `register_llm`) works everywhere at once. The built-in factories
import their module only when called: naming a provider costs nothing, and the
test fake can live in `retain.testing` without an import cycle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from retain.errors import ConfigError
from retain.llm.base import LLM

#: Builds a provider from the model part of a spec (possibly "") and keyword options.
LLMFactory = Callable[..., LLM]

NO_LLM_HINT = "set RETAIN_LLM=openai:gpt-4o-mini (or local:qwen2.5-1.5b) or pass llm=..."


def _openai(model: str, **options: Any) -> LLM:
    from retain.llm.openai import OpenAILLM

    return OpenAILLM(model, **options)


def _anthropic(model: str, **options: Any) -> LLM:
    from retain.llm.anthropic import AnthropicLLM

    return AnthropicLLM(model, **options)


def _local(model: str, **options: Any) -> LLM:
    from retain.llm.local import DEFAULT_MODEL, LocalLLM

    return LocalLLM(model or DEFAULT_MODEL, **options)


def _scripted(model: str, **options: Any) -> LLM:
    from retain.testing.llm import ScriptedLLM

    return ScriptedLLM(model=model or "scripted", **options)


#: prefix -> (factory, whether the spec must name a model)
_registry: dict[str, tuple[LLMFactory, bool]] = {
    "openai": (_openai, True),
    "anthropic": (_anthropic, True),
    "local": (_local, False),
    "scripted": (_scripted, False),
}
_lock = threading.Lock()

#: An example spec per built-in prefix, for error messages.
_EXAMPLES = {
    "openai": "openai:gpt-4o-mini",
    "anthropic": "anthropic:claude-3-5-haiku-latest",
    "local": "local:qwen2.5-1.5b",
    "scripted": "scripted:",
}


def register_llm(prefix: str, factory: LLMFactory, *, requires_model: bool = True, replace: bool = False) -> None:
    """Make `prefix:model` specs build an LLM with `factory(model, **options)`."""
    if not prefix or not prefix.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"LLM provider prefix {prefix!r} must be letters, digits, '-' or '_'")
    with _lock:
        if prefix in _registry and not replace:
            raise ConfigError(f"An LLM provider named {prefix!r} is already registered: pass replace=True")
        _registry[prefix] = (factory, requires_model)


def llm_names() -> list[str]:
    """Every registered provider prefix, sorted."""
    with _lock:
        return sorted(_registry)


def parse_spec(spec: str | None) -> tuple[str, str]:
    """Split `provider:model` into its two parts, checking the provider is registered."""
    if spec is None or not spec.strip():
        raise ConfigError(f"No LLM configured: {NO_LLM_HINT}")
    prefix, sep, model = spec.strip().partition(":")
    prefix = prefix.strip().lower()
    with _lock:
        entry = _registry.get(prefix)
    if not sep or entry is None:
        names = ", ".join(llm_names())
        raise ConfigError(
            f"Unknown LLM {spec!r}: write provider:model with a provider among {names}, "
            f"for example RETAIN_LLM=openai:gpt-4o-mini or RETAIN_LLM=local:qwen2.5-1.5b"
        )
    model = model.strip()
    if entry[1] and not model:
        example = _EXAMPLES.get(prefix, f"{prefix}:MODEL")
        raise ConfigError(f"LLM spec {spec!r} names no model: write it as {example}")
    return prefix, model


def llm_from_spec(spec: str | None, **options: Any) -> LLM:
    """Build the LLM a spec such as `openai:gpt-4o-mini` or `local:qwen2.5-1.5b` names.

    `options` go to the provider (for example `api_key=`, `base_url=`, `transport=`).
    """
    prefix, model = parse_spec(spec)
    with _lock:
        factory = _registry[prefix][0]
    return factory(model, **options)
