"""The few Slurm operations ubench needs, behind one small contract.

``SlurmClient`` is what the Slurm target calls: submit a batch script, query
jobs with one call, find jobs by name, cancel or signal them, test a
submission without queueing it, and read the accounting of jobs that left the
queue. ``CommandLineClient`` runs Slurm's own commands (sbatch, squeue,
scancel, sacct) and is the default. ``PyslurmClient`` talks to libslurm
through pyslurm instead.

A failing Slurm command is always an error (``CommandError``), never "no such
job". A controller that does not respond must not make running services look
gone, because ubench would then submit them a second time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from loguru import logger

from ubench_iac.errors import CommandError, TargetError
from ubench_iac.slurm.squeue import (
    SQUEUE_FORMAT,
    SqueueParseError,
    SqueueRow,
    expand_nodelist,
    parse_squeue,
)
from ubench_iac.slurm.states import map_slurm_state
from ubench_iac.status import JobStatus

__all__ = [
    "SACCT_FIELDS",
    "AccountingRow",
    "CommandLineClient",
    "PyslurmClient",
    "SlurmClient",
    "SubmittedJob",
    "find_submitted",
    "is_uncertain_failure",
    "make_client",
    "newest_active",
    "parse_sacct",
    "submission_environment",
    "submit_idempotent",
]

DEFAULT_TIMEOUT_S = 60.0
"""Timeout of one Slurm command. With slurmctld down a command fails after ~9 s."""

SUBMIT_RETRIES = 3
"""Maximum sbatch attempts, counting the first, when failures may have queued it."""

CLIENT_ENV = "UBENCH_SLURM_CLIENT"
"""Environment variable choosing the client: ``command`` (default) or ``pyslurm``."""

# Prefixes of the variables that Slurm's commands read as input. An sbatch job
# copies the submitting environment. A user's shell (SBATCH_TIMELIMIT,
# SQUEUE_USERS) or an enclosing allocation (SLURM_JOB_ID, SLURM_NTASKS, or
# SLURM_CPUS_PER_TASK, which the srun inside the job reads) would otherwise
# change the job, the query, or how the job's own srun lays out its tasks.
_STRIPPED_PREFIXES = (
    "SBATCH_",
    "SLURM_",
    "SRUN_",
    "SALLOC_",
    "SQUEUE_",
    "SCANCEL_",
    "SACCT_",
)
# SLURM_CONF is kept because it names the cluster the commands talk to.
_KEPT = frozenset({"SLURM_CONF"})

# Messages of a failed request that may still have reached slurmctld. The job
# may be queued, so a retry must first look for it.
_UNCERTAIN_MARKERS = (
    "Socket timed out on send/recv",
    "Unable to contact slurm controller",
    "Zero Bytes were transmitted or received",
    "Slurm backup controller in standby mode",
)

# Slurm 22.05's squeue requests that one job from slurmctld when --jobs has a
# single id, and exits 1 with this message when slurmctld has forgotten it.
# With two or more ids it loads every job and filters, and exits 0.
_INVALID_JOB_ID = "Invalid job id specified"

_ACCOUNTING_DISABLED = "accounting storage is disabled"

SACCT_FIELDS = ("JobIDRaw", "State", "ExitCode", "NodeList", "Reason")
"""Columns of the one sacct call, in the order :func:`parse_sacct` reads."""


@dataclasses.dataclass(frozen=True)
class SubmittedJob:
    """The job id sbatch printed, and the cluster when it printed one."""

    job_id: str
    cluster: str | None = None


@dataclasses.dataclass(frozen=True)
class AccountingRow:
    """One job as sacct recorded it after it left the queue."""

    job_id: str
    state: str
    exit_code: str
    nodes: tuple[str, ...]
    reason: str


@runtime_checkable
class SlurmClient(Protocol):
    """The Slurm operations of the Slurm target. Each may raise TargetError."""

    def submit(self, script_path: Path, env: Mapping[str, str]) -> SubmittedJob:
        """Submit the batch script at ``script_path`` with exactly ``env``."""

    def query(self, job_ids: Sequence[str]) -> dict[str, SqueueRow]:
        """Return the jobs that slurmctld still has, by id, with one request.

        A job missing from the result has left the queue, and :meth:`history`
        returns what became of it.
        """

    def user_jobs(self) -> dict[str, SqueueRow]:
        """Return every job of the user running ubench, in any state, by id."""

    def find_by_name(self, names: Sequence[str]) -> list[SqueueRow]:
        """Return every job, in any state, whose name is one of ``names``."""

    def cancel(
        self, job_ids: Sequence[str], *, signal: str | None = None, full: bool = False
    ) -> None:
        """Cancel the jobs, or send ``signal`` (to every step with ``full``).

        Jobs that already ended or are unknown are not an error.
        """

    def test_submit(self, script: str, env: Mapping[str, str]) -> str | None:
        """Ask slurmctld whether it would accept ``script``, and return why not."""

    def history(self, job_ids: Sequence[str]) -> dict[str, AccountingRow] | None:
        """Return the accounting records of jobs, or None without accounting.

        The first call finds out whether the cluster keeps accounting and
        stores the result, so a cluster without it gets one sacct call only.
        """


def submission_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return ``environ`` (default: this process's) without Slurm's input variables.

    ``SBATCH_*``, ``SLURM_*`` (but ``SLURM_CONF``), ``SRUN_*``, ``SALLOC_*``,
    ``SQUEUE_*``, ``SCANCEL_*`` and ``SACCT_*`` are removed: a user's shell or
    an enclosing allocation would otherwise change the job or the query.
    """
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name in _KEPT or not name.startswith(_STRIPPED_PREFIXES)
    }


def is_uncertain_failure(error: TargetError) -> bool:
    """Return whether a failed submission may still have queued the job."""
    if isinstance(error, CommandError):
        if error.timed_out:
            return True
        text = f"{error.stderr}\n{error.stdout}"
    else:
        text = str(error)
    return any(marker in text for marker in _UNCERTAIN_MARKERS)


def newest_active(rows: Sequence[SqueueRow]) -> dict[str, SqueueRow]:
    """Return, for each job name, its newest job that is pending or running.

    Ended jobs are left out: a service recreated with an unchanged spec has
    the same token as the job that ended, and that one must not be adopted.
    """
    newest: dict[str, SqueueRow] = {}
    for row in rows:
        status = _status_of(row.state)
        if status is None or not status.is_active:
            continue
        kept = newest.get(row.name)
        if kept is None or _job_number(row.job_id) > _job_number(kept.job_id):
            newest[row.name] = row
    return newest


def find_submitted(client: SlurmClient, token: str) -> SubmittedJob | None:
    """Return the newest active job named ``token``, or None."""
    row = newest_active(client.find_by_name([token])).get(token)
    return None if row is None else SubmittedJob(row.job_id)


def submit_idempotent(
    client: SlurmClient,
    script_path: Path,
    env: Mapping[str, str],
    token: str,
    *,
    retries: int = SUBMIT_RETRIES,
    backoff_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> SubmittedJob:
    """Submit a script whose job name is ``token``, never queueing it twice.

    After a failure that may have queued the job (a timeout, a lost reply),
    ubench looks up the token and adopts the job it finds. Only when there is
    none does sbatch run again, up to ``retries`` attempts in all. A failure
    that cannot have queued the job (an invalid option, a rejected request)
    is raised at once.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return client.submit(script_path, env)
        except TargetError as exc:
            if not is_uncertain_failure(exc):
                raise
            failure = exc
        found = _look_up_after_failure(client, token, sleep, backoff_s)
        if found is not None:
            logger.warning(
                "sbatch failed but job {} named {} is queued; adopting it "
                "(attempt {}/{}): {}",
                found.job_id,
                token,
                attempt,
                retries,
                failure,
            )
            return found
        if attempt >= retries:
            raise failure
        logger.warning(
            "sbatch failed and queued no job; submitting again (attempt {}/{}): {}",
            attempt + 1,
            retries,
            failure,
        )


def _look_up_after_failure(
    client: SlurmClient,
    token: str,
    sleep: Callable[[float], None],
    backoff_s: float,
) -> SubmittedJob | None:
    """Find a job queued by a failed sbatch, and raise if squeue keeps failing.

    Submitting again without knowing could queue a duplicate, so a look-up
    that keeps failing ends the submission with its error.
    """
    attempts = 3
    for attempt in range(1, attempts + 1):
        # A request that timed out here may still be in slurmctld's queue, so
        # wait a moment for it to land before looking.
        sleep(backoff_s * attempt)
        try:
            return find_submitted(client, token)
        except TargetError as exc:
            if attempt == attempts:
                raise
            logger.warning(
                "looking up job {} after a failed sbatch failed (retry {}/{}): {}",
                token,
                attempt,
                attempts - 1,
                exc,
            )
    return None


def _status_of(state: str) -> JobStatus | None:
    try:
        return map_slurm_state(state)[0]
    except ValueError:
        return None


def _job_number(job_id: str) -> int:
    digits = ""
    for char in job_id:
        if not char.isdigit():
            break
        digits += char
    return int(digits or 0)


def parse_sacct(text: str) -> dict[str, AccountingRow]:
    """Parse ``sacct --parsable2 --noheader --format=<SACCT_FIELDS>`` output.

    A requeued job has a record for each run, and the last one wins.
    """
    rows: dict[str, AccountingRow] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        fields = line.split("|", len(SACCT_FIELDS) - 1)
        if len(fields) != len(SACCT_FIELDS):
            raise TargetError(f"unexpected sacct line {line!r}")
        job_id, state, exit_code, node_list, reason = fields
        try:
            nodes = tuple(expand_nodelist(node_list.replace("None assigned", "")))
        except ValueError as exc:
            raise TargetError(f"unexpected sacct line {line!r}: {exc}") from exc
        rows[job_id] = AccountingRow(
            job_id=job_id,
            state=state,
            exit_code=exit_code,
            nodes=nodes,
            reason="" if reason == "None" else reason,
        )
    return rows


class CommandLineClient:
    """Slurm through its commands, the default client.

    Every command runs through :meth:`run`, bounded by ``timeout_s`` and logged
    at DEBUG with its argv, in the environment of
    :func:`submission_environment`.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._accounting: bool | None = None

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
        cwd: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one Slurm command; raise CommandError unless it exits 0."""
        argv = list(argv)
        logger.debug("run {}", argv)
        try:
            result = subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                env=dict(env) if env is not None else submission_environment(),
                cwd=cwd,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CommandError(
                argv,
                None,
                _text(exc.stdout),
                _text(exc.stderr),
                timed_out=True,
            ) from exc
        except FileNotFoundError as exc:
            raise TargetError(
                f"{argv[0]} is not installed or not on PATH: the Slurm target "
                "needs Slurm's commands (sbatch, squeue, scancel, sacct); run "
                "ubench on a login node, or install the slurm-client package"
            ) from exc
        if result.returncode != 0:
            raise CommandError(argv, result.returncode, result.stdout, result.stderr)
        return result

    def submit(self, script_path: Path, env: Mapping[str, str]) -> SubmittedJob:
        # The job starts in sbatch's working directory (unless the script
        # sets one), so submit from the run directory, which the nodes see.
        result = self.run(
            ["sbatch", "--parsable", str(script_path)],
            env=submission_environment(env),
            cwd=script_path.parent,
        )
        return _parse_parsable(result.stdout, result)

    def query(self, job_ids: Sequence[str]) -> dict[str, SqueueRow]:
        ids = list(dict.fromkeys(str(job_id) for job_id in job_ids))
        if not ids:
            return {}
        argv = [
            "squeue",
            "--noheader",
            "--states=all",
            f"--jobs={','.join(ids)}",
            f"--format={SQUEUE_FORMAT}",
        ]
        try:
            result = self.run(argv)
        except CommandError as exc:
            # Only a single-id request fails this way, and only because that
            # job is unknown. Any other failure stays an error.
            if len(ids) == 1 and _INVALID_JOB_ID in exc.stderr:
                return {}
            raise
        return _parse_rows(result.stdout, argv)

    def user_jobs(self) -> dict[str, SqueueRow]:
        # The numeric uid, because USER and LOGNAME may be unset or stale.
        argv = [
            "squeue",
            "--noheader",
            "--states=all",
            f"--user={os.getuid()}",
            f"--format={SQUEUE_FORMAT}",
        ]
        return _parse_rows(self.run(argv).stdout, argv)

    def find_by_name(self, names: Sequence[str]) -> list[SqueueRow]:
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return []
        for name in wanted:
            if "," in name:
                raise TargetError(f"job name {name!r} has a comma, which squeue splits")
        argv = [
            "squeue",
            "--noheader",
            "--states=all",
            f"--name={','.join(wanted)}",
            f"--format={SQUEUE_FORMAT}",
        ]
        result = self.run(argv)
        rows = _parse_rows(result.stdout, argv)
        return [row for row in rows.values() if row.name in wanted]

    def cancel(
        self, job_ids: Sequence[str], *, signal: str | None = None, full: bool = False
    ) -> None:
        ids = list(dict.fromkeys(str(job_id) for job_id in job_ids))
        if not ids:
            return
        argv = ["scancel"]
        if signal is not None:
            argv.append(f"--signal={signal}")
        if full:
            argv.append("--full")
        # scancel exits 0 for jobs that ended or that slurmctld forgot.
        self.run([*argv, *ids])

    def test_submit(self, script: str, env: Mapping[str, str]) -> str | None:
        try:
            self.run(
                ["sbatch", "--test-only"],
                env=submission_environment(env),
                stdin=script,
            )
        except CommandError as exc:
            # A controller that cannot be reached has rejected nothing.
            if is_uncertain_failure(exc):
                raise
            return (exc.stderr.strip() or exc.stdout.strip()) or str(exc)
        return None

    def history(self, job_ids: Sequence[str]) -> dict[str, AccountingRow] | None:
        ids = list(dict.fromkeys(str(job_id) for job_id in job_ids))
        if self._accounting is False:
            return None
        if not ids:
            return {}
        argv = [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            f"--jobs={','.join(ids)}",
            f"--format={','.join(SACCT_FIELDS)}",
        ]
        try:
            result = self.run(argv)
        except CommandError as exc:
            if _ACCOUNTING_DISABLED in f"{exc.stderr}{exc.stdout}":
                logger.debug("sacct: this cluster keeps no accounting")
                self._accounting = False
                return None
            raise
        self._accounting = True
        return parse_sacct(result.stdout)


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _parse_parsable(
    stdout: str, result: subprocess.CompletedProcess[str]
) -> SubmittedJob:
    """Read ``jobid`` or ``jobid;cluster`` from ``sbatch --parsable``."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if lines:
        job_id, _, cluster = lines[-1].partition(";")
        if job_id.isdigit():
            return SubmittedJob(job_id, cluster or None)
    raise CommandError(
        list(result.args),
        result.returncode,
        result.stdout,
        (result.stderr + "\nsbatch --parsable printed no job id").strip(),
    )


def _parse_rows(stdout: str, argv: Sequence[str]) -> dict[str, SqueueRow]:
    try:
        return parse_squeue(stdout)
    except SqueueParseError as exc:
        raise CommandError(argv, 0, stdout, f"unexpected squeue output: {exc}") from exc


class PyslurmClient:
    """Slurm through libslurm with pyslurm, following the same contract.

    NOTE: untested here. PyPI only has pyslurm 25.11, which cannot build
    against Debian's Slurm 22.05 on the development and CI machines, so the
    contract tests skip this class.
    """

    def __init__(self) -> None:
        try:
            import pyslurm
        except ImportError as exc:
            raise TargetError(
                "the pyslurm Slurm client needs the pyslurm package, whose "
                "version must match the cluster's Slurm (pip install "
                f"'pyslurm==<your Slurm version>'); unset {CLIENT_ENV} to use "
                "Slurm's commands instead"
            ) from exc
        self._pyslurm: Any = pyslurm
        self._accounting: bool | None = None
        # pyslurm has no test-only submission, so that one goes to sbatch.
        self._commands = CommandLineClient()

    def _call(self, what: str, function: Callable[[], Any]) -> Any:
        logger.debug("pyslurm {}", what)
        try:
            return function()
        except Exception as exc:  # pyslurm raises RPCError and ValueError
            raise TargetError(f"pyslurm {what} failed: {exc}") from exc

    def submit(self, script_path: Path, env: Mapping[str, str]) -> SubmittedJob:
        clean = submission_environment(env)

        def submit() -> Any:
            description = self._pyslurm.JobSubmitDescription(
                script=str(script_path),
                working_directory=str(script_path.parent),
                environment=clean,
            )
            description.load_sbatch_options()
            return description.submit()

        return SubmittedJob(str(self._call(f"submit {script_path}", submit)))

    def _rows(self, uid: int | None = None) -> list[SqueueRow]:
        jobs = self._call("load jobs", lambda: self._pyslurm.Jobs.load())
        rows = []
        for job in jobs.values():
            if uid is not None and job.user_id != uid:
                continue
            limit = job.time_limit
            remaining = getattr(job, "time_remaining", None)
            rows.append(
                SqueueRow(
                    job_id=str(job.id),
                    state=str(job.state),
                    time_left_s=None if remaining is None else int(remaining),
                    time_limit_s=None if limit is None else int(limit) * 60,
                    nodes=tuple(expand_nodelist(job.allocated_nodes or "")),
                    reason="" if job.state_reason == "None" else job.state_reason,
                    name=str(job.name or ""),
                )
            )
        return rows

    def query(self, job_ids: Sequence[str]) -> dict[str, SqueueRow]:
        wanted = {str(job_id) for job_id in job_ids}
        if not wanted:
            return {}
        return {row.job_id: row for row in self._rows() if row.job_id in wanted}

    def user_jobs(self) -> dict[str, SqueueRow]:
        uid = os.getuid()
        return {row.job_id: row for row in self._rows(uid)}

    def find_by_name(self, names: Sequence[str]) -> list[SqueueRow]:
        wanted = set(names)
        if not wanted:
            return []
        return [row for row in self._rows() if row.name in wanted]

    def cancel(
        self, job_ids: Sequence[str], *, signal: str | None = None, full: bool = False
    ) -> None:
        steps = "all" if full else "children"
        for job_id in dict.fromkeys(str(job_id) for job_id in job_ids):
            job = self._pyslurm.Job(int(job_id))
            if signal is None:
                self._call(f"cancel {job_id}", job.cancel)
            else:
                self._call(
                    f"signal {signal} {job_id}",
                    functools.partial(job.send_signal, signal, steps=steps),
                )

    def test_submit(self, script: str, env: Mapping[str, str]) -> str | None:
        return self._commands.test_submit(script, env)

    def history(self, job_ids: Sequence[str]) -> dict[str, AccountingRow] | None:
        ids = [int(job_id) for job_id in dict.fromkeys(job_ids)]
        if self._accounting is False:
            return None
        if not ids:
            return {}
        db = self._pyslurm.db
        try:
            jobs = db.Jobs.load(db.JobFilter(ids=ids))
        except Exception as exc:
            if _ACCOUNTING_DISABLED in str(exc):
                self._accounting = False
                return None
            raise TargetError(f"pyslurm accounting query failed: {exc}") from exc
        self._accounting = True
        rows = {}
        for job in jobs.values():
            rows[str(job.id)] = AccountingRow(
                job_id=str(job.id),
                state=str(job.state),
                exit_code=f"{job.exit_code or 0}:{job.exit_code_signal or 0}",
                nodes=tuple(expand_nodelist(job.nodelist or "")),
                reason=str(job.state_reason or ""),
            )
        return rows


def make_client(name: str | None = None) -> SlurmClient:
    """Build the client named by ``name`` or UBENCH_SLURM_CLIENT (default command)."""
    choice = (name or os.environ.get(CLIENT_ENV) or "command").strip().lower()
    if choice == "command":
        return CommandLineClient()
    if choice == "pyslurm":
        return PyslurmClient()
    raise TargetError(
        f"{CLIENT_ENV}={choice!r} names no Slurm client: use 'command' or 'pyslurm'"
    )
