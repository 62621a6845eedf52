"""Planning details on the local target: canonical values, replicas, errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PYTHON, Result, free_port, read_state


def test_equivalent_spellings_plan_no_changes(
    write_stack: Callable[[str], Path], ubench: Callable[..., Result]
) -> None:
    port = free_port()
    stack = write_stack(
        f"""\
name: canon
services:
  web:
    command: |
      exec "{PYTHON}" -m http.server {port} --bind 127.0.0.1
    ports: {{http: {port}}}
    environment: {{WORKERS: 4, MODE: fast}}
    resources: {{time_limit: 90, mem_gb: 2}}
    health: {{type: http, interval_s: 0.2}}
"""
    )
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    # Same values, other spellings: string versus int, H:MM:SS versus minutes,
    # float versus int, key order, and no trailing newline on the script.
    stack.write_text(
        f"""\
name: canon
services:
  web:
    health: {{interval_s: 0.2, type: http}}
    resources: {{mem_gb: 2.0, time_limit: "1:30:00"}}
    environment: {{MODE: fast, WORKERS: "4"}}
    ports: {{http: {port}}}
    command: "exec \\"{PYTHON}\\" -m http.server {port} --bind 127.0.0.1"
"""
    )
    planned = ubench("plan", str(stack), "--detailed-exitcode")
    assert planned.exit_code == 0, planned.stdout


def test_replicas_get_own_addresses_and_ports(
    write_stack: Callable[[str], Path], workdir: Path, ubench: Callable[..., Result]
) -> None:
    base = free_port()
    stack = write_stack(
        f"""\
name: replicas
services:
  web:
    replicas: 3
    command: ["{PYTHON}", "-m", "http.server", "{{{{ port }}}}", "--bind", "127.0.0.1"]
    ports: {{http: {base}}}
    health: {{type: http, interval_s: 0.2}}
    outputs: {{url: "http://{{{{ host }}}}:{{{{ port }}}}"}}
"""
    )
    applied = ubench("apply", str(stack), "--auto-approve")
    assert applied.exit_code == 0, applied.output
    state = read_state(workdir / "state" / "replicas.json")
    ports = {r["address"]: r["endpoint"]["port"] for r in state["resources"]}
    assert ports == {
        "service.web[0]": base,
        "service.web[1]": base + 1,
        "service.web[2]": base + 2,
    }
    outputs = json.loads(ubench("output", "--json", "-s", str(stack)).stdout)
    assert outputs["web[2].url"] == f"http://127.0.0.1:{base + 2}"

    stack.write_text(stack.read_text().replace("replicas: 3", "replicas: 1"))
    planned = ubench("plan", str(stack))
    assert "service.web[2] will be destroyed (no longer in the stack file)" in (
        planned.stdout
    )
    assert "Plan: 0 to add, 0 to change, 0 to replace, 2 to destroy." in (
        planned.stdout
    )


def test_refresh_failure_is_an_error_not_drift(
    write_stack: Callable[[str], Path], workdir: Path, ubench: Callable[..., Result]
) -> None:
    stack = write_stack("name: remote\nservices:\n  a: {command: [sleep, '600']}\n")
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    path = workdir / "state" / "remote.json"
    state = json.loads(path.read_text())
    state["resources"][0]["handle"]["host"] = "login-node-2"
    path.write_text(json.dumps(state))

    planned = ubench("plan", str(stack), "--detailed-exitcode")
    assert planned.exit_code == 1
    assert "was started on host login-node-2" in planned.stderr
    assert "will be recreated" not in planned.stdout

    state["resources"][0]["handle"]["host"] = __import__("socket").gethostname()
    path.write_text(json.dumps(state))


@pytest.mark.skipif(shutil.which("apptainer") is not None, reason="apptainer exists")
def test_apptainer_missing_is_clear(
    write_stack: Callable[[str], Path], ubench: Callable[..., Result]
) -> None:
    stack = write_stack(
        """\
name: noapptainer
services:
  redis:
    image: docker://redis:7.2.4
    command: [redis-server]
"""
    )
    assert ubench("validate", str(stack)).exit_code == 0
    applied = ubench("apply", str(stack), "--auto-approve")
    assert applied.exit_code == 1
    assert "needs 'apptainer', which is not installed on this machine" in (
        applied.stderr
    )
    assert "runtime: host" in applied.stderr


def test_second_apply_fails_while_first_runs(
    write_stack: Callable[[str], Path], workdir: Path, ubench: Callable[..., Result]
) -> None:
    stack = write_stack(
        f"""\
name: twice
services:
  slow:
    command: ["sleep", "600"]
    ports: {{http: {free_port()}}}
    health: {{type: tcp, interval_s: 0.5, retries: 1000}}
"""
    )
    first = subprocess.Popen(
        [sys.executable, "-m", "ubench_iac", "apply", str(stack), "--auto-approve"],
        cwd=workdir,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = workdir / "state" / "twice.json.lock"
        for _ in range(100):
            if lock.exists():
                break
            time.sleep(0.1)
        second = ubench("apply", str(stack), "--auto-approve")
        assert second.exit_code == 1
        assert f"pid {first.pid} (apply" in second.stderr
        assert "force-unlock" in second.stderr
    finally:
        first.kill()
        first.wait()


def test_apply_without_tty_needs_approval(
    write_stack: Callable[[str], Path], ubench: Callable[..., Result]
) -> None:
    stack = write_stack("name: ask\nservices:\n  a: {command: [sleep, '600']}\n")
    result = ubench("apply", str(stack))
    assert result.exit_code == 1
    assert "--auto-approve" in result.stderr


def test_expiring_service_listed_and_renewed(
    write_stack: Callable[[str], Path], ubench: Callable[..., Result]
) -> None:
    stack = write_stack(
        """\
name: expiring
services:
  short:
    command: ["sleep", "3600"]
    resources: {time_limit: 20}
  long:
    command: ["sleep", "3600"]
    resources: {time_limit: "2:00:00"}
"""
    )
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    status = json.loads(ubench("status", str(stack), "--json").stdout)
    left = {row["address"]: row["time_left"] for row in status}
    assert left["service.short[0]"].startswith("19m")

    listed = ubench("plan", str(stack), "--expiring-within", "30")
    assert "reaching their time limit within 30 min" in listed.stdout
    assert "service.short[0]: 19 min" in listed.stdout
    assert "service.long[0]" not in listed.stdout.split("No changes")[0]
    assert "Run 'ubench plan --renew'" in listed.stdout

    renewed = ubench("plan", str(stack), "--renew", "--json")
    expiring = json.loads(renewed.stdout)["ubench_expiring"]
    assert list(expiring) == ["service.short[0]"]
    changes = json.loads(renewed.stdout)["resource_changes"]
    actions = {c["address"]: c["change"]["actions"] for c in changes}
    assert actions["service.short[0]"] == ["delete", "create"]
    assert actions["service.long[0]"] == ["no-op"]
    short = next(c for c in changes if c["address"] == "service.short[0]")
    assert short["action_reason"] == "replace_by_request"

    summary = ubench("plan", str(stack), "--renew")
    assert "Requested: 0.33 node-hours, 0.00 GPU-hours." in summary.stdout

    renewing = ubench("apply", str(stack), "--renew", "--auto-approve")
    assert renewing.exit_code == 0, renewing.output
    assert "service.short[0]: stopping for replacement" in renewing.stderr
    assert "service.long[0]: stopping" not in renewing.stderr


def test_port_in_use_fails_before_start(
    write_stack: Callable[[str], Path], ubench: Callable[..., Result]
) -> None:
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        stack = write_stack(
            f"""\
name: taken
services:
  web:
    command: ["{PYTHON}", "-m", "http.server", "{port}", "--bind", "127.0.0.1"]
    ports: {{http: {port}}}
    health: {{type: tcp, interval_s: 0.2}}
"""
        )
        result = ubench("apply", str(stack), "--auto-approve")
    assert result.exit_code == 1
    assert f"port http={port} is already in use" in result.stderr
    assert "healthy" not in result.stderr
