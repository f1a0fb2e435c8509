"""Validation of what callers pass in: scopes, messages, queries, limits.

Everything is checked before any work starts, so bad input fails fast with a
message that names the field and the fix, and nothing is half-written.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from .errors import InvalidInputError
from .models import Message, Scope
from .timeutil import now_micros, to_micros

MAX_ID_CHARS = 256
MAX_LIMIT = 1000

MessagesInput = str | Mapping[str, Any] | Message | Sequence[str | Mapping[str, Any] | Message]


def make_scope(
    tenant_id: str, user_id: str | None, agent_id: str | None, run_id: str | None, *, require: bool = True
) -> Scope:
    """A validated scope; at least one of user, agent or run unless `require=False`."""
    for field, value in (("tenant_id", tenant_id), ("user_id", user_id), ("agent_id", agent_id), ("run_id", run_id)):
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"{field} must be a non-empty string, got {value!r}.", field=field)
        if len(value) > MAX_ID_CHARS:
            raise InvalidInputError(f"{field} is longer than {MAX_ID_CHARS} characters.", field=field)
        if any(unicodedata.category(ch) == "Cc" for ch in value):
            raise InvalidInputError(f"{field} must not contain control characters.", field=field)
    if require and user_id is None and agent_id is None and run_id is None:
        raise InvalidInputError(
            "No scope given: pass user_id=, agent_id= or run_id= (Retain never reads or writes unscoped).",
            field="user_id",
        )
    return Scope(tenant_id=tenant_id, user_id=user_id, agent_id=agent_id, run_id=run_id)


def check_text(text: Any, *, field: str, max_chars: int) -> str:
    if not isinstance(text, str):
        raise InvalidInputError(f"{field} must be a string, got {type(text).__name__}.", field=field)
    if not text.strip():
        raise InvalidInputError(f"{field} is empty or only whitespace; pass some text.", field=field)
    if "\x00" in text:  # PostgreSQL cannot store it, so no backend accepts it
        raise InvalidInputError(f"{field} contains a NUL character (\\x00); remove it.", field=field)
    if len(text) > max_chars:
        raise InvalidInputError(
            f"{field} has {len(text)} characters, over the limit of {max_chars}; split it into smaller "
            "messages or raise RETAIN_MAX_MESSAGE_CHARS.",
            field=field,
        )
    return text


def normalise_messages(messages: MessagesInput, *, max_chars: int, max_count: int) -> list[Message]:
    """Accept a string, a {role, content, name?, metadata?} dict, a Message, or a list of them."""
    items: Sequence[Any]
    if isinstance(messages, str | Mapping | Message):
        items = [messages]
    elif isinstance(messages, Sequence):
        items = messages
    else:
        raise InvalidInputError(
            f"messages must be a string, a dict or a list of them, got {type(messages).__name__}.", field="messages"
        )
    if not items:
        raise InvalidInputError("messages is an empty list; pass at least one message.", field="messages")
    if len(items) > max_count:
        raise InvalidInputError(
            f"{len(items)} messages in one call, over the limit of {max_count}; send them in batches.",
            field="messages",
        )
    out: list[Message] = []
    for position, item in enumerate(items):
        field = f"messages[{position}]"
        if isinstance(item, str):
            message = Message(role="user", content=item)
        elif isinstance(item, Message):
            message = item
        elif isinstance(item, Mapping):
            try:
                message = Message.model_validate(dict(item))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise InvalidInputError(f"{field}.{where}: {first['msg']}.", field=field) from None
        else:
            raise InvalidInputError(f"{field} must be a string or a dict, got {type(item).__name__}.", field=field)
        check_text(message.content, field=f"{field}.content", max_chars=max_chars)
        out.append(message)
    return out


def check_limit(limit: Any, *, field: str = "limit") -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise InvalidInputError(f"{field} must be an integer from 1 to {MAX_LIMIT}, got {limit!r}.", field=field)
    return limit


def check_id(id: Any) -> str:
    if not isinstance(id, str) or not id.strip() or len(id) > MAX_ID_CHARS:
        raise InvalidInputError(f"A memory id must be a non-empty string, got {id!r}.", field="id")
    return id


def time_or_now(value: datetime | str | None, *, field: str) -> int:
    if value is None:
        return now_micros()
    try:
        return to_micros(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise InvalidInputError(f"{field} must be a datetime or ISO-8601 string: {exc}", field=field) from None


def check_metadata(metadata: Any) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise InvalidInputError("metadata must be a dict with string keys.", field="metadata")
    try:
        encoded = json.dumps(metadata, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"metadata must be JSON-serialisable: {exc}.", field="metadata") from None
    if "\\u0000" in encoded:
        raise InvalidInputError("metadata contains a NUL character (\\u0000); remove it.", field="metadata")
    return dict(metadata)
