"""One squeue call per refresh: its format string and its parser.

Run squeue as ``squeue --noheader --states=all --format=<SQUEUE_FORMAT>``
(restricted to the jobs of interest with ``--jobs`` or ``--user``). Without
``--states=all`` squeue lists only pending, running and completing jobs, even
for ``--jobs``, so a finished job would look gone. Slurm keeps finished jobs
in squeue for ``MinJobAge`` seconds (300 by default).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re

from ubench_iac.slurm.timelimit import TimeLimitError, parse_duration

__all__ = [
    "SQUEUE_FIELDS",
    "SQUEUE_FORMAT",
    "SQUEUE_SEPARATOR",
    "NodeListError",
    "SqueueParseError",
    "SqueueRow",
    "expand_nodelist",
    "parse_squeue",
]

SQUEUE_SEPARATOR = "|"
"""Field separator: no job id, state, duration, host name or reason has one."""

SQUEUE_FIELDS = ("%i", "%T", "%L", "%l", "%N", "%r", "%j")
"""Job id, state, time left, time limit, node list, reason and job name.

The job name comes last because it is the only field a user chooses and may
contain the separator or spaces: splitting on the first six separators keeps
the rest of the line, separators included, as the name.
"""

SQUEUE_FORMAT = SQUEUE_SEPARATOR.join(SQUEUE_FIELDS)
"""The ``squeue --format`` value whose output :func:`parse_squeue` reads."""

# squeue prints these words in place of a time left (%L) or time limit (%l).
# UNLIMITED means no limit and NOT_SET a limit not yet established. INVALID is
# a negative time left, seen for a job that ended by reaching its limit.
_NO_DURATION = frozenset({"UNLIMITED", "INFINITE", "NOT_SET", "INVALID"})

# %i: a job id, an array task (123_4) or a pending array's task range
# (123_[1-3] or 123_[1-3%2] with a throttle), and a heterogeneous job
# component (123+0).
_JOB_ID = re.compile(r"[0-9]+(?:_(?:[0-9]+|\[[^\]]+\]))?(?:\+[0-9]+)?")

# %T: a long state name such as PENDING or OUT_OF_MEMORY.
_STATE = re.compile(r"[A-Za-z_]+")

_HEADER_JOB_ID = "JOBID"

# A hostlist larger than any Slurm cluster is malformed input, and expanding
# it would only use up memory.
_MAX_NODE_NAMES = 1_000_000


class SqueueParseError(ValueError):
    """Raised for a squeue output line that does not match SQUEUE_FORMAT."""

    def __init__(self, message: str, line: str) -> None:
        super().__init__(f"{message}: {line!r}")
        self.line = line


class NodeListError(ValueError):
    """Raised for a Slurm hostlist expression that cannot be expanded."""


@dataclasses.dataclass(frozen=True)
class SqueueRow:
    """One job as squeue printed it with SQUEUE_FORMAT."""

    job_id: str
    """Job id as squeue prints it (``123``, ``123_4``, ``123_[1-3]``, ``123+0``)."""
    state: str
    """Slurm's long state name, such as ``PENDING`` (states.py maps it)."""
    time_left_s: int | None
    """Seconds until the time limit, None when unlimited, not set or past it.

    For a finished job squeue keeps printing the time that was left when the
    job ended.
    """
    time_limit_s: int | None
    """The time limit in seconds, None when unlimited or not set."""
    nodes: tuple[str, ...]
    """Expanded node names, empty while the job is pending."""
    reason: str
    """Slurm's reason code, such as ``Resources``, or "" where it prints None."""
    name: str
    """The job name, which may contain spaces and the separator."""


def _parse_squeue_duration(text: str, line: str) -> int | None:
    """Parse a %L or %l field, where zero is a real value (no time left)."""
    if text.upper() in _NO_DURATION:
        return None
    try:
        return parse_duration(text)
    except TimeLimitError as error:
        raise SqueueParseError(f"invalid duration {text!r}", line) from error


def _parse_line(line: str) -> SqueueRow:
    """Parse one non-blank line of squeue output."""
    fields = line.split(SQUEUE_SEPARATOR, len(SQUEUE_FIELDS) - 1)
    if len(fields) != len(SQUEUE_FIELDS):
        raise SqueueParseError(
            f"expected {len(SQUEUE_FIELDS)} fields in the format {SQUEUE_FORMAT!r},"
            f" found {len(fields)}",
            line,
        )
    job_id, state, time_left, time_limit, node_list, reason, name = fields
    if _JOB_ID.fullmatch(job_id) is None:
        raise SqueueParseError(f"invalid job id {job_id!r}", line)
    if _STATE.fullmatch(state) is None:
        raise SqueueParseError(f"invalid job state {state!r}", line)
    try:
        nodes = tuple(expand_nodelist(node_list))
    except NodeListError as error:
        raise SqueueParseError(str(error), line) from error
    return SqueueRow(
        job_id=job_id,
        state=state,
        time_left_s=_parse_squeue_duration(time_left, line),
        time_limit_s=_parse_squeue_duration(time_limit, line),
        nodes=nodes,
        reason="" if reason == "None" else reason,
        name=name,
    )


def parse_squeue(text: str) -> dict[str, SqueueRow]:
    """Parse the output of ``squeue --format=SQUEUE_FORMAT``.

    Blank lines and a header line are skipped, and each line is stripped of
    surrounding whitespace, so trailing spaces of a job name are lost.

    Args:
        text: squeue's whole standard output, for any users' jobs.

    Returns:
        The rows by job id, in the order squeue printed them.

    Raises:
        SqueueParseError: A line has too few fields, an invalid job id, state,
            duration or node list, or repeats a job id.
    """
    rows: dict[str, SqueueRow] = {}
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line:
            continue
        if line.startswith(_HEADER_JOB_ID + SQUEUE_SEPARATOR):
            continue
        row = _parse_line(line)
        if row.job_id in rows:
            raise SqueueParseError(f"job id {row.job_id!r} listed twice", line)
        rows[row.job_id] = row
    return rows


def _split_top_level(spec: str) -> list[str]:
    """Split a hostlist on the commas outside brackets."""
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(spec):
        if char == "[":
            if depth:
                raise NodeListError(f"invalid node list {spec!r}: nested '['")
            depth = 1
        elif char == "]":
            if not depth:
                raise NodeListError(f"invalid node list {spec!r}: ']' without '['")
            depth = 0
        elif char == "," and not depth:
            parts.append(spec[start:index])
            start = index + 1
    if depth:
        raise NodeListError(f"invalid node list {spec!r}: '[' without ']'")
    parts.append(spec[start:])
    return parts


def _expand_range_group(spec: str, group: str) -> list[str]:
    """Expand the inside of one bracket group, e.g. ``01-03,7``."""
    values: list[str] = []
    for item in group.split(","):
        low, dash, high = item.partition("-")
        if not low.isdigit() or not low.isascii():
            raise NodeListError(f"invalid node list {spec!r}: bad range {item!r}")
        if not dash:
            values.append(low)
            continue
        if not high.isdigit() or not high.isascii() or int(high) < int(low):
            raise NodeListError(f"invalid node list {spec!r}: bad range {item!r}")
        # Slurm pads every number to the width of the range's start, so
        # 08-10 gives 08, 09, 10 and 8-10 gives 8, 9, 10.
        width = len(low)
        values.extend(
            f"{number:0{width}d}" for number in range(int(low), int(high) + 1)
        )
    return values


def _expand_host(spec: str, host: str) -> list[str]:
    """Expand one host expression, which may have several bracket groups."""
    # re.split with a capturing group alternates literal text and group bodies.
    pieces = re.split(r"\[([^\]]*)\]", host)
    choices: list[list[str]] = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            choices.append([piece])
        else:
            choices.append(_expand_range_group(spec, piece))
    if math.prod(len(values) for values in choices) > _MAX_NODE_NAMES:
        raise NodeListError(
            f"invalid node list {spec!r}: more than {_MAX_NODE_NAMES} names"
        )
    # The first group varies slowest: n[1-2]-ib[0-1] gives n1-ib0, n1-ib1,
    # n2-ib0, n2-ib1.
    return ["".join(combination) for combination in itertools.product(*choices)]


def expand_nodelist(spec: str) -> list[str]:
    """Expand a Slurm hostlist such as ``node[1-3]`` or ``a[01-03],b5``.

    Supports ranges and single numbers separated by commas inside brackets,
    zero padding (``a[01-03]``), and several bracket groups in one name
    (``n[1-2]-ib[0-1]``). Names keep the order of the expression, and a name
    listed twice is kept twice, as ``scontrol show hostnames`` does. Unlike
    Slurm 22.05, a single bracket group may have a suffix (``n[1-2]x``).

    Args:
        spec: The hostlist; empty or blank for a job with no nodes.

    Returns:
        The node names.

    Raises:
        NodeListError: Brackets are unbalanced or nested, a range is not
            ``LOW-HIGH`` with LOW <= HIGH, or the list expands to more than a
            million names.
    """
    spec = spec.strip()
    if not spec:
        return []
    names: list[str] = []
    for host in _split_top_level(spec):
        # Slurm skips empty names between commas (a,,b is a and b).
        if not host:
            continue
        names.extend(_expand_host(spec, host))
        if len(names) > _MAX_NODE_NAMES:
            raise NodeListError(
                f"invalid node list {spec!r}: more than {_MAX_NODE_NAMES} names"
            )
    return names
