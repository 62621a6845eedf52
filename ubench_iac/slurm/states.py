"""Map Slurm job states to JobStatus and a one-line reason for the plan.

The states are the JOB STATE CODES of ``man squeue`` (Slurm 22.05): squeue
``%T`` and sacct print the long names, squeue ``%t`` the short codes.
"""

from __future__ import annotations

import re

from ubench_iac.status import JobStatus

__all__ = ["SLURM_STATES", "SLURM_STATE_CODES", "map_slurm_state"]

SLURM_STATES: dict[str, tuple[JobStatus, str]] = {
    "BOOT_FAIL": (JobStatus.BOOT_FAIL, "a node failed to boot"),
    "CANCELLED": (JobStatus.CANCELLED, "job was cancelled"),
    "COMPLETED": (JobStatus.COMPLETED, "job exited with status 0"),
    # Resources are allocated but not ready yet (nodes booting), so the
    # service has not started.
    "CONFIGURING": (JobStatus.PENDING, "nodes are being prepared"),
    "COMPLETING": (JobStatus.STOPPING, "job is ending"),
    "DEADLINE": (JobStatus.DEADLINE, "job reached its deadline"),
    "FAILED": (JobStatus.FAILED, "job failed"),
    "NODE_FAIL": (JobStatus.NODE_FAIL, "node failure"),
    "OUT_OF_MEMORY": (JobStatus.OUT_OF_MEMORY, "job ran out of memory"),
    "PENDING": (JobStatus.PENDING, "job is waiting to start"),
    "PREEMPTED": (JobStatus.PREEMPTED, "job was preempted"),
    "RUNNING": (JobStatus.RUNNING, "job is running"),
    "RESV_DEL_HOLD": (
        JobStatus.PENDING,
        "job is held after its reservation was deleted",
    ),
    "REQUEUE_FED": (JobStatus.PENDING, "job is being requeued by the federation"),
    "REQUEUE_HOLD": (JobStatus.PENDING, "job was requeued and is held"),
    "REQUEUED": (JobStatus.PENDING, "job was requeued"),
    # The job keeps its allocation while Slurm changes its size.
    "RESIZING": (JobStatus.RUNNING, "job is changing size"),
    # Another cluster of the federation started the job, so this cluster's
    # copy is removed and its outcome is not visible here.
    "REVOKED": (JobStatus.GONE, "job was started by another cluster"),
    "SIGNALING": (JobStatus.RUNNING, "job is being signalled"),
    # Slurm holds a job that exited with the configured special exit code, and
    # the job does not run again until a user or an admin releases it.
    "SPECIAL_EXIT": (JobStatus.FAILED, "job exited with the special exit code"),
    "STAGE_OUT": (JobStatus.STOPPING, "job is staging out files"),
    "STOPPED": (JobStatus.SUSPENDED, "job was stopped by SIGSTOP"),
    "SUSPENDED": (JobStatus.SUSPENDED, "job is suspended"),
    "TIMEOUT": (JobStatus.TIMEOUT, "job reached its time limit"),
}
"""Each long Slurm job state with its JobStatus and the reason's wording."""

SLURM_STATE_CODES: dict[str, str] = {
    "BF": "BOOT_FAIL",
    "CA": "CANCELLED",
    "CD": "COMPLETED",
    "CF": "CONFIGURING",
    "CG": "COMPLETING",
    "DL": "DEADLINE",
    "F": "FAILED",
    "NF": "NODE_FAIL",
    "OOM": "OUT_OF_MEMORY",
    "PD": "PENDING",
    "PR": "PREEMPTED",
    "R": "RUNNING",
    "RD": "RESV_DEL_HOLD",
    "RF": "REQUEUE_FED",
    "RH": "REQUEUE_HOLD",
    "RQ": "REQUEUED",
    "RS": "RESIZING",
    "RV": "REVOKED",
    "SI": "SIGNALING",
    "SE": "SPECIAL_EXIT",
    "SO": "STAGE_OUT",
    "ST": "STOPPED",
    "S": "SUSPENDED",
    "TO": "TIMEOUT",
}
"""Short state codes (squeue ``%t``) and the long state each stands for."""

# sacct prints "CANCELLED by 1000", with the uid of the user who cancelled it.
_CANCELLED_BY = re.compile(r"CANCELLED\s+BY\s+(\S+)", re.IGNORECASE)
# sacct's ExitCode is EXIT:SIGNAL, e.g. 1:0 or 0:9.
_EXIT_CODE = re.compile(r"([0-9]+)(?::([0-9]+))?")
_MAX_SIGNAL = 64


def _long_state(word: str, state: str) -> str:
    """Resolve a code, a long name or sacct's truncated name to a long name."""
    if word in SLURM_STATES:
        return word
    if word in SLURM_STATE_CODES:
        return SLURM_STATE_CODES[word]
    # sacct cuts names longer than its column and marks the cut with "+"
    # (OUT_OF_ME+). A cut name is accepted only when one state starts that way.
    if word.endswith("+") and len(word) > 1:
        matches = [name for name in SLURM_STATES if name.startswith(word[:-1])]
        if len(matches) == 1:
            return matches[0]
    raise ValueError(f"unknown Slurm job state {state!r}")


def _describe_exit_code(exit_code: str) -> str:
    """Describe a nonzero sacct exit code, or return "" for 0 or 0:0."""
    text = exit_code.strip()
    match = _EXIT_CODE.fullmatch(text)
    if match is None:
        return f"exit code {text}" if text else ""
    status = int(match[1])
    signal = int(match[2] or 0)
    # Linux signals are 1 to 64, so a larger number is not a signal and is
    # shown as printed.
    if 1 <= signal <= _MAX_SIGNAL:
        return f"killed by signal {signal}"
    if signal:
        return f"exit code {text}"
    if status:
        return f"exit code {status}"
    return ""


def map_slurm_state(
    state: str, reason: str = "", exit_code: str = ""
) -> tuple[JobStatus, str]:
    """Map a Slurm job state to a JobStatus and a one-line reason.

    Args:
        state: A long state (``TIMEOUT``), a short code (``TO``), sacct's
            ``CANCELLED by UID`` or its truncated form (``CANCELLED+``), in
            any letter case. Surrounding whitespace is ignored.
        reason: Slurm's reason code (squeue ``%r``). ``None`` and "" add
            nothing.
        exit_code: sacct's ``EXIT:SIGNAL`` or a plain exit status. 0 and
            ``0:0`` add nothing.

    Returns:
        The status and a reason such as ``job reached its time limit
        (TIMEOUT)`` or ``job failed (FAILED: NonZeroExitCode, exit code 3)``.

    Raises:
        ValueError: ``state`` is empty or no known Slurm job state.
    """
    word = state.strip()
    if not word:
        raise ValueError(f"unknown Slurm job state {state!r}")

    text_suffix = ""
    cancelled_by = _CANCELLED_BY.fullmatch(word)
    if cancelled_by is not None:
        long_state = "CANCELLED"
        text_suffix = f" by uid {cancelled_by[1]}"
    else:
        long_state = _long_state(word.upper(), state)

    status, text = SLURM_STATES[long_state]
    details = []
    slurm_reason = reason.strip()
    if slurm_reason and slurm_reason != "None":
        details.append(slurm_reason)
    exit_detail = _describe_exit_code(exit_code)
    if exit_detail:
        details.append(exit_detail)

    label = long_state
    if details:
        label = f"{long_state}: {', '.join(details)}"
    return status, f"{text}{text_suffix} ({label})"
