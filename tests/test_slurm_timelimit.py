"""Tests for the Slurm time-limit codec."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ubench_iac.slurm.timelimit import (
    TimeLimitError,
    format_time_limit,
    parse_duration,
    parse_time_limit,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # M: minutes.
        ("90", 90 * 60),
        ("1", 60),
        ("0090", 90 * 60),
        # M:S: minutes:seconds, also how squeue prints durations below an hour.
        ("0:30", 30),
        ("1:30", 90),
        ("1:00", 60),
        ("120:05", 120 * 60 + 5),
        # H:M:S.
        ("1:30:00", 90 * 60),
        ("01:02:03", 3723),
        ("100:00:00", 100 * 3600),
        # D-H, D-H:M, D-H:M:S.
        ("1-0", 86400),
        ("1-2", 86400 + 2 * 3600),
        ("1-2:30", 86400 + 2 * 3600 + 30 * 60),
        ("1-02:03:04", 86400 + 2 * 3600 + 3 * 60 + 4),
        ("10-00:00:00", 10 * 86400),
        ("9-23:59:37", 9 * 86400 + 23 * 3600 + 59 * 60 + 37),
        ("0-00:00:59", 59),
        # An int is minutes, as sbatch reads a bare number.
        (90, 90 * 60),
        (1, 60),
        # Surrounding whitespace is ignored.
        (" 90 ", 90 * 60),
        ("\t1:30:00\n", 90 * 60),
    ],
)
def test_parse_time_limit_accepted_forms(value: str | int, expected: int) -> None:
    assert parse_time_limit(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "UNLIMITED",
        "unlimited",
        "INFINITE",
        "Infinite",
        "Partition_Limit",
        "NOT_SET",
        " UNLIMITED ",
        # sbatch reads a zero limit as no limit.
        0,
        "0",
        "0:00",
        "00:00:00",
        "0-0",
        "0-00:00:00",
    ],
)
def test_parse_time_limit_unlimited_is_none(value: str | int) -> None:
    assert parse_time_limit(value) is None


@pytest.mark.parametrize(
    "value",
    [
        1.5,
        "1.5",
        90.0,
        -1,
        "-1",
        "-5:00",
        "",
        "   ",
        "abc",
        "1h",
        "90m",
        "1:2:3:4",
        "1-2-3",
        "1-",
        "-1-00:00:00",
        "1:",
        ":30",
        "1 :30",
        "1:60",
        "1:00:60",
        "1:60:00",
        "1-24",
        "1-2:60",
        "1-2:30:60",
        "INVALID",
        # An Arabic-Indic digit: int() would read it, Slurm does not.
        "\u0663",
        True,
        None,
        [90],
    ],
)
def test_parse_time_limit_invalid_raises(value: object) -> None:
    with pytest.raises(TimeLimitError):
        parse_time_limit(value)  # type: ignore[arg-type]


def test_parse_time_limit_error_names_value_and_forms() -> None:
    with pytest.raises(TimeLimitError) as caught:
        parse_time_limit("1.5")
    message = str(caught.value)
    assert "'1.5'" in message
    assert "minutes (90)" in message
    assert "H:MM:SS (1:30:00)" in message
    assert "D-HH:MM:SS (1-00:00:00)" in message


def test_parse_time_limit_error_names_bad_field() -> None:
    with pytest.raises(TimeLimitError, match="seconds must be below 60"):
        parse_time_limit("1:75")


def test_parse_time_limit_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_time_limit("soon")


def test_parse_time_limit_negative_int_message() -> None:
    with pytest.raises(TimeLimitError, match="cannot be negative"):
        parse_time_limit(-3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0:00", 0),
        ("00:00:00", 0),
        ("0", 0),
        ("0:37", 37),
        ("1:29:55", 5395),
    ],
)
def test_parse_duration_keeps_zero(text: str, expected: int) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["UNLIMITED", "", "1.5", "-1"])
def test_parse_duration_invalid_raises(text: str) -> None:
    with pytest.raises(TimeLimitError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (60, "1"),
        (5400, "90"),
        (86400, "1440"),
        (1, "0-00:00:01"),
        (59, "0-00:00:59"),
        (61, "0-00:01:01"),
        (3601, "0-01:00:01"),
        (90061, "1-01:01:01"),
        (10 * 86400 + 5, "10-00:00:05"),
        (None, "UNLIMITED"),
    ],
)
def test_format_time_limit_table(seconds: int | None, expected: str) -> None:
    assert format_time_limit(seconds) == expected


@pytest.mark.parametrize("seconds", [0, -1, -60, 1.5, 60.0, True, "60"])
def test_format_time_limit_invalid_raises(seconds: object) -> None:
    with pytest.raises(TimeLimitError):
        format_time_limit(seconds)  # type: ignore[arg-type]


def test_format_time_limit_none_round_trip() -> None:
    assert parse_time_limit(format_time_limit(None)) is None


@given(st.integers(min_value=1, max_value=10**9))
def test_format_time_limit_round_trip(seconds: int) -> None:
    assert parse_time_limit(format_time_limit(seconds)) == seconds


@given(st.integers(min_value=1, max_value=10**7))
def test_parse_time_limit_minutes_int_matches_str(minutes: int) -> None:
    assert parse_time_limit(minutes) == parse_time_limit(str(minutes))
