"""The HTTP service: `create_app(settings)` builds it, `retain serve` runs it."""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
