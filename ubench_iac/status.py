"""Lifecycle status of a deployed service, common to every target."""

from __future__ import annotations

import dataclasses
from enum import StrEnum


class JobStatus(StrEnum):
    """Status of a process or batch job as its target reports it."""

    PENDING = "pending"
    """Accepted by the target and waiting for resources."""
    RUNNING = "running"
    """Started, though its health check may not pass yet."""
    SUSPENDED = "suspended"
    """Paused by the scheduler (SUSPENDED, STOPPED); may resume."""
    STOPPING = "stopping"
    """Ending: being cancelled or completing."""
    COMPLETED = "completed"
    """Exited with status 0 by itself."""
    FAILED = "failed"
    """Exited non-zero or was killed by a signal it did not get from ubench."""
    CANCELLED = "cancelled"
    """Stopped on request (ubench destroy, scancel)."""
    TIMEOUT = "timeout"
    """Stopped because it reached its time limit."""
    PREEMPTED = "preempted"
    """Stopped by the scheduler to make room for other work."""
    NODE_FAIL = "node_fail"
    """Stopped because a node it ran on failed."""
    OUT_OF_MEMORY = "out_of_memory"
    """Killed for exceeding its memory limit."""
    BOOT_FAIL = "boot_fail"
    """Never started because a node failed to boot."""
    DEADLINE = "deadline"
    """Stopped because it could not finish before its deadline."""
    GONE = "gone"
    """No longer known to the target; the outcome is unknown."""

    @property
    def is_active(self) -> bool:
        """Whether the service still exists or will start on its own."""
        return self in _ACTIVE

    @property
    def is_terminal(self) -> bool:
        """Whether the service has ended and will not come back by itself."""
        return self not in _ACTIVE


_ACTIVE = frozenset(
    {JobStatus.PENDING, JobStatus.RUNNING, JobStatus.SUSPENDED, JobStatus.STOPPING}
)


@dataclasses.dataclass(frozen=True)
class Observation:
    """Result of one refresh of a target for one handle."""

    status: JobStatus
    host: str | None = None
    """Host the service listens on: the first node of a job once it runs."""
    nodes: tuple[str, ...] = ()
    reason: str = ""
    """Human-readable detail: a Slurm reason, an exit code, a signal."""
    exit_code: int | None = None
    time_left_s: int | None = None
    """Seconds until the time limit, None when unlimited or unknown."""
    raw_state: str = ""
    """The target's own word for the state (e.g. Slurm's NODE_FAIL)."""
    ready: bool | None = None
    """Readiness as the target itself probes it (a pod's Ready condition).

    True lets apply skip its own health probe, which may be unable to reach
    the service from outside a cluster network.
    """
