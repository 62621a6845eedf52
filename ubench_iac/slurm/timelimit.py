"""Slurm time limits: parse every ``sbatch --time`` form, format one back.

Slurm writes durations as ``[D-]HH:MM:SS`` (squeue ``%l`` and ``%L`` drop
leading zero fields, e.g. ``1:00`` is one minute and ``1:30:00`` ninety
minutes), and ``sbatch --time`` accepts ``M``, ``M:S``, ``H:M:S``, ``D-H``,
``D-H:M`` and ``D-H:M:S`` (``man sbatch``, Slurm 22.05). A two-field value is
minutes:seconds in both places.
"""

from __future__ import annotations

import re

__all__ = [
    "UNLIMITED_WORDS",
    "TimeLimitError",
    "format_time_limit",
    "parse_duration",
    "parse_time_limit",
]

_ACCEPTED_FORMS = (
    "use minutes (90), H:MM:SS (1:30:00), D-HH:MM:SS (1-00:00:00) or UNLIMITED"
)

UNLIMITED_WORDS = frozenset({"UNLIMITED", "INFINITE", "PARTITION_LIMIT", "NOT_SET"})
"""Words that mean the job has no time limit of its own (compared upper-case).

``UNLIMITED`` and ``INFINITE`` are what sbatch accepts and Slurm prints for no
limit. sacct's Timelimit column shows ``Partition_Limit`` for a job that runs
under its partition's limit, and squeue prints ``NOT_SET`` before the limit is
established. The job's own limit is unknown in both cases, so they also parse
to None.
"""

# Without a dash: M, M:S or H:M:S. With a dash: D-H, D-H:M or D-H:M:S.
# ASCII digits only: \d would also accept other scripts' digits.
_CLOCK = re.compile(r"([0-9]+)(?::([0-9]+))?(?::([0-9]+))?")
_DAYS_CLOCK = re.compile(r"([0-9]+)-([0-9]+)(?::([0-9]+))?(?::([0-9]+))?")

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


class TimeLimitError(ValueError):
    """Raised for a value that is not a valid Slurm time limit."""


def _invalid(value: object, detail: str = "") -> TimeLimitError:
    """Build the error for ``value``, with an optional reason before the hint."""
    reason = f"{detail}; " if detail else ""
    return TimeLimitError(f"invalid time limit {value!r}: {reason}{_ACCEPTED_FORMS}")


def _check_below(value: str, field: str, number: int, limit: int) -> None:
    """Reject a minutes, seconds or hours field that would overflow into the next."""
    if number >= limit:
        raise _invalid(value, f"{field} must be below {limit}")


def parse_duration(text: str) -> int:
    """Parse a Slurm duration such as ``90``, ``1:30:00`` or ``1-00:00:00``.

    Unlike :func:`parse_time_limit`, zero stays zero, because squeue prints
    ``0:00`` for a job with no time left. The first field may be as large as
    needed (``90`` minutes, ``100:00:00``), but each later field must stay
    below its unit (seconds and minutes below 60, hours after a day below 24).

    Args:
        text: The duration as sbatch accepts it or squeue prints it.

    Returns:
        The duration in seconds.

    Raises:
        TimeLimitError: ``text`` matches none of the forms above.
    """
    value = text.strip()
    match = _DAYS_CLOCK.fullmatch(value)
    if match is not None:
        days, hours = int(match[1]), int(match[2])
        minutes = int(match[3] or 0)
        seconds = int(match[4] or 0)
        _check_below(text, "hours", hours, 24)
        _check_below(text, "minutes", minutes, 60)
        _check_below(text, "seconds", seconds, 60)
        return days * _DAY + hours * _HOUR + minutes * _MINUTE + seconds

    match = _CLOCK.fullmatch(value)
    if match is None:
        raise _invalid(text)
    fields = [int(group) for group in match.groups() if group is not None]
    if len(fields) == 1:
        return fields[0] * _MINUTE
    if len(fields) == 2:
        minutes, seconds = fields
        _check_below(text, "seconds", seconds, 60)
        return minutes * _MINUTE + seconds
    hours, minutes, seconds = fields
    _check_below(text, "minutes", minutes, 60)
    _check_below(text, "seconds", seconds, 60)
    return hours * _HOUR + minutes * _MINUTE + seconds


def parse_time_limit(value: str | int) -> int | None:
    """Parse a job time limit as ``sbatch --time`` accepts it.

    Accepted: an int or digit string (minutes), ``M:S``, ``H:M:S``, ``D-H``,
    ``D-H:M``, ``D-H:M:S`` and, in any letter case, the words in
    :data:`UNLIMITED_WORDS`. Surrounding whitespace is ignored. A limit of
    zero means no limit, as it does to sbatch.

    Args:
        value: The limit from a stack file, a CLI flag or Slurm's output.

    Returns:
        The limit in whole seconds, or None when the job has no limit. The
        seconds are exact, but Slurm rounds a limit up to whole minutes when
        it stores it (``0:30`` shows as ``1:00`` in squeue).

    Raises:
        TimeLimitError: ``value`` is a float, a bool, negative, empty or in
            no accepted form.
    """
    # bool is an int subclass, and True as "1 minute" would hide a typo.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _invalid(value)
    if isinstance(value, int):
        if value < 0:
            raise _invalid(value, "a time limit cannot be negative")
        seconds = value * _MINUTE
    else:
        if value.strip().upper() in UNLIMITED_WORDS:
            return None
        if value.strip().startswith("-"):
            raise _invalid(value, "a time limit cannot be negative")
        seconds = parse_duration(value)
    if seconds == 0:
        return None
    return seconds


def format_time_limit(seconds: int | None) -> str:
    """Format a time limit so that :func:`parse_time_limit` reads it back.

    Whole minutes are written as the minutes alone (5400 -> ``"90"``), other
    values as ``D-HH:MM:SS`` (59 -> ``"0-00:00:59"``, 90061 ->
    ``"1-01:01:01"``). sbatch rounds a limit with seconds up to the next
    minute.

    Args:
        seconds: The limit in seconds, at least 1, or None for no limit.

    Returns:
        The limit for ``sbatch --time``, or ``"UNLIMITED"`` for None.

    Raises:
        TimeLimitError: ``seconds`` is below 1 (sbatch reads a zero limit as
            no limit) or not an int.
    """
    if seconds is None:
        return "UNLIMITED"
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise TimeLimitError(f"invalid time limit {seconds!r}: use whole seconds")
    if seconds < 1:
        raise TimeLimitError(
            f"invalid time limit {seconds!r}: use at least 1 second, or None for"
            " no limit (sbatch reads 0 as no limit)"
        )
    if seconds % _MINUTE == 0:
        return str(seconds // _MINUTE)
    days, rest = divmod(seconds, _DAY)
    hours, rest = divmod(rest, _HOUR)
    minutes, secs = divmod(rest, _MINUTE)
    return f"{days}-{hours:02d}:{minutes:02d}:{secs:02d}"
