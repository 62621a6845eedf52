"""Slurm target: each service is one batch job.

The batch script is the one the local target runs, with its ``#SBATCH``
directives now read by sbatch. The job's name and comment carry the
idempotency token, so a job can be found again after a crash or a lost sbatch
reply. The handle is the job id (and the cluster when sbatch names one).

Every refresh is one ``squeue`` call for all handles. Jobs that have left the
queue cost one more call, to ``sacct``, unless the cluster turned out to keep
no accounting.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from ubench_iac.errors import TargetError
from ubench_iac.models import TargetConfig
from ubench_iac.resolve import DesiredResource
from ubench_iac.slurm.client import (
    AccountingRow,
    CommandLineClient,
    SlurmClient,
    make_client,
    newest_active,
    submission_environment,
    submit_idempotent,
)
from ubench_iac.slurm.squeue import SqueueRow
from ubench_iac.slurm.states import map_slurm_state
from ubench_iac.status import JobStatus, Observation
from ubench_iac.targets.base import BatchScriptTarget, Handle, Scan, Submission

NO_ACCOUNTING_REASON = "left the queue; outcome unknown (no accounting)"
NOT_IN_ACCOUNTING_REASON = "left the queue; accounting has no record of it"

_COMMANDS = ("sbatch", "squeue", "scancel")


class SlurmTarget(BatchScriptTarget):
    """Run each service as a Slurm batch job."""

    kind = "slurm"

    def __init__(
        self,
        config: TargetConfig,
        stack: str,
        workdir: Path,
        client: SlurmClient | None = None,
    ) -> None:
        super().__init__(config, stack, workdir)
        self._client = client

    @property
    def client(self) -> SlurmClient:
        """The Slurm client, made on first use so render needs no Slurm."""
        if self._client is None:
            self._client = make_client()
        return self._client

    def check_available(self) -> None:
        client = self.client
        if isinstance(client, CommandLineClient):
            missing = [name for name in _COMMANDS if shutil.which(name) is None]
            if missing:
                raise TargetError(
                    f"the Slurm target needs {', '.join(missing)} on PATH: run "
                    "ubench on a login node of the cluster"
                )

    def predict_host(self, resource: DesiredResource | None = None) -> None:
        # The node is chosen by the scheduler when the job starts.
        return None

    def submit(self, submission: Submission) -> Handle:
        # The log that the job opens on its node is in the run directory, which
        # therefore must exist before the job starts.
        paths = self.write_job_files(submission)
        job = submit_idempotent(
            self.client, paths.script, submission_environment(), submission.token
        )
        handle: Handle = {"job_id": job.job_id}
        if job.cluster:
            handle["cluster"] = job.cluster
        return handle

    def test_submit(self, submission: Submission) -> str | None:
        """Ask Slurm whether it would accept the job; return why not, or None.

        Nothing is queued (``sbatch --test-only``). An unreachable controller
        raises CommandError: it has not rejected anything.
        """
        return self.client.test_submit(submission.script, submission_environment())

    def refresh(self, handles: Sequence[Handle]) -> list[Observation]:
        if not handles:
            return []
        ids = [_job_id(handle) for handle in handles]
        return self._observe(ids, self.client.query(ids))

    def scan(self, handles: Sequence[Handle], prefix: str) -> Scan:
        """Observe ``handles`` and find the stack's live jobs with one squeue call.

        One listing of the user's jobs answers both questions. A handle
        missing from it (a job submitted by another user, or one that left
        the queue) costs one more squeue call by id, then sacct.
        """
        ids = [_job_id(handle) for handle in handles]
        rows = self.client.user_jobs()
        missing = [job_id for job_id in dict.fromkeys(ids) if job_id not in rows]
        if missing:
            rows = {**rows, **self.client.query(missing)}
        ours = [row for row in rows.values() if row.name.startswith(prefix)]
        return Scan(
            observations=self._observe(ids, rows),
            found={
                token: ({"job_id": row.job_id}, _from_squeue(row))
                for token, row in newest_active(ours).items()
            },
        )

    def _observe(
        self, ids: Sequence[str], rows: Mapping[str, SqueueRow]
    ) -> list[Observation]:
        """Map squeue rows to observations; ask sacct about jobs without a row."""
        missing = [job_id for job_id in dict.fromkeys(ids) if job_id not in rows]
        history = self.client.history(missing) if missing else {}
        observations = []
        for job_id in ids:
            row = rows.get(job_id)
            if row is not None:
                observations.append(_from_squeue(row))
            elif history is None:
                observations.append(
                    Observation(JobStatus.GONE, reason=NO_ACCOUNTING_REASON)
                )
            elif job_id in history:
                observations.append(_from_sacct(history[job_id]))
            else:
                observations.append(
                    Observation(JobStatus.GONE, reason=NOT_IN_ACCOUNTING_REASON)
                )
        return observations

    def cancel(self, handles: Sequence[Handle]) -> None:
        self.client.cancel([_job_id(handle) for handle in handles])

    def kill(self, handles: Sequence[Handle]) -> None:
        """SIGKILL every step and the batch shell of jobs that outlived a cancel."""
        self.client.cancel(
            [_job_id(handle) for handle in handles], signal="KILL", full=True
        )

    def find(self, prefix: str) -> Mapping[str, Handle]:
        """Return the user's live jobs whose name (token) starts with ``prefix``."""
        ours = [
            row
            for row in self.client.user_jobs().values()
            if row.name.startswith(prefix)
        ]
        return {
            token: {"job_id": row.job_id} for token, row in newest_active(ours).items()
        }


def _job_id(handle: Handle) -> str:
    job_id = handle.get("job_id")
    if job_id is None or not str(job_id).strip():
        raise TargetError(f"a Slurm handle without a job id: {handle}")
    return str(job_id).strip()


def _map(
    state: str, job_id: str, reason: str = "", exit_code: str = ""
) -> tuple[JobStatus, str]:
    try:
        return map_slurm_state(state, reason, exit_code)
    except ValueError as exc:
        raise TargetError(f"job {job_id}: {exc}") from exc


def _from_squeue(row: SqueueRow) -> Observation:
    status, reason = _map(row.state, row.job_id, row.reason)
    # A pending job has no nodes yet, and its reason column names the cause.
    host = row.nodes[0] if row.nodes and status is not JobStatus.PENDING else None
    return Observation(
        status,
        host=host,
        nodes=row.nodes,
        reason=reason,
        time_left_s=row.time_left_s if status.is_active else None,
        raw_state=row.state,
    )


def _from_sacct(record: AccountingRow) -> Observation:
    status, reason = _map(record.state, record.job_id, record.reason, record.exit_code)
    code = record.exit_code.partition(":")[0]
    return Observation(
        status,
        host=record.nodes[0] if record.nodes else None,
        nodes=record.nodes,
        reason=reason,
        exit_code=int(code) if code.isdigit() else None,
        raw_state=record.state,
    )
