"""The core loop on the local target, with real processes and real HTTP servers."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PYTHON, Result, free_port, pid_alive, read_state

STACK = """\
name: e2e
services:
  files:
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "127.0.0.1"]
    ports: {{http: {files_port}}}
    health: {{type: http, path: /, interval_s: 0.2}}
    outputs:
      url: "http://{{{{ host }}}}:{{{{ port }}}}"
  web:
    depends_on: [files]
    command: |
      echo "upstream={{{{ services.files.outputs.url }}}}"
      exec "{python}" -m http.server {{{{ port }}}} --bind 127.0.0.1
    ports: {{http: {web_port}}}
    environment:
      UPSTREAM: "{{{{ services.files.outputs.url }}}}"
    health: {{type: tcp, interval_s: 0.2}}
    outputs:
      url: "http://{{{{ host }}}}:{{{{ port }}}}"
  other:
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "127.0.0.1"]
    ports: {{http: {other_port}}}
    health: {{type: http, interval_s: 0.2}}
"""


@pytest.fixture
def stack(workdir: Path, cleanup_stacks: list[str]) -> Path:
    path = workdir / "e2e.yaml"
    path.write_text(
        STACK.format(
            python=PYTHON,
            files_port=free_port(),
            web_port=free_port(),
            other_port=free_port(),
        )
    )
    cleanup_stacks.append(str(path))
    return path


def _pids(workdir: Path) -> dict[str, int]:
    state = read_state(workdir / "state" / "e2e.json")
    return {r["address"]: r["handle"]["pid"] for r in state["resources"]}


def _service_pgid(workdir: Path, service: str) -> int:
    supervisor = workdir / "state" / "e2e" / f"{service}-0" / "supervisor.json"
    return int(json.loads(supervisor.read_text())["child_pgid"])


def test_apply_then_plan_has_no_changes(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    applied = ubench("apply", str(stack), "--auto-approve")
    assert applied.exit_code == 0, applied.output
    assert "service.web[0]: healthy" in applied.stderr

    planned = ubench("plan", str(stack), "--detailed-exitcode")
    assert planned.exit_code == 0, planned.output
    assert "No changes" in planned.stdout

    state = read_state(workdir / "state" / "e2e.json")
    web = next(r for r in state["resources"] if r["address"] == "service.web[0]")
    files = next(r for r in state["resources"] if r["address"] == "service.files[0]")
    assert web["spec"]["environment"]["UPSTREAM"] == files["outputs"]["url"]
    assert web["dependencies"] == ["service.files[0]"]
    assert web["healthy"] is True


def test_killed_service_is_recreated_with_reason(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    os.killpg(_service_pgid(workdir, "other"), signal.SIGKILL)
    time.sleep(0.5)

    planned = ubench("plan", str(stack), "--detailed-exitcode")
    assert planned.exit_code == 2
    assert "service.other[0] will be recreated" in planned.stdout
    assert "killed by signal SIGKILL" in planned.stdout
    assert "Plan: 1 to add, 0 to change, 0 to replace, 0 to destroy." in planned.stdout

    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    assert ubench("plan", str(stack), "--detailed-exitcode").exit_code == 0


def test_changed_field_replaces_only_that_service(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    before = _pids(workdir)
    stack.write_text(
        stack.read_text().replace(
            "  other:\n", "  other:\n    environment: {MODE: fast}\n"
        )
    )

    planned = ubench("plan", str(stack), "--json")
    changes = json.loads(planned.stdout)["resource_changes"]
    actions = {c["address"]: c["change"]["actions"] for c in changes}
    assert actions == {
        "service.files[0]": ["no-op"],
        "service.web[0]": ["no-op"],
        "service.other[0]": ["delete", "create"],
    }
    other = next(c for c in changes if c["address"] == "service.other[0]")
    assert other["change"]["replace_paths"] == [["environment"]]

    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    after = _pids(workdir)
    assert after["service.files[0]"] == before["service.files[0]"]
    assert after["service.web[0]"] == before["service.web[0]"]
    assert after["service.other[0]"] != before["service.other[0]"]
    assert not pid_alive(before["service.other[0]"])


def test_health_setting_updates_in_place(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    before = _pids(workdir)
    stack.write_text(
        stack.read_text().replace(
            "type: tcp, interval_s: 0.2", "type: tcp, interval_s: 0.3"
        )
    )

    planned = ubench("plan", str(stack))
    assert "service.web[0] will be updated in place" in planned.stdout
    assert "Plan: 0 to add, 1 to change, 0 to replace, 0 to destroy." in planned.stdout
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    assert _pids(workdir) == before
    assert ubench("plan", str(stack), "--detailed-exitcode").exit_code == 0


def test_destroy_leaves_no_process_and_empty_state(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    pids = _pids(workdir)
    groups = [_service_pgid(workdir, name) for name in ("files", "web", "other")]

    destroyed = ubench("destroy", str(stack), "--auto-approve")
    assert destroyed.exit_code == 0, destroyed.output
    order = [
        line.split(":")[0]
        for line in destroyed.stderr.splitlines()
        if "destroyed" in line
    ]
    assert order.index("service.web[0]") < order.index("service.files[0]")

    for pid in pids.values():
        assert not pid_alive(pid)
    for group in groups:
        with pytest.raises(ProcessLookupError):
            os.killpg(group, 0)
    state = read_state(workdir / "state" / "e2e.json")
    assert state["resources"] == []
    assert ubench("plan", str(stack), "--destroy", "--detailed-exitcode").exit_code == 0


def test_output_status_logs_and_state_commands(
    stack: Path, workdir: Path, ubench: Callable[..., Result]
) -> None:
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0

    url = ubench("output", "files.url", "-s", str(stack))
    assert url.stdout.strip().startswith("http://127.0.0.1:")
    outputs = json.loads(ubench("output", "--json", "-s", str(stack)).stdout)
    assert set(outputs) == {"files.url", "web.url"}

    status = ubench("status", str(stack))
    assert status.exit_code == 0
    assert "service.web[0]" in status.stdout
    rows = json.loads(ubench("status", str(stack), "--json").stdout)
    assert {r["healthy"] for r in rows} == {"yes"}

    logs = ubench("logs", "web", "-s", str(stack))
    assert "upstream=http://127.0.0.1:" in logs.stdout

    listed = ubench("state", "list", "-s", str(stack)).stdout.split()
    assert listed == ["service.files[0]", "service.other[0]", "service.web[0]"]
    shown = json.loads(
        ubench("state", "show", "service.web[0]", "-s", str(stack)).stdout
    )
    assert shown["handle"]["pid"] > 0

    missing = ubench("output", "nothing", "-s", str(stack))
    assert missing.exit_code == 1
    assert "no output named 'nothing'" in missing.stderr
