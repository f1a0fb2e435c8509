"""The one LLM call of `add(infer=True)`: extract facts and reconcile them with memory.

`extraction_messages` is a pure function from the conversation and the similar
existing memories to chat messages; `parse_operations` validates the reply
against `Operations` and against the ids the model was shown. Existing
memories are shown under small integers, never their UUIDs, so the model
cannot invent an id that exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

OpKind = Literal["ADD", "UPDATE", "DELETE", "NOOP"]


class Operation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    op: OpKind
    id: int | None = None
    text: str = ""
    category: str | None = None
    reason: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> Operation:
        if self.op != "ADD" and self.id is None:
            raise ValueError(f"{self.op} needs the id of an existing memory")
        if self.op in ("ADD", "UPDATE") and not self.text.strip():
            raise ValueError(f"{self.op} needs the fact's text")
        return self


class Operations(BaseModel):
    model_config = ConfigDict(extra="ignore")

    operations: list[Operation]


@dataclass(frozen=True)
class Turn:
    role: str
    content: str
    name: str | None = None


@dataclass(frozen=True)
class Known:
    """An existing memory as the model sees it: a small integer and its text."""

    number: int
    text: str
    category: str | None


def response_schema(categories: Sequence[str], known: int = 0) -> dict[str, Any]:
    """JSON schema of the reply, strict-mode compatible (every field required, closed objects).

    It admits only what is valid for this call: ADD always carries `"id": null`, and UPDATE,
    DELETE and NOOP carry one of the numbers shown (so with no existing memories only ADD is
    possible). Constrained decoders (the local model) cannot produce anything else. The length
    caps bound a reply even when a small model starts repeating itself.
    """

    def item(ops: list[str], ids: list[int | None]) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": ["op", "id", "text", "category", "reason"],
            "properties": {
                "op": {"type": "string", "enum": ops},
                "id": {"enum": ids},
                "text": {"type": "string", "maxLength": 240},
                "category": {"type": "string", "enum": list(categories)},
                "reason": {"type": "string", "maxLength": 100},
            },
        }

    add = item(["ADD"], [None])
    items = {"anyOf": [add, item(["UPDATE", "DELETE", "NOOP"], list(range(1, known + 1)))]} if known else add
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["operations"],
        "properties": {"operations": {"type": "array", "maxItems": 12, "items": items}},
    }


SYSTEM = """You maintain the long-term memory of an assistant about one user.
Read the NEW MESSAGES and decide what durable facts to remember, reconciling them with EXISTING MEMORIES.

Extract atomic, self-contained facts that will still matter in later conversations:
preferences, personal facts, plans and goals, relationships, decisions, confirmations, order or ticket numbers,
and important context. Take them from both the user's and the assistant's turns (for example an order number
the assistant confirmed, or a plan the user agreed to). Skip greetings, small talk, questions without facts and
anything only true for this moment.

Write each fact as one sentence about the user ("User is vegetarian"; "User's order #1234 has not arrived").
Resolve relative dates ("yesterday", "last month", "next week") with the date anchors and write the absolute
date into the fact: "User moved to Paris in March 2024", never "User moved to Paris last month".
Keep the language the user wrote in.

For every fact choose one operation:
- ADD: new information that no existing memory holds. "id" is null.
- UPDATE: the fact refines, corrects or contradicts existing memory "id". "text" is the complete new fact,
  which replaces the old one (for example existing "User lives in Berlin" + "I moved to Munich" -> UPDATE
  with "User lives in Munich (moved in May 2024)").
- DELETE: the messages say existing memory "id" is no longer true and give nothing to replace it.
- NOOP: existing memory "id" already says this.
Use only ids listed under EXISTING MEMORIES. Give a short "reason" for each operation.
If there is nothing worth remembering, return {"operations": []}."""


def extraction_messages(
    new: Sequence[Turn],
    existing: Sequence[Known],
    *,
    observed_at: datetime,
    context: Sequence[Turn] = (),
    categories: Sequence[str],
    instructions: str | None = None,
) -> list[dict[str, Any]]:
    """The chat messages for the extraction call. Pure: same input, same prompt."""
    system = SYSTEM + f"\n\nCategories: {', '.join(categories)}."
    if instructions:
        system += f"\n\nAdditional instructions from the application:\n{instructions.strip()}"
    system += '\n\nReply with JSON only: {"operations": [{"op", "id", "text", "category", "reason"}, ...]}.'
    parts = [f"Observation date: {observed_at:%Y-%m-%d (%A)}", f"Date anchors: {date_anchors(observed_at)}"]
    parts.append("EXISTING MEMORIES:")
    parts += [f"{k.number}. [{k.category or 'fact'}] {k.text}" for k in existing] or ["(none)"]
    if context:
        parts.append("EARLIER IN THIS CONVERSATION (context only, already processed):")
        parts += [_line(t) for t in context]
    parts.append("NEW MESSAGES:")
    parts += [_line(t) for t in new]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(parts)}]


def date_anchors(day: datetime) -> str:
    """Absolute meanings of common relative dates, so small models need not do calendar arithmetic."""
    first = day.replace(day=1)
    last_month = first - timedelta(days=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    monday = day - timedelta(days=day.weekday())
    return "; ".join(
        [
            f"yesterday = {day - timedelta(days=1):%Y-%m-%d}",
            f"tomorrow = {day + timedelta(days=1):%Y-%m-%d}",
            f"last week = the week of {monday - timedelta(days=7):%Y-%m-%d}",
            f"next week = the week of {monday + timedelta(days=7):%Y-%m-%d}",
            f"last month = {last_month:%B %Y}",
            f"next month = {next_month:%B %Y}",
            f"last year = {day.year - 1}",
        ]
    )


def _relative_dates(day: datetime) -> dict[str, str]:
    first = day.replace(day=1)
    last_month = first - timedelta(days=1)
    next_month = (first + timedelta(days=32)).replace(day=1)
    monday = day - timedelta(days=day.weekday())
    return {
        "yesterday": f"{day - timedelta(days=1):%Y-%m-%d}",
        "today": f"{day:%Y-%m-%d}",
        "tomorrow": f"{day + timedelta(days=1):%Y-%m-%d}",
        "last week": f"week of {monday - timedelta(days=7):%Y-%m-%d}",
        "this week": f"week of {monday:%Y-%m-%d}",
        "next week": f"week of {monday + timedelta(days=7):%Y-%m-%d}",
        "last month": f"{last_month:%B %Y}",
        "this month": f"{day:%B %Y}",
        "next month": f"{next_month:%B %Y}",
        "last year": f"{day.year - 1}",
        "this year": f"{day.year}",
        "next year": f"{day.year + 1}",
    }


def anchor_relative_dates(text: str, day: datetime) -> str:
    """Annotate English relative dates the model left in a fact: "moved last month" -> "moved last month (May 2024)".

    A fact is read long after it was said; without its date, "last month" becomes wrong. Phrases already followed
    by a parenthesis are left alone, so the function is idempotent.
    """
    anchors = _relative_dates(day)
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, anchors)) + r")\b(?!\s*\()", re.IGNORECASE)
    return pattern.sub(lambda m: f"{m.group(0)} ({anchors[m.group(0).lower()]})", text)


def retry_messages(previous: list[dict[str, Any]], reply: str, error: str) -> list[dict[str, Any]]:
    """The same conversation plus the invalid reply and what was wrong with it."""
    return [
        *previous,
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": f"That reply was invalid: {error}\nReply again with valid JSON that follows the rules.",
        },
    ]


def parse_operations(text: str, known_numbers: set[int], categories: Sequence[str]) -> list[Operation]:
    """Validate a reply; raise ValueError with a message fit to feed back to the model."""
    try:
        parsed = Operations.model_validate_json(_strip_fences(text))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ValueError(f"the JSON does not match the schema ({problems})") from None
    unique: list[Operation] = []
    for op in parsed.operations:
        if op not in unique:  # small models sometimes repeat an item verbatim
            unique.append(op)
    for op in unique:
        if op.id is not None and op.op != "ADD" and op.id not in known_numbers:
            listed = ", ".join(map(str, sorted(known_numbers))) or "none"
            raise ValueError(f"{op.op} refers to id {op.id}, which is not an existing memory (ids: {listed})")
        if op.category is not None and op.category not in categories:
            raise ValueError(f"category {op.category!r} is not one of {', '.join(categories)}")
    return one_change_per_memory(unique)


def one_change_per_memory(operations: list[Operation]) -> list[Operation]:
    """Keep the first operation on each existing memory. A later UPDATE of the same memory is kept
    as an ADD, so its fact is not lost; a later DELETE or NOOP of it is dropped."""
    seen: set[int] = set()
    out: list[Operation] = []
    for op in operations:
        if op.op == "ADD" or op.id is None:
            out.append(op)
        elif op.id not in seen:
            seen.add(op.id)
            out.append(op)
        elif op.op == "UPDATE":
            out.append(op.model_copy(update={"op": "ADD", "id": None}))
    return out


def _line(turn: Turn) -> str:
    who = turn.role if turn.name is None else f"{turn.role} ({turn.name})"
    return f"{who}: {turn.content}"


def _strip_fences(text: str) -> str:
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped or json.dumps(None)
