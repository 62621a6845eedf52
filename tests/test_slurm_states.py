"""Tests for mapping Slurm job states to JobStatus and a reason."""

from __future__ import annotations

import pytest

from ubench_iac.slurm.states import SLURM_STATE_CODES, SLURM_STATES, map_slurm_state
from ubench_iac.status import JobStatus

# JOB STATE CODES of `man squeue`, Slurm 22.05: code, long name, and the
# status ubench reports for it.
STATE_TABLE = [
    ("BF", "BOOT_FAIL", JobStatus.BOOT_FAIL),
    ("CA", "CANCELLED", JobStatus.CANCELLED),
    ("CD", "COMPLETED", JobStatus.COMPLETED),
    ("CF", "CONFIGURING", JobStatus.PENDING),
    ("CG", "COMPLETING", JobStatus.STOPPING),
    ("DL", "DEADLINE", JobStatus.DEADLINE),
    ("F", "FAILED", JobStatus.FAILED),
    ("NF", "NODE_FAIL", JobStatus.NODE_FAIL),
    ("OOM", "OUT_OF_MEMORY", JobStatus.OUT_OF_MEMORY),
    ("PD", "PENDING", JobStatus.PENDING),
    ("PR", "PREEMPTED", JobStatus.PREEMPTED),
    ("R", "RUNNING", JobStatus.RUNNING),
    ("RD", "RESV_DEL_HOLD", JobStatus.PENDING),
    ("RF", "REQUEUE_FED", JobStatus.PENDING),
    ("RH", "REQUEUE_HOLD", JobStatus.PENDING),
    ("RQ", "REQUEUED", JobStatus.PENDING),
    ("RS", "RESIZING", JobStatus.RUNNING),
    ("RV", "REVOKED", JobStatus.GONE),
    ("SI", "SIGNALING", JobStatus.RUNNING),
    ("SE", "SPECIAL_EXIT", JobStatus.FAILED),
    ("SO", "STAGE_OUT", JobStatus.STOPPING),
    ("ST", "STOPPED", JobStatus.SUSPENDED),
    ("S", "SUSPENDED", JobStatus.SUSPENDED),
    ("TO", "TIMEOUT", JobStatus.TIMEOUT),
]


def test_slurm_states_cover_man_page() -> None:
    assert set(SLURM_STATES) == {name for _, name, _ in STATE_TABLE}


def test_slurm_state_codes_cover_man_page() -> None:
    assert {code: name for code, name, _ in STATE_TABLE} == SLURM_STATE_CODES


@pytest.mark.parametrize(("code", "name", "status"), STATE_TABLE)
def test_map_slurm_state_long_name(code: str, name: str, status: JobStatus) -> None:
    assert map_slurm_state(name)[0] is status


@pytest.mark.parametrize(("code", "name", "status"), STATE_TABLE)
def test_map_slurm_state_short_code(code: str, name: str, status: JobStatus) -> None:
    assert map_slurm_state(code) == map_slurm_state(name)


@pytest.mark.parametrize(("code", "name", "status"), STATE_TABLE)
def test_map_slurm_state_reason_names_state(
    code: str, name: str, status: JobStatus
) -> None:
    reason = map_slurm_state(name)[1]
    assert reason.endswith(f"({name})")
    assert "\n" not in reason


@pytest.mark.parametrize(
    ("state", "reason", "exit_code", "expected"),
    [
        ("TIMEOUT", "", "", "job reached its time limit (TIMEOUT)"),
        ("CANCELLED", "", "", "job was cancelled (CANCELLED)"),
        ("NODE_FAIL", "", "", "node failure (NODE_FAIL)"),
        ("TIMEOUT", "TimeLimit", "", "job reached its time limit (TIMEOUT: TimeLimit)"),
        ("PENDING", "Resources", "", "job is waiting to start (PENDING: Resources)"),
        ("PD", "Priority", "", "job is waiting to start (PENDING: Priority)"),
        ("RUNNING", "None", "", "job is running (RUNNING)"),
        ("RUNNING", "  ", "", "job is running (RUNNING)"),
        (
            "FAILED",
            "NonZeroExitCode",
            "3:0",
            "job failed (FAILED: NonZeroExitCode, exit code 3)",
        ),
        ("FAILED", "", "0:9", "job failed (FAILED: killed by signal 9)"),
        ("FAILED", "", "2", "job failed (FAILED: exit code 2)"),
        ("FAILED", "", "weird", "job failed (FAILED: exit code weird)"),
        ("COMPLETED", "", "0:0", "job exited with status 0 (COMPLETED)"),
        ("COMPLETED", "", "0", "job exited with status 0 (COMPLETED)"),
        (
            "OUT_OF_MEMORY",
            "",
            "0:125",
            "job ran out of memory (OUT_OF_MEMORY: exit code 0:125)",
        ),
        ("FAILED", "", "1:0", "job failed (FAILED: exit code 1)"),
        ("CANCELLED", "", "0:15", "job was cancelled (CANCELLED: killed by signal 15)"),
        (
            "OUT_OF_MEMORY",
            "OutOfMemory",
            "",
            "job ran out of memory (OUT_OF_MEMORY: OutOfMemory)",
        ),
    ],
)
def test_map_slurm_state_reason_text(
    state: str, reason: str, exit_code: str, expected: str
) -> None:
    assert map_slurm_state(state, reason, exit_code)[1] == expected


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("CANCELLED by 123", "job was cancelled by uid 123 (CANCELLED)"),
        ("CANCELLED by 0", "job was cancelled by uid 0 (CANCELLED)"),
        ("cancelled BY 1000", "job was cancelled by uid 1000 (CANCELLED)"),
        ("  CANCELLED   by 7 ", "job was cancelled by uid 7 (CANCELLED)"),
    ],
)
def test_map_slurm_state_cancelled_by(state: str, expected: str) -> None:
    assert map_slurm_state(state) == (JobStatus.CANCELLED, expected)


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("timeout", JobStatus.TIMEOUT),
        ("Running", JobStatus.RUNNING),
        (" PENDING ", JobStatus.PENDING),
        ("pd", JobStatus.PENDING),
        ("oom", JobStatus.OUT_OF_MEMORY),
        # sacct's fixed-width columns cut long names and add "+".
        ("CANCELLED+", JobStatus.CANCELLED),
        ("OUT_OF_ME+", JobStatus.OUT_OF_MEMORY),
        ("RESV_DEL_+", JobStatus.PENDING),
        ("REQUEUE_H+", JobStatus.PENDING),
    ],
)
def test_map_slurm_state_spellings(state: str, status: JobStatus) -> None:
    assert map_slurm_state(state)[0] is status


@pytest.mark.parametrize(
    "state",
    [
        "",
        "   ",
        "BOGUS",
        "RUNNING_NOW",
        "X",
        "+",
        # Ambiguous cuts: several states start this way.
        "RE+",
        "C+",
        "CANCELLED by",
        "CANCELLED by 1 2",
    ],
)
def test_map_slurm_state_unknown_raises(state: str) -> None:
    with pytest.raises(ValueError, match="unknown Slurm job state"):
        map_slurm_state(state)


def test_map_slurm_state_unknown_names_state() -> None:
    with pytest.raises(ValueError, match="'BOGUS'"):
        map_slurm_state("BOGUS")
