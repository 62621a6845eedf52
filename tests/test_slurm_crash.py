"""Crash safety on the real Slurm: SIGKILL apply and destroy at every step.

The real ``ubench`` process runs in a subprocess with UBENCH_FAILPOINT set and
kills itself with SIGKILL before sbatch, after sbatch, during the health wait
or during destroy, three times per step. After each kill the state file must
parse, every live job of the stack must be tracked by the state (by its
token), and no address may have two live jobs. The next apply must then leave
exactly one live, healthy job per resource, adopting any job the killed run
left rather than submitting a second one, and the plan after it is empty.

A plan whose Slurm controller cannot be reached must fail with Slurm's own
error, without a traceback and without planning to recreate the services it
could not observe.
"""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PYTHON, free_port
from ubench_iac.state import State

# The fixtures (the cluster, the down controller) come from this plugin module.
# pytest rewrites its asserts only when it is registered before the import.
pytest_plugins = ["tests.slurm_fixtures"]
pytest.register_assert_rewrite("tests.slurm_fixtures")

from tests.slurm_fixtures import SlurmCluster  # noqa: E402

pytestmark = pytest.mark.slurm

NAME = "slurm-crash"

# The nodes share the machine's network namespace and each node name maps to
# its own loopback address, so a server bound to 0.0.0.0 responds to the health
# check on whichever node runs it. The two services use distinct ports.
STACK = """\
name: {name}
target: {{kind: slurm}}
services:
  db:
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "0.0.0.0"]
    ports: {{http: {db}}}
    health: {{type: http, interval_s: 0.2}}
    outputs: {{url: "http://{{{{ host }}}}:{{{{ port }}}}"}}
  app:
    depends_on: [db]
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "0.0.0.0"]
    environment: {{DB: "{{{{ services.db.outputs.url }}}}"}}
    ports: {{http: {app}}}
    health: {{type: http, interval_s: 0.2}}
"""

SINGLE_STACK = """\
name: {name}
target: {{kind: slurm}}
services:
  lone:
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "0.0.0.0"]
    ports: {{http: {port}}}
    health: {{type: http, interval_s: 0.2}}
"""

ADDRESSES = {"service.db[0]", "service.app[0]"}
REPEATS = 3

# Generous bound on one CLI run, so a hung run fails the test instead of
# hanging the session. A healthy run takes a few seconds.
RUN_TIMEOUT_S = 300

# What the killed apply leaves, per failpoint. db has no dependency, so it is
# always the first and only resource the killed apply reaches:
#   (live jobs of the stack, records with a job id, records without one)
AFTER_KILL = {
    # Recorded with its token, nothing submitted yet.
    "before-submit": (0, 0, 1),
    # Submitted, but the job id never reached the state.
    "after-submit": (1, 0, 1),
    # Submitted and recorded, never seen healthy.
    "health-wait": (1, 1, 0),
}


def _ubench(
    workdir: Path, conf: Path, *args: str, failpoint: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the real ubench CLI in a subprocess against the cluster of ``conf``."""
    env = {**os.environ, "SLURM_CONF": str(conf)}
    for name in ("UBENCH_FAILPOINT", "UBENCH_STATE_DIR", "UBENCH_STACK"):
        env.pop(name, None)
    if failpoint:
        env["UBENCH_FAILPOINT"] = failpoint
    return subprocess.run(
        [sys.executable, "-m", "ubench_iac", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def _state(workdir: Path, name: str = NAME) -> State:
    path = workdir / "state" / f"{name}.json"
    return State.model_validate_json(path.read_text())


def _user_jobs(cluster: SlurmCluster, column: str) -> list[tuple[str, str]]:
    """Return (job id, ``column``) for each live job of this user.

    Without --states, squeue lists only pending, running and completing jobs,
    which are the jobs that hold a node or will.
    """
    out = cluster.command(
        "squeue", "--noheader", f"--format=%i|{column}", f"--user={os.getuid()}"
    )
    rows = [line.strip().partition("|") for line in out.splitlines() if line.strip()]
    return [(job_id, value) for job_id, _, value in rows]


def _live_jobs(cluster: SlurmCluster, lineage: str) -> dict[str, str]:
    """Return the live jobs of the stack with ``lineage``: job id -> token."""
    prefix = f"ubench:{lineage}:"
    return {
        job_id: name
        for job_id, name in _user_jobs(cluster, "%j")
        if name.startswith(prefix)
    }


def _address(token: str) -> str:
    """Return the address in ``ubench:<lineage>:<address>:<hash>``."""
    return token.split(":", 2)[2].rpartition(":")[0]


def _check_consistent(cluster: SlurmCluster, workdir: Path) -> dict[str, str]:
    """Check the state against squeue, and return the live jobs by address."""
    state = _state(workdir)
    live = _live_jobs(cluster, state.lineage)
    # A pending record (no job id yet) still tracks its job by its token.
    recorded = {r.token: r for r in state.resources}
    untracked = sorted(name for name in live.values() if name not in recorded)
    assert untracked == [], f"live jobs missing from the state: {untracked}"
    addresses = [_address(name) for name in live.values()]
    assert len(addresses) == len(set(addresses)), f"two live jobs for one: {live}"
    for job_id, name in live.items():
        handle = recorded[name].handle
        # A recorded job id must be the live job's, or two jobs would compete.
        if handle is not None:
            assert handle["job_id"] == job_id, f"{name}: state {handle}, squeue"
    return {_address(name): job_id for job_id, name in live.items()}


def _http_status(host: str, port: int) -> int:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/")
        return connection.getresponse().status
    finally:
        connection.close()


def _check_applied(cluster: SlurmCluster, workdir: Path) -> dict[str, str]:
    """Check for one live, healthy job per resource, and return them by address."""
    jobs = _check_consistent(cluster, workdir)
    state = _state(workdir)
    assert set(jobs) == ADDRESSES
    assert {r.address for r in state.resources} == ADDRESSES
    assert all(r.healthy for r in state.resources)
    endpoints = [r.endpoint for r in state.resources]
    assert all(e is not None and e.port is not None for e in endpoints)
    statuses = [_http_status(e.host, e.port) for e in endpoints if e and e.port]
    assert statuses == [200, 200]
    return jobs


def _cancel_leftovers(cluster: SlurmCluster, workdir: Path) -> None:
    """Cancel, by id, every job whose batch script is under ``workdir``.

    The run directories are under the test's directory, so this finds the
    test's jobs even when the state file is unreadable.
    """
    ours = [
        job_id
        for job_id, script in _user_jobs(cluster, "%o")
        if script.startswith(f"{workdir}/")
    ]
    if ours:
        cluster.command("scancel", *ours)


@pytest.fixture
def stack(workdir: Path, slurm_cluster: SlurmCluster) -> Iterator[Path]:
    path = workdir / f"{NAME}.yaml"
    path.write_text(
        STACK.format(name=NAME, python=PYTHON, db=free_port(), app=free_port())
    )
    yield path
    _ubench(workdir, slurm_cluster.conf, "destroy", str(path), "--auto-approve")
    _cancel_leftovers(slurm_cluster, workdir)


@pytest.fixture
def single_stack(workdir: Path, slurm_cluster: SlurmCluster) -> Iterator[Path]:
    path = workdir / "slurm-lone.yaml"
    path.write_text(
        SINGLE_STACK.format(name="slurm-lone", python=PYTHON, port=free_port())
    )
    yield path
    _ubench(workdir, slurm_cluster.conf, "destroy", str(path), "--auto-approve")
    _cancel_leftovers(slurm_cluster, workdir)


@pytest.mark.parametrize("point", sorted(AFTER_KILL))
def test_slurm_apply_killed_at_step_recovers(
    point: str, stack: Path, workdir: Path, slurm_cluster: SlurmCluster
) -> None:
    conf = slurm_cluster.conf
    live_jobs, with_id, without_id = AFTER_KILL[point]
    for _ in range(REPEATS):
        killed = _ubench(
            workdir, conf, "apply", str(stack), "--auto-approve", failpoint=point
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = _check_consistent(slurm_cluster, workdir)
        records = _state(workdir).resources
        assert len(left) == live_jobs
        assert sum(1 for r in records if r.handle) == with_id
        assert sum(1 for r in records if not r.handle) == without_id

        applied = _ubench(workdir, conf, "apply", str(stack), "--auto-approve")
        assert applied.returncode == 0, applied.stderr
        jobs = _check_applied(slurm_cluster, workdir)
        # The job the killed run left is adopted, not submitted a second time.
        assert {a: jobs[a] for a in left} == left
        planned = _ubench(workdir, conf, "plan", str(stack), "--detailed-exitcode")
        assert planned.returncode == 0, planned.stdout + planned.stderr

        # Start the next round from nothing, so the failpoint is reached again.
        destroyed = _ubench(workdir, conf, "destroy", str(stack), "--auto-approve")
        assert destroyed.returncode == 0, destroyed.stderr
        assert _live_jobs(slurm_cluster, _state(workdir).lineage) == {}


def test_slurm_destroy_killed_recovers(
    stack: Path, workdir: Path, slurm_cluster: SlurmCluster
) -> None:
    conf = slurm_cluster.conf
    for _ in range(REPEATS):
        applied = _ubench(workdir, conf, "apply", str(stack), "--auto-approve")
        assert applied.returncode == 0, applied.stderr
        _check_applied(slurm_cluster, workdir)

        killed = _ubench(
            workdir,
            conf,
            "destroy",
            str(stack),
            "--auto-approve",
            failpoint="destroy",
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        left = _check_consistent(slurm_cluster, workdir)
        # Dependents stop first: app has ended, db still runs, both recorded.
        assert set(left) == {"service.db[0]"}
        assert len(_state(workdir).resources) == 2

        destroyed = _ubench(workdir, conf, "destroy", str(stack), "--auto-approve")
        assert destroyed.returncode == 0, destroyed.stderr
        state = _state(workdir)
        assert state.resources == []
        assert _live_jobs(slurm_cluster, state.lineage) == {}


def test_slurm_plan_controller_down_reports_cause(
    single_stack: Path,
    workdir: Path,
    slurm_cluster: SlurmCluster,
    down_controller_conf: Path,
) -> None:
    conf = slurm_cluster.conf
    applied = _ubench(workdir, conf, "apply", str(single_stack), "--auto-approve")
    assert applied.returncode == 0, applied.stderr
    state_path = workdir / "state" / "slurm-lone.json"
    recorded = state_path.read_bytes()

    planned = _ubench(
        workdir, down_controller_conf, "plan", str(single_stack), "--detailed-exitcode"
    )

    assert planned.returncode == 1, planned.stdout + planned.stderr
    # squeue's own words, or the client's timeout when squeue hangs instead.
    causes = ("Unable to contact slurm controller", "timed out")
    assert any(cause in planned.stderr for cause in causes), planned.stderr
    assert "Traceback" not in planned.stderr
    # An unobserved job is not a gone job: nothing may be planned at all.
    assert "will be" not in planned.stdout
    assert "Plan:" not in planned.stdout
    assert state_path.read_bytes() == recorded

    # Back on the live controller the service is still there, unchanged.
    again = _ubench(workdir, conf, "plan", str(single_stack), "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
