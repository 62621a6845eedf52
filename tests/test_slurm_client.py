"""The Slurm client contract, against the real Slurm of tests/slurm_fixtures.py.

Pure helpers (environment stripping, sacct parsing, failure classification)
are tested without a cluster; everything else submits, queries and cancels
real jobs. The contract tests run for each client; PyslurmClient skips where
pyslurm cannot be imported.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from ubench_iac.errors import CommandError, TargetError
from ubench_iac.slurm.client import (
    CommandLineClient,
    PyslurmClient,
    SlurmClient,
    find_submitted,
    is_uncertain_failure,
    make_client,
    parse_sacct,
    submission_environment,
    submit_idempotent,
)

# The fixtures (the cluster, command recording) come from this plugin module.
# pytest rewrites its asserts only when it is registered before the import.
pytest_plugins = ["tests.slurm_fixtures"]
pytest.register_assert_rewrite("tests.slurm_fixtures")

from tests.slurm_fixtures import (  # noqa: E402
    SlurmCluster,
    UncertainSbatchFake,
    batch_script,
    count,
    wait_for_text,
)

PYSLURM_SKIP = (
    "pyslurm is not installed: PyPI only has pyslurm 25.11, which cannot build "
    "against Debian's Slurm 22.05 here"
)


def _no_sleep(seconds: float) -> None:
    """Replace the back-off between sbatch attempts; tests count calls."""


def _name() -> str:
    return f"ubench-test:{uuid.uuid4().hex[:12]}"


# Without a cluster -----------------------------------------------------------


def test_submission_environment_removes_slurm_input_variables() -> None:
    env = submission_environment(
        {
            "PATH": "/usr/bin",
            "SLURM_CONF": "/etc/slurm/slurm.conf",
            "SLURM_JOB_ID": "7",
            "SLURM_CPUS_PER_TASK": "4",
            "SBATCH_TIMELIMIT": "5",
            "SRUN_CPUS_PER_TASK": "4",
            "SQUEUE_USERS": "someone",
        }
    )
    assert env == {"PATH": "/usr/bin", "SLURM_CONF": "/etc/slurm/slurm.conf"}


def test_is_uncertain_failure_true_for_timeout() -> None:
    error = CommandError(["sbatch"], None, timed_out=True)
    assert is_uncertain_failure(error)


def test_is_uncertain_failure_true_for_lost_reply() -> None:
    error = CommandError(
        ["sbatch"],
        1,
        stderr="sbatch: error: Batch job submission failed: Socket timed out on "
        "send/recv operation",
    )
    assert is_uncertain_failure(error)


def test_is_uncertain_failure_false_for_rejection() -> None:
    error = CommandError(
        ["sbatch"],
        1,
        stderr="sbatch: error: Batch job submission failed: Invalid partition name",
    )
    assert not is_uncertain_failure(error)


def test_parse_sacct_keeps_last_record_of_requeued_job() -> None:
    rows = parse_sacct("41|NODE_FAIL|0:0|n[1-2]|None\n41|TIMEOUT|0:15|n3|None\n")
    assert rows["41"].state == "TIMEOUT"
    assert rows["41"].nodes == ("n3",)


def test_parse_sacct_reads_cancelled_by_and_exit_code() -> None:
    row = parse_sacct("42|CANCELLED by 1000|0:15|node7|None\n")["42"]
    assert row.state == "CANCELLED by 1000"
    assert row.exit_code == "0:15"
    assert row.reason == ""


def test_parse_sacct_pending_job_has_no_nodes() -> None:
    row = parse_sacct("43|CANCELLED by 0|0:0|None assigned|Dependency\n")["43"]
    assert row.nodes == ()
    assert row.reason == "Dependency"


def test_parse_sacct_rejects_short_line() -> None:
    with pytest.raises(TargetError, match="unexpected sacct line"):
        parse_sacct("44|COMPLETED\n")


def test_make_client_rejects_unknown_name() -> None:
    with pytest.raises(TargetError, match="names no Slurm client"):
        make_client("rest")


def test_make_client_defaults_to_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UBENCH_SLURM_CLIENT", raising=False)
    assert isinstance(make_client(), CommandLineClient)


# Against the real cluster ------------------------------------------------------


@pytest.fixture
def cancel_later(slurm_cluster: SlurmCluster) -> Iterator[list[str]]:
    """Job ids to scancel when the test ends, whatever its outcome."""
    ids: list[str] = []
    yield ids
    if ids:
        slurm_cluster.command("scancel", *ids)


@pytest.fixture(params=["command", "pyslurm"])
def client(request: pytest.FixtureRequest, slurm_cluster: SlurmCluster) -> SlurmClient:
    """Each implementation of the contract, against the real cluster."""
    if request.param == "pyslurm":
        try:
            import pyslurm  # noqa: F401
        except ImportError:
            pytest.skip(PYSLURM_SKIP)
        return PyslurmClient()
    return CommandLineClient()


@pytest.mark.slurm
def test_client_submit_then_query_sees_job(
    client: SlurmClient, tmp_path: Path, cancel_later: list[str]
) -> None:
    name = _name()
    job = client.submit(
        batch_script(tmp_path / "job.sh", name), submission_environment()
    )
    cancel_later.append(job.job_id)

    rows = client.query([job.job_id])

    assert job.job_id.isdigit()
    assert rows[job.job_id].name == name
    assert rows[job.job_id].state in ("PENDING", "RUNNING")


@pytest.mark.slurm
def test_client_query_of_one_unknown_id_is_empty(client: SlurmClient) -> None:
    # squeue 22.05 exits 1 "Invalid job id specified" for one unknown id.
    assert client.query(["99999999"]) == {}


@pytest.mark.slurm
def test_client_query_mixes_known_and_unknown_ids(
    client: SlurmClient, tmp_path: Path, cancel_later: list[str]
) -> None:
    job = client.submit(
        batch_script(tmp_path / "job.sh", _name()), submission_environment()
    )
    cancel_later.append(job.job_id)

    rows = client.query([job.job_id, "99999998", "99999999"])

    assert list(rows) == [job.job_id]


@pytest.mark.slurm
def test_client_find_by_name_returns_the_named_job(
    client: SlurmClient, tmp_path: Path, cancel_later: list[str]
) -> None:
    name = _name()
    job = client.submit(
        batch_script(tmp_path / "job.sh", name), submission_environment()
    )
    cancel_later.append(job.job_id)
    other = client.submit(
        batch_script(tmp_path / "other.sh", _name()), submission_environment()
    )
    cancel_later.append(other.job_id)

    rows = client.find_by_name([name])

    assert [row.job_id for row in rows] == [job.job_id]


@pytest.mark.slurm
def test_client_user_jobs_lists_own_job(
    client: SlurmClient, tmp_path: Path, cancel_later: list[str]
) -> None:
    job = client.submit(
        batch_script(tmp_path / "job.sh", _name()), submission_environment()
    )
    cancel_later.append(job.job_id)

    assert job.job_id in client.user_jobs()


@pytest.mark.slurm
def test_client_cancel_ends_job_and_repeats_without_error(
    client: SlurmClient,
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    cancel_later: list[str],
) -> None:
    job = client.submit(
        batch_script(tmp_path / "job.sh", _name()), submission_environment()
    )
    cancel_later.append(job.job_id)

    client.cancel([job.job_id])
    client.cancel([job.job_id, "99999999"])

    assert slurm_cluster.wait_for_state(job.job_id, ["CANCELLED"], 60) == "CANCELLED"


@pytest.mark.slurm
def test_client_test_submit_accepts_a_valid_script(client: SlurmClient) -> None:
    script = "#!/bin/bash\n#SBATCH --nodes=1\nsleep 1\n"
    assert client.test_submit(script, submission_environment()) is None


@pytest.mark.slurm
def test_client_test_submit_returns_the_rejection(client: SlurmClient) -> None:
    script = "#!/bin/bash\n#SBATCH --nodes=9\nsleep 1\n"
    objection = client.test_submit(script, submission_environment())
    assert objection is not None
    assert "Requested node configuration is not available" in objection


@pytest.mark.slurm
def test_client_history_without_accounting_is_none(client: SlurmClient) -> None:
    assert client.history(["99999999"]) is None


@pytest.mark.slurm
def test_query_many_ids_one_squeue_call(
    slurm_cluster: SlurmCluster,
    slurm_commands: list[list[str]],
    tmp_path: Path,
    cancel_later: list[str],
) -> None:
    client = CommandLineClient()
    submitted = [
        client.submit(
            batch_script(tmp_path / f"job{i}.sh", _name()), submission_environment()
        )
        for i in range(3)
    ]
    cancel_later.extend(job.job_id for job in submitted)
    ids = [job.job_id for job in submitted] + [str(90000000 + i) for i in range(60)]
    slurm_commands.clear()

    rows = client.query(ids)

    assert count(slurm_commands, "squeue") == 1
    assert len(slurm_commands) == 1
    assert set(rows) == {job.job_id for job in submitted}


@pytest.mark.slurm
def test_command_client_probes_accounting_once(
    slurm_cluster: SlurmCluster, slurm_commands: list[list[str]]
) -> None:
    client = CommandLineClient()

    first = client.history(["99999999"])
    second = client.history(["99999998"])

    assert first is None
    assert second is None
    assert count(slurm_commands, "sacct") == 1


@pytest.mark.slurm
def test_command_client_logs_each_command_at_debug(slurm_cluster: SlurmCluster) -> None:
    messages: list[str] = []
    sink = logger.add(messages.append, level="DEBUG", format="{level} {message}")
    try:
        CommandLineClient().query(["99999999", "99999998"])
    finally:
        logger.remove(sink)
    runs = [m for m in messages if m.startswith("DEBUG run [")]
    assert len(runs) == 1
    assert "'squeue', '--noheader', '--states=all'" in runs[0]


@pytest.mark.slurm
def test_query_controller_down_raises_with_stderr(
    down_controller_conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(down_controller_conf))
    # Two ids: squeue 22.05 tries a single id twice (about 18 s), two once.
    with pytest.raises(CommandError) as caught:
        CommandLineClient(timeout_s=60).query(["1", "2"])
    assert caught.value.returncode == 1
    assert "Unable to contact slurm controller" in caught.value.stderr
    assert caught.value.argv[0] == "squeue"


@pytest.mark.slurm
def test_query_controller_down_times_out(
    down_controller_conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(down_controller_conf))
    with pytest.raises(CommandError) as caught:
        CommandLineClient(timeout_s=1).query(["1"])
    assert caught.value.timed_out


@pytest.mark.slurm
def test_command_client_submit_strips_sbatch_variables(
    slurm_cluster: SlurmCluster,
    tmp_path: Path,
    cancel_later: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both would change the job if they reached sbatch: a 7-minute time
    # limit, and a variable the job's own srun reads.
    monkeypatch.setenv("SBATCH_TIMELIMIT", "7")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    client = CommandLineClient()
    script = batch_script(
        tmp_path / "job.sh", _name(), body="env; echo env-done; sleep 300"
    )
    job = client.submit(script, submission_environment())
    cancel_later.append(job.job_id)
    log = wait_for_text(tmp_path / "job.log", "env-done", 60)

    row = client.query([job.job_id])[job.job_id]

    assert row.time_limit_s is None
    assert "SBATCH_TIMELIMIT" not in log
    assert "SLURM_CPUS_PER_TASK=4" not in log
    assert f"SLURM_CONF={slurm_cluster.conf}" in log


@pytest.mark.slurm
def test_submit_idempotent_adopts_job_queued_by_uncertain_failure(
    slurm_cluster: SlurmCluster,
    slurm_commands: list[list[str]],
    tmp_path: Path,
    cancel_later: list[str],
) -> None:
    name = _name()
    fake = UncertainSbatchFake(CommandLineClient(), really_submit=True)

    job = submit_idempotent(
        fake,
        batch_script(tmp_path / "job.sh", name),
        submission_environment(),
        name,
        sleep=_no_sleep,
    )
    cancel_later.extend(fake.queued)

    assert fake.submit_calls == 1
    assert job.job_id == fake.queued[0]
    assert [row.job_id for row in CommandLineClient().find_by_name([name])] == [
        job.job_id
    ]
    assert count(slurm_commands, "sbatch") == 1


@pytest.mark.slurm
def test_submit_idempotent_submits_again_when_nothing_was_queued(
    slurm_cluster: SlurmCluster, tmp_path: Path, cancel_later: list[str]
) -> None:
    name = _name()
    fake = UncertainSbatchFake(CommandLineClient(), really_submit=False)
    warnings: list[str] = []
    sink = logger.add(warnings.append, level="WARNING", format="{message}")
    try:
        job = submit_idempotent(
            fake,
            batch_script(tmp_path / "job.sh", name),
            submission_environment(),
            name,
            sleep=_no_sleep,
        )
    finally:
        logger.remove(sink)
    cancel_later.extend(fake.queued)

    assert fake.submit_calls == 2
    assert fake.queued == [job.job_id]
    assert len(CommandLineClient().find_by_name([name])) == 1
    assert any("(attempt 2/3)" in warning for warning in warnings)


@pytest.mark.slurm
def test_submit_idempotent_gives_up_after_the_retries(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    name = _name()
    fake = UncertainSbatchFake(CommandLineClient(), really_submit=False, fail_first=9)

    with pytest.raises(CommandError) as caught:
        submit_idempotent(
            fake,
            batch_script(tmp_path / "job.sh", name),
            submission_environment(),
            name,
            sleep=_no_sleep,
        )

    assert caught.value.timed_out
    assert fake.submit_calls == 3
    assert CommandLineClient().find_by_name([name]) == []


@pytest.mark.slurm
def test_submit_idempotent_raises_rejection_without_retry(
    slurm_cluster: SlurmCluster, slurm_commands: list[list[str]], tmp_path: Path
) -> None:
    name = _name()
    script = batch_script(tmp_path / "job.sh", name, partition="no-such-partition")

    with pytest.raises(CommandError, match="partition"):
        submit_idempotent(
            CommandLineClient(), script, submission_environment(), name, sleep=_no_sleep
        )

    assert count(slurm_commands, "sbatch") == 1
    assert count(slurm_commands, "squeue") == 0


@pytest.mark.slurm
def test_find_submitted_ignores_ended_job_with_same_name(
    slurm_cluster: SlurmCluster, tmp_path: Path, cancel_later: list[str]
) -> None:
    name = _name()
    client = CommandLineClient()
    job = client.submit(
        batch_script(tmp_path / "job.sh", name), submission_environment()
    )
    cancel_later.append(job.job_id)
    client.cancel([job.job_id])
    slurm_cluster.wait_for_state(job.job_id, ["CANCELLED"], 60)

    assert find_submitted(client, name) is None
