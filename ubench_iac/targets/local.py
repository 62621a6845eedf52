"""Local target: each service is a detached process group on this machine.

It runs the same batch script the Slurm target submits, under a small supervisor
(``ubench_iac.targets.supervisor``) that enforces the time limit and records how
the service ended. The handle is the supervisor's pid plus its start time from
``/proc``, so a pid reused by another process is never taken for the service.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from loguru import logger

from ubench_iac.errors import TargetError
from ubench_iac.resolve import DesiredResource
from ubench_iac.status import JobStatus, Observation
from ubench_iac.targets.base import BatchScriptTarget, Handle, Submission

_END_STATUS = {
    "completed": JobStatus.COMPLETED,
    "failed": JobStatus.FAILED,
    "cancelled": JobStatus.CANCELLED,
    "timeout": JobStatus.TIMEOUT,
}


class LocalTarget(BatchScriptTarget):
    """Run services as processes on the machine that runs ubench."""

    kind = "local"

    def predict_host(self, resource: DesiredResource | None = None) -> str:
        return self.config.host or "127.0.0.1"

    def check_ports(self, resource: DesiredResource) -> None:
        """Raise TargetError when a listening socket already uses a port."""
        for name, port in resource.spec["ports"].items():
            with socket.socket() as probe_socket:
                # SO_REUSEADDR ignores connections left in TIME_WAIT by a service
                # just stopped; only a listening socket makes bind fail.
                probe_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe_socket.bind(("", port))
                except OSError:
                    raise TargetError(
                        f"{resource.address}: port {name}={port} is already in use "
                        "on this machine (another service, or another copy of "
                        "this stack, listens on it): stop that process or give "
                        "the service another port"
                    ) from None

    def check_runtime(self, resource: DesiredResource) -> None:
        """Fail early when the runtime a service needs is not installed here."""
        tool = {"apptainer": "apptainer", "charliecloud": "ch-run"}.get(
            resource.spec["runtime"]
        )
        if tool and shutil.which(tool) is None:
            raise TargetError(
                f"{resource.address}: runtime '{resource.spec['runtime']}' needs "
                f"'{tool}', which is not installed on this machine. Apptainer "
                "cannot be installed everywhere: use 'runtime: host' to run the "
                "command directly, or deploy to a cluster that has it"
            )
        if resource.spec["resources"]["nodes"] > 1:
            raise TargetError(
                f"{resource.address}: the local target has one node, but the "
                f"service asks for {resource.spec['resources']['nodes']}"
            )

    def submit(self, submission: Submission) -> Handle:
        resource = submission.resource
        self.check_runtime(resource)
        self.check_ports(resource)
        run_dir = resource.run_dir
        paths = self.write_job_files(submission)
        (run_dir / "status.json").unlink(missing_ok=True)

        argv = [
            sys.executable,
            "-m",
            "ubench_iac.targets.supervisor",
            "--script",
            str(paths.script),
            "--status",
            str(run_dir / "status.json"),
            "--time-limit-s",
            str(resource.spec["resources"]["time_limit_s"] or 0),
            "--grace-s",
            str(self.config.kill_wait_s),
            "--token",
            submission.token,
        ]
        logger.debug("starting {}", argv)
        with open(paths.log, "ab") as log:
            process = subprocess.Popen(
                argv,
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        limit_s = resource.spec["resources"]["time_limit_s"]
        return {
            "pid": process.pid,
            "start_time": _start_time(process.pid),
            "host": socket.gethostname(),
            "run_dir": str(run_dir),
            "deadline": time.time() + limit_s if limit_s else None,
        }

    def refresh(self, handles: Sequence[Handle]) -> list[Observation]:
        this_host = socket.gethostname()
        observations = []
        for handle in handles:
            if handle.get("host") != this_host:
                raise TargetError(
                    f"process {handle.get('pid')} was started on host "
                    f"{handle.get('host')}, but this is {this_host}: run ubench "
                    "where the stack was applied"
                )
            observations.append(self._observe(handle))
        return observations

    def _observe(self, handle: Handle) -> Observation:
        host = self.predict_host()
        if _is_alive(handle):
            deadline = handle.get("deadline")
            left_s = max(int(deadline - time.time()), 0) if deadline else None
            return Observation(
                JobStatus.RUNNING, host=host, nodes=(host,), time_left_s=left_s
            )
        status_file = Path(handle["run_dir"]) / "status.json"
        try:
            outcome = json.loads(status_file.read_text())
        except FileNotFoundError:
            return Observation(
                JobStatus.GONE,
                reason="the process vanished without recording how it ended "
                "(killed with SIGKILL, or the machine restarted)",
            )
        except (OSError, ValueError) as exc:
            raise TargetError(f"cannot read {status_file}: {exc}") from exc
        return Observation(
            _END_STATUS.get(outcome.get("status"), JobStatus.FAILED),
            reason=str(outcome.get("reason", "")),
            exit_code=outcome.get("exit_code"),
            raw_state=str(outcome.get("status", "")),
        )

    def cancel(self, handles: Sequence[Handle]) -> None:
        for handle in handles:
            if _is_alive(handle):
                logger.debug("kill -TERM {}", handle["pid"])
                _signal(handle["pid"], signal.SIGTERM)

    def kill(self, handles: Sequence[Handle]) -> None:
        """SIGKILL supervisors and their service groups that outlived a cancel."""
        for handle in handles:
            supervisor = Path(handle["run_dir"]) / "supervisor.json"
            try:
                child_pgid = json.loads(supervisor.read_text())["child_pgid"]
            except (OSError, ValueError, KeyError):
                child_pgid = None
            if _is_alive(handle):
                logger.debug("kill -KILL {}", handle["pid"])
                _signal(handle["pid"], signal.SIGKILL)
            if child_pgid:
                logger.debug("kill -KILL -{}", child_pgid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child_pgid, signal.SIGKILL)

    def find(self, prefix: str) -> Mapping[str, Handle]:
        found: dict[str, Handle] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"ubench_iac.targets.supervisor" not in argv:
                continue
            words = [word.decode(errors="replace") for word in argv]
            token = _option(words, "--token")
            status = _option(words, "--status")
            if token and token.startswith(prefix) and status:
                pid = int(entry.name)
                found[token] = {
                    "pid": pid,
                    "start_time": _start_time(pid),
                    "host": socket.gethostname(),
                    "run_dir": str(Path(status).parent),
                }
        return found


def _option(words: list[str], name: str) -> str | None:
    if name in words and words.index(name) + 1 < len(words):
        return words[words.index(name) + 1]
    return None


def _stat_fields(pid: int) -> list[str] | None:
    """Return /proc/PID/stat fields after the command name, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself hold spaces or ')'.
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    # Field 22 of stat (starttime, in clock ticks since boot) is index 19 here.
    return int(fields[19]) if fields else None


def _is_alive(handle: Handle) -> bool:
    fields = _stat_fields(int(handle["pid"]))
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == handle.get("start_time")


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)
