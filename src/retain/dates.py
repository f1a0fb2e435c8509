"""Dates a query names, as time windows counted from when it is asked.

"What did I buy 10 days ago?", "the lunch last Tuesday", "what did Nate make
on 9 November, 2022?": the words that carry the answer's date rarely occur in
the turn that holds it, which was simply said on that day. So search turns the
date into a window of time (`query_windows`) and boosts the memories whose
time (`valid_from`, the `at` they were added with) falls inside it
(`ranking.boost_in_windows`). Relative dates count from the search's `at`.

Windows are deliberately loose: people round ("a month ago" for five weeks),
and a conversation about a day often happens a day or two later. A window is
the named span plus a tolerance of a quarter of the distance back (at least
two days) for "N units ago", one day either side of a named day, and up to
now for "the last N units".

Only English is understood, and only expressions that name a time: "May I
ask" is not May, so a month needs a preposition before it ("in May") or a day
or year next to it. A range ("between May and July", "from 3 March to 9 March
2023") is one window, from the start of the first to the end of the second.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta

_MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
_MONTHS |= {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name and name != "May"}
_MONTHS["sept"] = 9
_WEEKDAYS = {name.lower(): i for i, name in enumerate(calendar.day_name)}
_NUMBERS = {
    "a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "a couple of": 2, "a few": 3, "several": 3,
}  # fmt: skip
_UNIT_DAYS = {"day": 1.0, "week": 7.0, "month": 30.4, "year": 365.25}
_DAY = timedelta(days=1)

_MONTH = "|".join(sorted(_MONTHS, key=len, reverse=True))
_NUMBER = r"\d{1,3}|" + "|".join(sorted(_NUMBERS, key=len, reverse=True))
_AGO = re.compile(rf"\b({_NUMBER})\s+(day|week|month|year)s?\s+ago\b", re.I)
_LAST_N = re.compile(rf"\b(?:last|past|previous)\s+({_NUMBER})\s+(day|week|month|year)s?\b", re.I)
_LAST_UNIT = re.compile(r"\b(?:last|past|previous)\s+(week|weekend|month|year)\b", re.I)
_YESTERDAY = re.compile(r"\b(yesterday|the day before yesterday)\b", re.I)
_LAST_WEEKDAY = re.compile(rf"\b(?:last|past|previous)\s+({'|'.join(_WEEKDAYS)})\b", re.I)
#: "9 November, 2022", "8th December 2023", "November 9, 2022", "May 21", "in June", "August 2023".
_DAY_MONTH = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH})\.?,?(?:\s+(\d{{4}}))?\b", re.I)
_MONTH_DAY = re.compile(rf"\b({_MONTH})\.?\s+(\d{{1,2}})(?:st|nd|rd|th)?(?!\d)(?:,?\s+(\d{{4}}))?", re.I)
_MONTH_YEAR = re.compile(rf"\b({_MONTH})\.?,?\s+(\d{{4}})\b", re.I)
_IN_MONTH = re.compile(rf"\b(?:in|during|of|since|until|by|early|late|mid|this|last)\s+({_MONTH})\b", re.I)
_YEAR = re.compile(r"\b(?:in|during|of|since|until|by)\s+((?:19|20)\d\d)\b", re.I)
#: "between May and July", "from 2020 to 2022": bare months and years, which alone need a preposition.
_MONTH_RANGE = re.compile(rf"\b(?:between|from)\s+({_MONTH})\s+(?:and|to|until|till|through)\s+({_MONTH})\b", re.I)
_YEAR_RANGE = re.compile(
    r"\b(?:between|from)\s+((?:19|20)\d\d)\s+(?:and|to|until|till|through|-|–)\s+((?:19|20)\d\d)\b", re.I
)
#: What opens a range before its first date, and joins it to the second.
_RANGE_OPEN = re.compile(r"\b(?:between|from)\s+(?:the\s+)?$", re.I)
_RANGE_JOIN = re.compile(r"^\s*(?:and|to|until|till|through|-|–)\s*(?:the\s+)?$", re.I)

Window = tuple[datetime, datetime]


def query_windows(query: str, asked: datetime) -> list[Window]:
    """The time windows (start, end) that `query` names, relative dates counted from `asked`.

    `asked` and the windows are naive UTC. An empty list when the query names no date.
    """
    if asked.tzinfo is not None:
        asked = asked.astimezone(UTC).replace(tzinfo=None)
    today = asked.replace(hour=0, minute=0, second=0, microsecond=0)
    found: list[tuple[tuple[int, int], Window]] = []  # each window with where the query names it
    taken: list[tuple[int, int]] = []

    def claim(match: re.Match[str]) -> bool:
        span = match.span()
        if any(span[0] < end and start < span[1] for start, end in taken):
            return False
        taken.append(span)
        return True

    def add(window: Window) -> None:
        """Record `window`, named by the match claimed last."""
        found.append((taken[-1], window))

    for m in _MONTH_RANGE.finditer(query):
        if claim(m):
            first, last = (_MONTHS[m.group(i).lower()] for i in (1, 2))
            year = asked.year if last <= asked.month else asked.year - 1
            start = _month(year if first <= last else year - 1, first)[0]
            add((start, _month(year, last)[1]))
    for m in _YEAR_RANGE.finditer(query):
        if claim(m) and int(m.group(1)) <= int(m.group(2)):
            add((datetime(int(m.group(1)), 1, 1), datetime(int(m.group(2)) + 1, 1, 1)))

    for m in _AGO.finditer(query):
        if claim(m):
            n = _count(m.group(1))
            back = timedelta(days=n * _UNIT_DAYS[m.group(2).lower()])
            tolerance = max(2 * _DAY, back / 4)
            add((asked - back - tolerance, asked - back + tolerance))
    for m in _LAST_N.finditer(query):
        if claim(m):
            back = timedelta(days=_count(m.group(1)) * _UNIT_DAYS[m.group(2).lower()])
            add((asked - back - _DAY, asked))
    for m in _YESTERDAY.finditer(query):
        if claim(m):
            days = 2 if m.group(1).lower().startswith("the day before") else 1
            add(_day(today - days * _DAY))
    for m in _LAST_WEEKDAY.finditer(query):
        if claim(m):
            days_back = (today.weekday() - _WEEKDAYS[m.group(1).lower()] - 1) % 7 + 1
            add(_day(today - days_back * _DAY))
    for m in _LAST_UNIT.finditer(query):
        if claim(m):
            unit = m.group(1).lower()
            if unit == "year":
                add((datetime(asked.year - 1, 1, 1), datetime(asked.year, 1, 1)))
            else:
                back = timedelta(days=_UNIT_DAYS["week" if unit == "weekend" else unit])
                add((asked - 1.5 * back, asked))
    for m in _DAY_MONTH.finditer(query):
        if claim(m) and (date := _date(m.group(3), m.group(2), int(m.group(1)), asked)):
            add(_day(date))
    for m in _MONTH_DAY.finditer(query):
        if claim(m) and (date := _date(m.group(3), m.group(1), int(m.group(2)), asked)):
            add(_day(date))
    for m in _MONTH_YEAR.finditer(query):
        if claim(m):
            add(_month(int(m.group(2)), _MONTHS[m.group(1).lower()]))
    for m in _IN_MONTH.finditer(query):
        if claim(m):
            month = _MONTHS[m.group(1).lower()]
            year = asked.year if month <= asked.month else asked.year - 1
            add(_month(year, month))
    for m in _YEAR.finditer(query):
        if claim(m):
            year = int(m.group(1))
            add((datetime(year, 1, 1), datetime(year + 1, 1, 1)))
    return _joined_ranges(query, sorted(found))


def _joined_ranges(query: str, found: list[tuple[tuple[int, int], Window]]) -> list[Window]:
    """The windows, two dates named as a range ("between ... and ...", "from ... to ...") made one."""
    out: list[Window] = []
    i = 0
    while i < len(found):
        (span, window), following = found[i], found[i + 1] if i + 1 < len(found) else None
        if (
            following is not None
            and _RANGE_OPEN.search(query[: span[0]])
            and _RANGE_JOIN.match(query[span[1] : following[0][0]])
            and window[0] <= following[1][1]
        ):
            out.append((window[0], following[1][1]))
            i += 2
        else:
            out.append(window)
            i += 1
    return out


def _count(word: str) -> int:
    return int(word) if word.isdigit() else _NUMBERS[" ".join(word.lower().split())]


def _day(day: datetime) -> Window:
    """A named day, one day either side (a day's events are often told the day after)."""
    return day - _DAY, day + 2 * _DAY


def _month(year: int, month: int) -> Window:
    end = datetime(year + month // 12, month % 12 + 1, 1)
    return datetime(year, month, 1) - _DAY, end + _DAY


def _date(year: str | None, month_name: str, day: int, asked: datetime) -> datetime | None:
    """The named day; without a year, its latest occurrence up to `asked`. None if there is no such day."""
    month = _MONTHS[month_name.lower()]
    try:
        if year is not None:
            return datetime(int(year), month, day)
        date = datetime(asked.year, month, day)
        return date if date <= asked else datetime(asked.year - 1, month, day)
    except ValueError:
        return None
