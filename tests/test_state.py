"""The state file and its lock: atomic writes, serials, backups, holders."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import PYTHON, free_port
from ubench_iac.errors import LockError, StateError
from ubench_iac.state import (
    LocalBackend,
    ResourceState,
    State,
    acquire_lock,
    force_unlock,
    read_lock,
    release_lock,
)


def _resource(address: str = "service.a[0]") -> ResourceState:
    return ResourceState(
        address=address,
        service="a",
        index=0,
        target="local",
        spec={},
        spec_hash="sha256:0",
        token="ubench:x:service.a[0]:0",
    )


def test_state_write_increments_serial_and_keeps_backup(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s.json")
    state = State(stack="s")
    lineage = state.lineage
    backend.write(state)
    state.put(_resource())
    backend.write(state)

    current = backend.read()
    assert current is not None
    assert current.serial == 2
    assert current.lineage == lineage
    backup = State.model_validate_json(backend.backup_path.read_text())
    assert backup.serial == 1
    assert backup.resources == []
    assert os.stat(backend.path).st_mode & 0o777 == 0o600
    assert os.stat(backend.backup_path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_state_corrupt_file_names_backup(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s.json")
    backend.path.write_text("{not json")
    with pytest.raises(StateError, match=r"s\.json\.backup"):
        backend.read()


def test_state_of_other_stack_rejected(tmp_path: Path, workdir: Path) -> None:
    from ubench_iac.workspace import Workspace

    stack = tmp_path / "b.yaml"
    stack.write_text("name: b\nservices:\n  a: {command: [sleep, '1']}\n")
    LocalBackend(tmp_path / "other.json").write(State(stack="a"))
    workspace = Workspace.open(stack, tmp_path / "other.json")
    with pytest.raises(StateError, match="belongs to stack 'a'"):
        workspace.read_state()


def test_lock_second_holder_fails_naming_first(tmp_path: Path) -> None:
    path = tmp_path / "s.json.lock"
    first = acquire_lock(path, "apply")
    with pytest.raises(LockError) as caught:
        acquire_lock(path, "destroy")
    message = str(caught.value)
    assert first.id in message
    assert f"pid {os.getpid()}" in message
    assert "(apply," in message
    assert os.stat(path).st_mode & 0o777 == 0o600
    release_lock(path, first.id)
    assert not path.exists()


def test_lock_of_dead_process_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.json.lock"
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = acquire_lock(path, "apply")
    data = json.loads(path.read_text())
    data["pid"] = child.pid
    path.write_text(json.dumps(data))

    taken = acquire_lock(path, "apply")
    assert taken.id != stale.id
    holder = read_lock(path)
    assert holder is not None
    assert holder.id == taken.id


def test_lock_from_other_host_needs_expired_lease(tmp_path: Path) -> None:
    path = tmp_path / "s.json.lock"
    acquire_lock(path, "apply")
    data = json.loads(path.read_text())
    data["host"] = socket.gethostname() + "-elsewhere"
    path.write_text(json.dumps(data))
    with pytest.raises(LockError, match="elsewhere"):
        acquire_lock(path, "apply")

    data["expires_at"] = time.time() - 1
    path.write_text(json.dumps(data))
    taken = acquire_lock(path, "apply")
    assert taken.host == socket.gethostname()


def test_force_unlock_checks_id(tmp_path: Path) -> None:
    path = tmp_path / "s.json.lock"
    held = acquire_lock(path, "apply")
    with pytest.raises(LockError, match="does not match"):
        force_unlock(path, "wrong-id")
    assert force_unlock(path, held.id).id == held.id
    assert not path.exists()


def test_backend_lock_released_on_error(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path / "s.json")
    with pytest.raises(RuntimeError), backend.lock("apply"):
        raise RuntimeError("boom")
    assert not backend.lock_path.exists()


SLOW_STACK = """\
name: slow
services:
  quick:
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "127.0.0.1"]
    ports: {{http: {quick}}}
    health: {{type: http, interval_s: 0.2}}
  slow:
    command: ["sleep", "600"]
    ports: {{http: {slow}}}
    health: {{type: tcp, interval_s: 0.5, retries: 1000}}
  after:
    depends_on: [slow]
    command: ["sleep", "600"]
"""


def _start_apply(workdir: Path) -> subprocess.Popen[str]:
    (workdir / "slow.yaml").write_text(
        SLOW_STACK.format(python=PYTHON, quick=free_port(), slow=free_port())
    )
    return subprocess.Popen(
        [sys.executable, "-m", "ubench_iac", "apply", "slow.yaml", "--auto-approve"],
        cwd=workdir,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_state(workdir: Path, addresses: set[str]) -> State:
    path = workdir / "state" / "slow.json"
    for _ in range(200):
        if path.exists():
            state = State.model_validate_json(path.read_text())
            handled = {r.address for r in state.resources if r.handle}
            if addresses <= handled:
                return state
        time.sleep(0.1)
    raise AssertionError(f"{addresses} never recorded in {path}")


def test_interrupt_once_stops_new_work(workdir: Path) -> None:
    process = _start_apply(workdir)
    try:
        _wait_for_state(workdir, {"service.quick[0]", "service.slow[0]"})
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    state = State.model_validate_json((workdir / "state" / "slow.json").read_text())
    assert {r.address for r in state.resources} == {
        "service.quick[0]",
        "service.slow[0]",
    }
    assert not (workdir / "state" / "slow.json.lock").exists()
    subprocess.run(
        [sys.executable, "-m", "ubench_iac", "destroy", "slow.yaml", "--auto-approve"],
        cwd=workdir,
        check=True,
        capture_output=True,
    )


def test_interrupt_twice_exits_at_once(workdir: Path) -> None:
    process = _start_apply(workdir)
    try:
        _wait_for_state(workdir, {"service.slow[0]"})
        process.send_signal(signal.SIGINT)
        time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "interrupted twice" in stderr
    State.model_validate_json((workdir / "state" / "slow.json").read_text())
    assert not (workdir / "state" / "slow.json.lock").exists()
    subprocess.run(
        [sys.executable, "-m", "ubench_iac", "destroy", "slow.yaml", "--auto-approve"],
        cwd=workdir,
        check=True,
        capture_output=True,
    )
