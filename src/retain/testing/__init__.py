"""Fakes for tests: real subclasses of Retain's interfaces, usable in your own tests too."""

from .hash_embedder import HashEmbedder

__all__ = ["HashEmbedder"]
