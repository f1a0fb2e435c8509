"""The filter language of `search` and `get_all`, parsed once into a small tree.

Every backend compiles the same tree, so a filter means the same thing on
SQLite and PostgreSQL. The grammar:

    {"city": "Berlin"}                         equality (several keys: all must hold)
    {"year": {"gte": 2020, "lt": 2024}}        operators: eq ne in nin gt gte lt lte contains
    {"AND": [f, ...]}, {"OR": [f, ...]}, {"NOT": f}

Fields `category`, `created_at`, `updated_at` and `valid_from` are columns;
any other key is a metadata key (`a.b` reaches into nested objects, and
`metadata.category` reaches a metadata key that shares a column's name).

Comparisons are type-strict: `1` never equals `"1"`. `ne` and `nin` match
records where the key is missing. Range operators compare numbers with numbers
and strings with strings. `contains` is a substring test on strings and a
membership test on arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import InvalidInputError
from .timeutil import to_micros

COLUMN_FIELDS = frozenset({"category", "created_at", "updated_at", "valid_from"})
TIME_FIELDS = frozenset({"created_at", "updated_at", "valid_from"})
OPERATORS = frozenset({"eq", "ne", "in", "nin", "gt", "gte", "lt", "lte", "contains"})
LOGICAL = frozenset({"AND", "OR", "NOT"})
MAX_DEPTH = 16

Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class Condition:
    """`field op value`. `column` is set for column fields, `path` for metadata keys."""

    op: str
    column: str | None
    path: tuple[str, ...]
    value: Any


@dataclass(frozen=True)
class And:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Or:
    parts: tuple[Filter, ...]


@dataclass(frozen=True)
class Not:
    part: Filter


Filter = Condition | And | Or | Not


def parse_filters(raw: dict[str, Any] | None) -> Filter | None:
    """Parse and validate a filter dict; None or {} means no filter."""
    if raw is None or raw == {}:
        return None
    return _parse(raw, depth=0)


def _parse(raw: Any, depth: int) -> Filter:
    if depth > MAX_DEPTH:
        raise InvalidInputError(f"Filter nests deeper than {MAX_DEPTH} levels.", field="filters")
    if not isinstance(raw, dict) or not raw:
        raise InvalidInputError(
            f"A filter must be a non-empty object such as {{'city': 'Berlin'}}, got {raw!r}.", field="filters"
        )
    parts: list[Filter] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            raise InvalidInputError(f"Filter keys must be strings, got {key!r}.", field="filters")
        if key in LOGICAL:
            parts.append(_parse_logical(key, value, depth))
        elif key.upper() in LOGICAL:
            raise InvalidInputError(
                f"Unknown filter operator {key!r}: logical operators are upper-case AND, OR, NOT.", field="filters"
            )
        else:
            parts.extend(_parse_field(key, value))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _parse_logical(key: str, value: Any, depth: int) -> Filter:
    if key == "NOT":
        return Not(_parse(value, depth + 1))
    if not isinstance(value, list) or not value:
        raise InvalidInputError(f"Filter operator {key!r} needs a non-empty list of filters.", field="filters")
    parts = tuple(_parse(item, depth + 1) for item in value)
    return And(parts) if key == "AND" else Or(parts)


def _parse_field(key: str, value: Any) -> list[Filter]:
    column, path = _resolve_field(key)
    if isinstance(value, dict):
        if not value:
            raise InvalidInputError(f"Filter on {key!r} has an empty operator object.", field="filters")
        return [_condition(key, column, path, op, operand) for op, operand in value.items()]
    return [_condition(key, column, path, "eq", value)]


def _resolve_field(key: str) -> tuple[str | None, tuple[str, ...]]:
    if key in COLUMN_FIELDS:
        return key, ()
    dotted = key.removeprefix("metadata.")
    segments = tuple(dotted.split("."))
    if not dotted or any(not s or '"' in s or len(s) > 128 for s in segments):
        raise InvalidInputError(f"Invalid filter key {key!r}: use names without quotes or empty parts.")
    return None, segments


def _condition(key: str, column: str | None, path: tuple[str, ...], op: Any, operand: Any) -> Condition:
    if op not in OPERATORS:
        raise InvalidInputError(
            f"Unknown filter operator {op!r} on {key!r}; use one of {', '.join(sorted(OPERATORS))}.",
            field="filters",
        )
    if op in ("in", "nin"):
        if not isinstance(operand, list | tuple) or not operand:
            raise InvalidInputError(f"Filter operator {op!r} on {key!r} needs a non-empty list.", field="filters")
        values = tuple(_scalar(key, op, column, v) for v in operand)
        return Condition(op, column, path, values)
    value = _scalar(key, op, column, operand)
    if op in ("gt", "gte", "lt", "lte") and (value is None or isinstance(value, bool)):
        raise InvalidInputError(f"Filter operator {op!r} on {key!r} needs a number or a string.", field="filters")
    if op == "contains" and value is None:
        raise InvalidInputError(f"Filter operator 'contains' on {key!r} needs a value.", field="filters")
    return Condition(op, column, path, value)


def _scalar(key: str, op: str, column: str | None, value: Any) -> Scalar:
    if column in TIME_FIELDS:
        if isinstance(value, datetime | str):
            try:
                return to_micros(value)
            except ValueError as exc:
                raise InvalidInputError(f"Filter {op!r} on {key!r}: {exc}", field="filters") from exc
        raise InvalidInputError(f"Filter {op!r} on {key!r} needs a datetime or ISO-8601 string.", field="filters")
    if value is None or isinstance(value, str | bool | int | float):
        return value
    raise InvalidInputError(
        f"Filter operator {op!r} on {key!r} got {type(value).__name__}; use a string, number, bool or null.",
        field="filters",
    )
