"""Supervisor of one local service: ``python -m ubench_iac.targets.supervisor``.

The local target starts this module detached, in a session of its own. It runs
the batch script in a new process group and records how it ended, the way
slurmstepd does for a Slurm job:

- the script's time limit is enforced: SIGTERM to the group at the limit, then
  SIGKILL after the grace period (Slurm's KillWait), and the end is TIMEOUT;
- SIGTERM, SIGINT or SIGHUP to the supervisor stop the group the same way, and
  the end is CANCELLED;
- otherwise exit status 0 is COMPLETED and anything else FAILED.

The outcome goes to ``status.json`` beside the script (written atomically), so
ubench can tell a timed-out service from one that crashed after both are gone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType


class _Supervisor:
    def __init__(self, script: Path, status_path: Path, grace_s: int) -> None:
        self.script = script
        self.status_path = status_path
        self.grace_s = max(grace_s, 1)
        self.end_status: str | None = None
        self.reason = ""
        self.child: subprocess.Popen[bytes] | None = None
        self.killed = False

    def run(self, time_limit_s: int | None) -> int:
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, self._on_stop_request)
        signal.signal(signal.SIGALRM, self._on_alarm)

        self.child = subprocess.Popen(
            ["/bin/bash", str(self.script)], process_group=0, stdin=subprocess.DEVNULL
        )
        _write_json(
            self.status_path.with_name("supervisor.json"),
            {"supervisor_pid": os.getpid(), "child_pgid": self.child.pid},
        )
        if time_limit_s:
            signal.alarm(time_limit_s)
        returncode = self.child.wait()
        signal.alarm(0)
        self._record(returncode)
        return 0

    def _on_stop_request(self, signum: int, frame: FrameType | None) -> None:
        self._stop("cancelled", f"stopped by signal {signal.Signals(signum).name}")

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.end_status is None:
            self._stop("timeout", "reached its time limit")
        elif not self.killed:
            # The grace period after SIGTERM is over.
            self.killed = True
            self._signal_group(signal.SIGKILL)

    def _stop(self, status: str, reason: str) -> None:
        if self.end_status is not None:
            return
        self.end_status = status
        self.reason = reason
        self._signal_group(signal.SIGTERM)
        signal.alarm(self.grace_s)

    def _signal_group(self, signum: int) -> None:
        if self.child is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.child.pid, signum)

    def _record(self, returncode: int) -> None:
        if self.end_status is not None:
            status, reason = self.end_status, self.reason
        elif returncode == 0:
            status, reason = "completed", "exited with status 0"
        elif returncode < 0:
            name = signal.Signals(-returncode).name
            status, reason = "failed", f"killed by signal {name}"
        else:
            status, reason = "failed", f"exited with status {returncode}"
        # Whatever the script left in its group goes too, as Slurm ends a job's
        # remaining processes when the batch step ends.
        self._signal_group(signal.SIGKILL)
        _write_json(
            self.status_path,
            {
                "status": status,
                "reason": reason,
                "exit_code": returncode,
                "ended_at": time.time(),
            },
        )


def _write_json(path: Path, data: dict[str, object]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(data))
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--script", type=Path, required=True)
    parser.add_argument("--status", type=Path, required=True)
    parser.add_argument("--time-limit-s", type=int, default=0)
    parser.add_argument("--grace-s", type=int, default=10)
    # The token is only read back from /proc/PID/cmdline by LocalTarget.find.
    parser.add_argument("--token", default="")
    options = parser.parse_args(argv)
    supervisor = _Supervisor(options.script, options.status, options.grace_s)
    return supervisor.run(options.time_limit_s or None)


if __name__ == "__main__":
    sys.exit(main())
