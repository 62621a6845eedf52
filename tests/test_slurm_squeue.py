"""Tests for the squeue format string, its parser and hostlist expansion."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ubench_iac.slurm.squeue import (
    SQUEUE_FORMAT,
    NodeListError,
    SqueueParseError,
    SqueueRow,
    expand_nodelist,
    parse_squeue,
)

# Lines of `squeue --noheader --states=all --format=SQUEUE_FORMAT` output from
# Slurm 22.05.8 on clusters started by scripts/local-slurm, taken at different
# times. The array job 9 ran on a one-node cluster (node vm), the others on
# three nodes. Job 6 had a 150-character name, shortened here. The job past
# its time limit (1) shows INVALID as its time left.
REAL_OUTPUT = """\
5|COMPLETED|UNLIMITED|UNLIMITED|node1|None|wrap
2|FAILED|UNLIMITED|UNLIMITED|node[1-2]|NonZeroExitCode|wrap
6|PENDING|UNLIMITED|UNLIMITED||JobHeldUser|long name | end
3|RUNNING|9-23:58:23|10-00:00:00|node[1-3]|None|a|b c
4|RUNNING|UNLIMITED|UNLIMITED|node[1-3]|None|wrap
1|TIMEOUT|INVALID|1:00|node1|TimeLimit|wrap
9_[1-3]|PENDING|1:30:00|1:30:00||Priority|wrap
9_1|RUNNING|1:29:55|1:30:00|vm|None|wrap
"""


def test_squeue_format_fields_in_order() -> None:
    assert SQUEUE_FORMAT == "%i|%T|%L|%l|%N|%r|%j"


def test_squeue_format_name_last() -> None:
    assert SQUEUE_FORMAT.endswith("%j")


def test_parse_squeue_real_output_rows() -> None:
    rows = parse_squeue(REAL_OUTPUT)
    assert list(rows) == ["5", "2", "6", "3", "4", "1", "9_[1-3]", "9_1"]


def test_parse_squeue_real_output_running_row() -> None:
    rows = parse_squeue(REAL_OUTPUT)
    assert rows["3"] == SqueueRow(
        job_id="3",
        state="RUNNING",
        time_left_s=9 * 86400 + 23 * 3600 + 58 * 60 + 23,
        time_limit_s=10 * 86400,
        nodes=("node1", "node2", "node3"),
        reason="",
        name="a|b c",
    )


def test_parse_squeue_real_output_timeout_row() -> None:
    row = parse_squeue(REAL_OUTPUT)["1"]
    assert row.state == "TIMEOUT"
    assert row.time_left_s is None
    assert row.time_limit_s == 60
    assert row.reason == "TimeLimit"
    assert row.nodes == ("node1",)


def test_parse_squeue_real_output_pending_row() -> None:
    row = parse_squeue(REAL_OUTPUT)["6"]
    assert row.state == "PENDING"
    assert row.nodes == ()
    assert row.reason == "JobHeldUser"
    assert row.name == "long name | end"
    assert row.time_limit_s is None


@pytest.mark.parametrize(
    ("line", "field", "expected"),
    [
        # Job names with the separator, spaces and a trailing separator.
        ("1|RUNNING|1:00|1:00|n1|None|a | b", "name", "a | b"),
        ("1|RUNNING|1:00|1:00|n1|None|||", "name", "||"),
        ("1|RUNNING|1:00|1:00|n1|None|name with  spaces", "name", "name with  spaces"),
        ("1|RUNNING|1:00|1:00|n1|None|", "name", ""),
        # Pending: no nodes, the reason explains why.
        ("1|PENDING|5:00|5:00||Resources|wrap", "nodes", ()),
        ("1|PENDING|5:00|5:00||Resources|wrap", "reason", "Resources"),
        ("1|PENDING|5:00|5:00||BeginTime|wrap", "reason", "BeginTime"),
        # Compressed node lists.
        ("1|RUNNING|1:00|1:00|node[1-3]|None|j", "nodes", ("node1", "node2", "node3")),
        (
            "1|RUNNING|1:00|1:00|mel[2001-2004,2010]|None|j",
            "nodes",
            ("mel2001", "mel2002", "mel2003", "mel2004", "mel2010"),
        ),
        (
            "1|RUNNING|1:00|1:00|a[01-03],b5|None|j",
            "nodes",
            ("a01", "a02", "a03", "b5"),
        ),
        # Array, pending array, throttled array and heterogeneous job ids.
        ("123_4|RUNNING|1:00|1:00|n1|None|j", "job_id", "123_4"),
        ("123_[1-3]|PENDING|1:00|1:00||Priority|j", "job_id", "123_[1-3]"),
        ("123_[1-9%2]|PENDING|1:00|1:00||JobArrayTaskLimit|j", "job_id", "123_[1-9%2]"),
        ("123+0|RUNNING|1:00|1:00|n1|None|j", "job_id", "123+0"),
        ("123+1|PENDING|1:00|1:00||None|j", "job_id", "123+1"),
        # Durations: words without a number, zero left, and squeue's forms.
        ("1|RUNNING|INVALID|1:00|n1|None|j", "time_left_s", None),
        ("1|RUNNING|UNLIMITED|UNLIMITED|n1|None|j", "time_left_s", None),
        ("1|RUNNING|UNLIMITED|UNLIMITED|n1|None|j", "time_limit_s", None),
        ("1|PENDING|NOT_SET|NOT_SET||None|j", "time_left_s", None),
        ("1|PENDING|NOT_SET|NOT_SET||None|j", "time_limit_s", None),
        ("1|COMPLETING|0:00|1:00|n1|None|j", "time_left_s", 0),
        ("1|RUNNING|0:37|1:00|n1|None|j", "time_left_s", 37),
        ("1|RUNNING|1:29:55|1:30:00|n1|None|j", "time_left_s", 5395),
        ("1|RUNNING|1-00:00:00|2-00:00:00|n1|None|j", "time_limit_s", 2 * 86400),
        # The reason None becomes empty; other reasons stay as printed.
        ("1|RUNNING|1:00|1:00|n1|None|j", "reason", ""),
        ("1|CANCELLED|1:00|1:00|n1|None|j", "state", "CANCELLED"),
        # Trailing whitespace (and a CR from a CRLF pipe) is dropped.
        ("1|RUNNING|1:00|1:00|n1|None|j   ", "name", "j"),
        ("1|RUNNING|1:00|1:00|n1|None|j\r", "name", "j"),
    ],
)
def test_parse_squeue_line_fields(line: str, field: str, expected: object) -> None:
    row = parse_squeue(line)[line.split("|", 1)[0]]
    assert getattr(row, field) == expected


def test_parse_squeue_blank_lines_skipped() -> None:
    text = "\n\n1|RUNNING|1:00|1:00|n1|None|j\n   \n2|PENDING|1:00|1:00||None|k\n\n"
    assert list(parse_squeue(text)) == ["1", "2"]


def test_parse_squeue_empty_text() -> None:
    assert parse_squeue("") == {}


def test_parse_squeue_header_skipped() -> None:
    text = (
        "JOBID|STATE|TIME_LEFT|TIME_LIMIT|NODELIST|REASON|NAME\n1|R|1:00|1:00|n|None|j"
    )
    assert list(parse_squeue(text)) == ["1"]


def test_parse_squeue_other_users_jobs_kept() -> None:
    text = "10|RUNNING|1:00|1:00|n1|None|mine\n11|PENDING|1:00|1:00||Priority|theirs\n"
    rows = parse_squeue(text)
    assert rows["11"].name == "theirs"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1|RUNNING|1:00|1:00|n1|None", "expected 7 fields"),
        ("just some text", "expected 7 fields"),
        ("abc|RUNNING|1:00|1:00|n1|None|j", "invalid job id"),
        ("|RUNNING|1:00|1:00|n1|None|j", "invalid job id"),
        ("1_|RUNNING|1:00|1:00|n1|None|j", "invalid job id"),
        ("1|RUN NING|1:00|1:00|n1|None|j", "invalid job state"),
        ("1||1:00|1:00|n1|None|j", "invalid job state"),
        ("1|RUNNING|soon|1:00|n1|None|j", "invalid duration"),
        ("1|RUNNING|1:00|1.5|n1|None|j", "invalid duration"),
        ("1|RUNNING|1:00|1:00|n[1-|None|j", "invalid node list"),
        ("1|RUNNING|1:00|1:00|n[3-1]|None|j", "invalid node list"),
    ],
)
def test_parse_squeue_malformed_line_raises(line: str, message: str) -> None:
    with pytest.raises(SqueueParseError, match=message) as caught:
        parse_squeue(f"2|RUNNING|1:00|1:00|n1|None|ok\n{line}\n")
    assert caught.value.line == line


def test_parse_squeue_duplicate_job_id_raises() -> None:
    text = "1|RUNNING|1:00|1:00|n1|None|a\n1|RUNNING|1:00|1:00|n1|None|b\n"
    with pytest.raises(SqueueParseError, match="listed twice"):
        parse_squeue(text)


def test_parse_squeue_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        parse_squeue("garbage")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("", []),
        ("   ", []),
        ("node1", ["node1"]),
        ("vm", ["vm"]),
        ("node[1-3]", ["node1", "node2", "node3"]),
        (
            "mel[2001-2004,2010]",
            ["mel2001", "mel2002", "mel2003", "mel2004", "mel2010"],
        ),
        ("a[01-03],b5", ["a01", "a02", "a03", "b5"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[08-10]", ["n08", "n09", "n10"]),
        ("x[001]", ["x001"]),
        ("x[098-101]", ["x098", "x099", "x100", "x101"]),
        ("n[1-2]-ib[0-1]", ["n1-ib0", "n1-ib1", "n2-ib0", "n2-ib1"]),
        ("n[1-2],m[3-4]y[5-6]", ["n1", "n2", "m3y5", "m3y6", "m4y5", "m4y6"]),
        ("n[1-2]x", ["n1x", "n2x"]),
        ("[1-2]", ["1", "2"]),
        ("a,a", ["a", "a"]),
        ("n[1,1]", ["n1", "n1"]),
        ("a,,b", ["a", "b"]),
        ("a,b,", ["a", "b"]),
        ("gpu-[1-2],cpu-[7,9-10]", ["gpu-1", "gpu-2", "cpu-7", "cpu-9", "cpu-10"]),
        ("rack1-n[1-2]", ["rack1-n1", "rack1-n2"]),
    ],
)
def test_expand_nodelist_table(spec: str, expected: list[str]) -> None:
    assert expand_nodelist(spec) == expected


@pytest.mark.parametrize(
    "spec",
    [
        "n[1",
        "n1]",
        "n[[1]]",
        "n[1-[2]]",
        "n[]",
        "n[1-]",
        "n[-2]",
        "n[3-1]",
        "n[a-b]",
        "n[1-2-3]",
        "n[1,,2]",
        # Arabic-Indic digits: str.isdigit accepts them, Slurm does not.
        "n[\u0661-\u0662]",
        "n[1-2000000]",
        "a[1-1000]b[1-1001]c[1-1000]",
    ],
)
def test_expand_nodelist_invalid_raises(spec: str) -> None:
    with pytest.raises(NodeListError):
        expand_nodelist(spec)


# Slurm's own expansion, compared on every spec the two accept alike.
SCONTROL_SPECS = [
    "node[1-3]",
    "mel[2001-2004,2010]",
    "a[01-03],b5",
    "n[8-10]",
    "n[08-10]",
    "x[098-101]",
    "n[1-2]-ib[0-1]",
    "n[1-2],m[3-4]y[5-6]",
    "a,a",
    "n[1,1]",
    "a,,b",
    "gpu-[1-2],cpu-[7,9-10]",
]


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="scontrol not installed")
@pytest.mark.parametrize("spec", SCONTROL_SPECS)
def test_expand_nodelist_matches_scontrol(spec: str, tmp_path: Path) -> None:
    # scontrol reads a config file even for `show hostnames`, but needs no
    # running controller for it.
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=check\nSlurmctldHost=localhost\n")
    result = subprocess.run(
        ["scontrol", "show", "hostnames", spec],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
        env={**os.environ, "SLURM_CONF": str(conf)},
    )
    assert expand_nodelist(spec) == result.stdout.split()
