"""Failures on the local target: crashes, time limits, stale plans, locks."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PYTHON, Result, free_port, read_state
from ubench_iac.state import acquire_lock


def _http_service(name: str, port: int, extra: str = "") -> str:
    return f"""\
  {name}:
    command: ["{PYTHON}", "-m", "http.server", "{{{{ port }}}}", "--bind", "127.0.0.1"]
    ports: {{http: {port}}}
    health: {{type: http, interval_s: 0.2}}
{extra}"""


def test_failed_service_skips_dependents_and_reports_log(
    write_stack: Callable[[str], Path], workdir: Path, ubench: Callable[..., Result]
) -> None:
    stack = write_stack(
        "name: fail\nservices:\n"
        + _http_service("ok", free_port())
        + """\
  broken:
    command: |
      echo "loading model weights"
      echo "fatal: no GPU found" >&2
      exit 3
    ports: {http: 29999}
    health: {type: tcp, interval_s: 0.2}
  dependent:
    depends_on: [broken]
    command: ["sleep", "60"]
"""
    )
    result = ubench("apply", str(stack), "--auto-approve")

    assert result.exit_code == 1
    assert "service.broken[0]: failed: ended before it became healthy" in result.stderr
    assert "exited with status 3" in result.stderr
    assert "fatal: no GPU found" in result.stderr
    assert "service.dependent[0]: skipped" in result.stderr
    assert f"Whole logs: ubench logs SERVICE -s {stack}" in result.stderr
    assert "Traceback" not in result.stderr

    state = read_state(workdir / "state" / "fail.json")
    by_address = {r["address"]: r for r in state["resources"]}
    assert by_address["service.ok[0]"]["healthy"] is True
    assert by_address["service.broken[0]"]["healthy"] is False
    assert "service.dependent[0]" not in by_address

    planned = ubench("plan", str(stack))
    assert "service.broken[0] will be recreated" in planned.stdout
    assert "service.dependent[0] will be created" in planned.stdout


def test_time_limit_ends_service_as_timeout(
    write_stack: Callable[[str], Path], ubench: Callable[..., Result]
) -> None:
    stack = write_stack(
        """\
name: limited
target: {kind: local, kill_wait_s: 1}
services:
  short:
    command: ["sleep", "600"]
    resources: {time_limit: "0:02"}
"""
    )
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0
    deadline = time.monotonic() + 30
    planned = ubench("plan", str(stack), "--json")
    while "timeout" not in planned.stdout and time.monotonic() < deadline:
        time.sleep(0.5)
        planned = ubench("plan", str(stack), "--json")

    data = json.loads(planned.stdout)
    change = data["resource_changes"][0]
    assert change["change"]["actions"] == ["create"]
    assert change["action_reason"] == "replace_because_ended"
    assert "timeout" in change["ubench_reason"]
    assert data["resource_drift"][0]["change"]["after"]["status"] == "timeout"


def test_saved_plan_applies_and_stale_plan_is_rejected(
    write_stack: Callable[[str], Path], workdir: Path, ubench: Callable[..., Result]
) -> None:
    stack = write_stack("name: saved\nservices:\n" + _http_service("a", free_port()))
    saved = workdir / "a.plan"
    assert ubench("plan", str(stack), "-out", str(saved)).exit_code == 0
    assert os.stat(saved).st_mode & 0o777 == 0o600
    applied = ubench("apply", str(saved))
    assert applied.exit_code == 0, applied.output

    # The state moved on since the plan was saved: apply must refuse it.
    stale = ubench("apply", str(saved))
    assert stale.exit_code == 1
    assert "the state changed since the plan was made" in stale.stderr
    assert not (workdir / "state" / "saved.json.lock").exists()

    # Same serial, but the stack changed: also refused.
    stack.write_text(stack.read_text().replace("interval_s: 0.2", "interval_s: 0.4"))
    assert ubench("plan", str(stack), "-out", str(saved)).exit_code == 0
    stack.write_text(stack.read_text().replace("interval_s: 0.4", "interval_s: 0.5"))
    changed = ubench("apply", str(saved))
    assert changed.exit_code == 1
    assert "changed since the plan was made" in changed.stderr
    assert not (workdir / "state" / "saved.json.lock").exists()


def test_apply_fails_at_once_when_locked(
    write_stack: Callable[[str], Path], workdir: Path, ubench: Callable[..., Result]
) -> None:
    stack = write_stack("name: locked\nservices:\n" + _http_service("a", free_port()))
    lock_path = workdir / "state" / "locked.json.lock"
    holder = acquire_lock(lock_path, "apply")
    # Make the lock look held by a live process on this host: pid 1 always exists.
    data = json.loads(lock_path.read_text())
    data["pid"] = 1
    lock_path.write_text(json.dumps(data))

    result = ubench("apply", str(stack), "--auto-approve")
    assert result.exit_code == 1
    assert f"lock {holder.id} held by" in result.stderr
    assert "pid 1 (apply" in result.stderr
    assert f"ubench force-unlock {holder.id}" in result.stderr

    unlocked = ubench("force-unlock", holder.id, "-s", str(stack))
    assert unlocked.exit_code == 0
    assert not lock_path.exists()
    assert ubench("apply", str(stack), "--auto-approve").exit_code == 0


def test_secret_values_stay_out_of_outputs(
    write_stack: Callable[[str], Path],
    workdir: Path,
    ubench: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DEMO_TOKEN", "s3cr3t-from-env")
    stack = write_stack(
        """\
name: secrets
services:
  app:
    command: |
      printf '%s|%s' "$API_TOKEN" "$HF_TOKEN" > seen.txt
      exec sleep 600
    environment:
      API_TOKEN: {value: s3cr3t-inline, secret: true}
      HF_TOKEN: {from_env: DEMO_TOKEN, secret: true}
"""
    )
    planned = ubench("plan", str(stack), "--json", "-out", str(workdir / "p.plan"))
    applied = ubench("apply", str(stack), "--auto-approve")
    assert applied.exit_code == 0, applied.output
    time.sleep(0.5)
    assert ubench("plan", str(stack), "--detailed-exitcode").exit_code == 0

    run_dir = workdir / "state" / "secrets" / "app-0"
    texts = {
        "plan": planned.output,
        "apply": applied.output,
        "saved plan": (workdir / "p.plan").read_text(),
        "state": (workdir / "state" / "secrets.json").read_text(),
        "script": (run_dir / "job.sh").read_text(),
    }
    for name, text in texts.items():
        assert "s3cr3t" not in text, name
    assert (run_dir / "seen.txt").read_text() == "s3cr3t-inline|s3cr3t-from-env"
    assert "s3cr3t-inline" in (run_dir / "secrets.env").read_text()
    assert os.stat(run_dir / "secrets.env").st_mode & 0o777 == 0o600
    assert os.stat(workdir / "state" / "secrets.json").st_mode & 0o777 == 0o600
