from __future__ import annotations

from datetime import UTC, datetime

import pytest

from retain.dates import query_windows

ASKED = datetime(2023, 4, 18, 16, 50)  # a Tuesday


def _days(query: str, asked: datetime = ASKED) -> list[tuple[str, str]]:
    return [(s.strftime("%Y-%m-%d"), e.strftime("%Y-%m-%d")) for s, e in query_windows(query, asked)]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # N units ago: the point N units back, +- a quarter of the distance (at least two days)
        ("What did I buy 10 days ago?", [("2023-04-06", "2023-04-11")]),
        ("an event two weeks ago", [("2023-04-01", "2023-04-08")]),
        ("What charity event did I join a month ago?", [("2023-03-11", "2023-03-26")]),
        # a named weekday is its latest occurrence strictly before today, +- a day
        ("the lunch last Tuesday", [("2023-04-10", "2023-04-13")]),
        ("the lunch last Monday", [("2023-04-16", "2023-04-19")]),
        ("yesterday's meeting", [("2023-04-16", "2023-04-19")]),
        ("what I did last week", [("2023-04-08", "2023-04-18")]),
        ("jewelry I got in the last two months", [("2023-02-15", "2023-04-18")]),
        ("trips last year", [("2022-01-01", "2023-01-01")]),
        # absolute dates, with or without a year; without one, the latest occurrence up to now
        ("What did Nate make on 9 November, 2022?", [("2022-11-08", "2022-11-11")]),
        ("the book he finished on 8th December, 2023", [("2023-12-07", "2023-12-10")]),
        ("who he signed with on May 21, 2023", [("2023-05-20", "2023-05-23")]),
        ("the BBQ in June", [("2022-05-31", "2022-07-02")]),
        ("the BBQ in April", [("2023-03-31", "2023-05-02")]),
        ("what he learnt in December 2023", [("2023-11-30", "2024-01-02")]),
        ("injuries in 2023", [("2023-01-01", "2024-01-01")]),
        # a range is one window, from the start of the first date to the end of the second
        ("what I read between May and July", [("2022-04-30", "2022-08-02")]),
        ("trips from November to February", [("2022-10-31", "2023-03-02")]),
        ("from 3 March to 9 March, 2023", [("2023-03-02", "2023-03-11")]),
        ("between March 2022 and the 9th of May 2022", [("2022-02-28", "2022-05-11")]),
        ("between 2020 and 2022", [("2020-01-01", "2023-01-01")]),
        # two dates that are not a range stay two windows
        ("on 3 March and on 9 March, 2023", [("2023-03-02", "2023-03-05"), ("2023-03-08", "2023-03-11")]),
        ("from 9 March 2023 to 3 March 2023", [("2023-03-08", "2023-03-11"), ("2023-03-02", "2023-03-05")]),
    ],
)
def test_dates_become_windows(query: str, expected: list[tuple[str, str]]) -> None:
    assert _days(query) == expected


@pytest.mark.parametrize(
    "query", ["May I ask what my dog's name is?", "I march every day", "How many days did the trip take?", "what now"]
)
def test_words_that_name_no_date_give_no_window(query: str) -> None:
    assert query_windows(query, ASKED) == []


def test_an_aware_asking_time_is_taken_in_utc() -> None:
    aware = datetime(2023, 4, 18, 23, 30, tzinfo=UTC).astimezone()
    assert query_windows("yesterday", aware) == query_windows("yesterday", datetime(2023, 4, 18, 23, 30))


def test_an_impossible_day_is_ignored() -> None:
    assert query_windows("on 31 February 2023", ASKED) == []
