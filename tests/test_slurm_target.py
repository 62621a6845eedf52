"""The Slurm target end to end: the ubench CLI against a real Slurm cluster.

The stack has a plain http.server, a two-node service whose srun starts one
http.server on each node, and a busybox httpd inside a Charliecloud image
that uses the first service's URL. Health checks run from here against the
node names, which /etc/hosts maps to the nodes' loopback addresses.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTHON, Result, free_port, read_state
from ubench_iac.errors import CommandError
from ubench_iac.models import TargetConfig
from ubench_iac.plan import token_for
from ubench_iac.slurm.client import CommandLineClient
from ubench_iac.status import JobStatus
from ubench_iac.targets.base import Submission
from ubench_iac.targets.slurm import NO_ACCOUNTING_REASON, SlurmTarget
from ubench_iac.workspace import Workspace

# The fixtures (the cluster, command recording) come from this plugin module.
# pytest rewrites its asserts only when it is registered before the import.
pytest_plugins = ["tests.slurm_fixtures"]
pytest.register_assert_rewrite("tests.slurm_fixtures")

from tests.slurm_fixtures import SlurmCluster, count  # noqa: E402

pytestmark = pytest.mark.slurm

# Each service binds its node's own address: the nodes share one network
# namespace, so two tasks of `wide` on one port need distinct addresses.
STACK = """\
name: {name}
target: {{kind: slurm}}
services:
  files:
    command: |
      exec "{python}" -m http.server {{{{ port }}}} --bind "$(hostname)"
    ports: {{http: {files_port}}}
    health: {{type: http, interval_s: 0.2}}
    outputs:
      url: "http://{{{{ host }}}}:{{{{ port }}}}"
  wide:
    command: |
      exec "{python}" -m http.server {{{{ port }}}} --bind "$(hostname)"
    ports: {{http: {wide_port}}}
    resources: {{nodes: 2}}
    slurm: {{endpoint_node: 1}}
    health: {{type: http, interval_s: 0.2}}
  web:
    depends_on: [files]
    runtime: charliecloud
    image: {image}
    environment:
      UPSTREAM: "{{{{ services.files.outputs.url }}}}"
    command:
      - /bin/sh
      - -c
      - >-
        echo "upstream=$UPSTREAM";
        exec /bin/busybox httpd -f -h /www
        -p "$(/bin/busybox hostname -i):{{{{ port }}}}"
    ports: {{http: {web_port}}}
    health: {{type: http, interval_s: 0.2}}
"""

SHORT_STACK = """\
name: {name}
target: {{kind: slurm}}
services:
  brief:
    command: |
      exec "{python}" -m http.server {{{{ port }}}} --bind "$(hostname)"
    ports: {{http: {port}}}
    resources: {{time_limit: 1}}
    health: {{type: http, interval_s: 0.2}}
"""

# Longer than the ~84 s a one-minute job takes to reach TIMEOUT here.
TIMEOUT_WAIT_S = 300


@pytest.fixture
def stack(
    workdir: Path,
    cleanup_stacks: list[str],
    slurm_cluster: SlurmCluster,
    busybox_image: Path,
) -> Path:
    path = workdir / "slurm-e2e.yaml"
    path.write_text(
        STACK.format(
            name="slurm-e2e",
            python=PYTHON,
            image=busybox_image,
            files_port=free_port(),
            wide_port=free_port(),
            web_port=free_port(),
        )
    )
    cleanup_stacks.append(str(path))
    return path


def _state(workdir: Path, name: str = "slurm-e2e") -> dict[str, Any]:
    return read_state(workdir / "state" / f"{name}.json")


def _resource(state: dict[str, Any], service: str) -> dict[str, Any]:
    address = f"service.{service}[0]"
    return next(r for r in state["resources"] if r["address"] == address)


def _get(host: str, port: int, path: str = "/") -> tuple[int, str]:
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


def test_slurm_apply_brings_the_stack_up_healthy(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    applied = ubench("apply", str(stack), "--auto-approve")

    assert applied.exit_code == 0, applied.output
    state = _state(workdir)
    assert {r["healthy"] for r in state["resources"]} == {True}
    files = _resource(state, "files")
    assert files["outputs"]["url"].startswith("http://node")
    assert (
        _resource(state, "web")["spec"]["environment"]["UPSTREAM"]
        == (files["outputs"]["url"])
    )


def test_slurm_two_node_service_answers_on_both_nodes(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    endpoint = _resource(_state(workdir), "wide")["endpoint"]

    statuses = [_get(node, endpoint["port"])[0] for node in endpoint["nodes"]]

    assert len(set(endpoint["nodes"])) == 2
    assert endpoint["host"] == endpoint["nodes"][1]
    assert statuses == [200, 200]


def test_slurm_charliecloud_service_serves_from_its_image(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    web = _resource(_state(workdir), "web")

    status, body = _get(web["endpoint"]["host"], web["endpoint"]["port"])
    log = Path(web["log"]).read_text()

    assert status == 200
    assert "ubench busybox image" in body
    assert "ch-run" in Path(web["script"]).read_text()
    assert f"upstream={_resource(_state(workdir), 'files')['outputs']['url']}" in log


def test_plan_after_apply_one_squeue_call(
    stack: Path,
    ubench: Callable[..., Result],
    slurm_commands: list[list[str]],
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    slurm_commands.clear()

    planned = ubench("plan", str(stack), "--detailed-exitcode")

    assert planned.exit_code == 0, planned.output
    assert count(slurm_commands, "squeue") == 1
    assert len(slurm_commands) == 1


def test_slurm_scancel_makes_plan_recreate_with_reason_cancelled(
    stack: Path,
    workdir: Path,
    ubench: Callable[..., Result],
    slurm_cluster: SlurmCluster,
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    job_id = _resource(_state(workdir), "wide")["handle"]["job_id"]
    slurm_cluster.command("scancel", job_id)
    slurm_cluster.wait_for_state(job_id, ["CANCELLED"], 60)

    planned = ubench("plan", str(stack), "--detailed-exitcode")

    assert planned.exit_code == 2, planned.output
    assert "service.wide[0] will be recreated" in planned.stdout
    assert "cancelled" in planned.stdout
    assert "Plan: 1 to add, 0 to change, 0 to replace, 0 to destroy." in planned.stdout
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    assert ubench("plan", str(stack), "--detailed-exitcode").exit_code == 0


def test_slurm_time_limit_ends_job_as_timeout(
    workdir: Path,
    cleanup_stacks: list[str],
    ubench: Callable[..., Result],
    slurm_cluster: SlurmCluster,
) -> None:
    path = workdir / "brief.yaml"
    path.write_text(SHORT_STACK.format(name="brief", python=PYTHON, port=free_port()))
    cleanup_stacks.append(str(path))
    assert ubench("apply", str(path), "--auto-approve").exit_code == 0
    job_id = _resource(_state(workdir, "brief"), "brief")["handle"]["job_id"]

    state = slurm_cluster.wait_for_state(job_id, ["TIMEOUT"], TIMEOUT_WAIT_S)
    planned = ubench("plan", str(path), "--detailed-exitcode")

    assert state == "TIMEOUT"
    assert planned.exit_code == 2
    assert "service.brief[0] will be recreated" in planned.stdout
    assert "timeout: job reached its time limit" in planned.stdout


def test_slurm_destroy_leaves_no_job_in_squeue(
    stack: Path,
    workdir: Path,
    ubench: Callable[..., Result],
    slurm_cluster: SlurmCluster,
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    lineage = _state(workdir)["lineage"]

    destroyed = ubench("destroy", str(stack), "--auto-approve")

    assert destroyed.exit_code == 0, destroyed.output
    assert _state(workdir)["resources"] == []
    ours = [n for n in slurm_cluster.live_job_names() if f":{lineage}:" in n]
    assert ours == []


def test_slurm_plan_validate_reports_the_schedulers_rejection(
    workdir: Path, ubench: Callable[..., Result], slurm_cluster: SlurmCluster
) -> None:
    path = workdir / "huge.yaml"
    path.write_text(
        "name: huge\ntarget: {kind: slurm}\nservices:\n"
        "  big:\n    command: [sleep, '60']\n    resources: {nodes: 9}\n"
    )

    planned = ubench("plan", str(path), "--validate")

    assert planned.exit_code == 1
    assert "service.big[0]" in planned.stderr
    assert "Requested node configuration is not available" in planned.stderr


def test_slurm_plan_validate_accepts_a_valid_stack(
    stack: Path, ubench: Callable[..., Result], slurm_commands: list[list[str]]
) -> None:
    planned = ubench("plan", str(stack), "--validate", "--detailed-exitcode")

    assert planned.exit_code == 2, planned.output
    assert count(slurm_commands, "sbatch") == 3
    assert all("--test-only" in argv for argv in slurm_commands if argv[0] == "sbatch")


# The target's own calls ------------------------------------------------------


def _target(workdir: Path) -> SlurmTarget:
    return SlurmTarget(TargetConfig(kind="slurm"), "direct", workdir / "run")


def test_refresh_forgotten_job_gone_without_accounting(
    workdir: Path, slurm_cluster: SlurmCluster, slurm_commands: list[list[str]]
) -> None:
    target = _target(workdir)

    first = target.refresh([{"job_id": "99999999"}])
    second = target.refresh([{"job_id": "99999999"}])

    assert first[0].status is JobStatus.GONE
    assert first[0].reason == NO_ACCOUNTING_REASON
    assert second[0].status is JobStatus.GONE
    assert count(slurm_commands, "squeue") == 2
    assert count(slurm_commands, "sacct") == 1


def test_refresh_controller_down_raises(
    workdir: Path, down_controller_conf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(down_controller_conf))
    target = SlurmTarget(
        TargetConfig(kind="slurm"),
        "direct",
        workdir / "run",
        client=CommandLineClient(timeout_s=1),
    )

    with pytest.raises(CommandError):
        target.refresh([{"job_id": "1"}, {"job_id": "2"}])


def test_refresh_pending_job_reason_without_host(
    workdir: Path, ubench: Callable[..., Result], slurm_cluster: SlurmCluster
) -> None:
    path = workdir / "wait.yaml"
    # More tasks per node than any node has CPUs: Slurm accepts the job and
    # keeps it pending (PartitionConfig).
    path.write_text(
        "name: wait\ntarget: {kind: slurm}\nservices:\n"
        "  queued:\n    command: [sleep, '60']\n"
        "    resources: {nodes: 3, tasks_per_node: 9}\n"
    )
    workspace = Workspace.open(path)
    plan = workspace.plan()
    change = plan.changes[0]
    assert change.desired is not None and change.script is not None
    target = workspace.target
    submission = Submission(
        resource=change.desired,
        token=token_for(plan.lineage, change.address, change.desired.spec_hash),
        script=change.script,
        script_path=target.script_path(change.desired),
        log_path=target.log_path(change.desired),
    )
    handle = target.submit(submission)
    try:
        observed = target.refresh([handle])[0]
        found = target.find("token-prefix-of-nobody:")
        found_own = target.find(f"ubench:{plan.lineage}:")
    finally:
        target.cancel([handle])

    assert observed.status is JobStatus.PENDING
    assert observed.host is None
    assert "PartitionConfig" in observed.reason
    assert json.loads(json.dumps(handle)) == handle
    assert found == {}
    assert list(found_own.values()) == [handle]
