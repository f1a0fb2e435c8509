"""Fakes for tests: real subclasses of Retain's interfaces, usable in your own tests too."""

from .hash_embedder import HashEmbedder
from .llm import ScriptedLLM, ScriptExhausted

__all__ = ["HashEmbedder", "ScriptExhausted", "ScriptedLLM"]
