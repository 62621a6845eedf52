"""Crash safety on the local target: SIGKILL apply and destroy at every step.

The failpoints in ubench_iac/failpoints.py make the real ubench process kill
itself with SIGKILL at a chosen step. Afterwards the state must parse, every
running service must be in the state, and the next apply must create no
duplicate.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PYTHON, free_port
from ubench_iac.state import State
from ubench_iac.targets.local import LocalTarget

STACK = """\
name: crash
services:
  db:
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "127.0.0.1"]
    ports: {{http: {db}}}
    health: {{type: http, interval_s: 0.2, initial_delay_s: 0.5}}
    outputs: {{url: "http://{{{{ host }}}}:{{{{ port }}}}"}}
  app:
    depends_on: [db]
    command: ["{python}", "-m", "http.server", "{{{{ port }}}}", "--bind", "127.0.0.1"]
    environment: {{DB: "{{{{ services.db.outputs.url }}}}"}}
    ports: {{http: {app}}}
    health: {{type: http, interval_s: 0.2, initial_delay_s: 0.5}}
"""

REPEATS = 3


def _ubench(workdir: Path, *args: str, failpoint: str | None = None) -> int:
    env = {**os.environ}
    env.pop("UBENCH_FAILPOINT", None)
    if failpoint:
        env["UBENCH_FAILPOINT"] = failpoint
    result = subprocess.run(
        [sys.executable, "-m", "ubench_iac", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return result.returncode


def _state(workdir: Path) -> State:
    return State.model_validate_json((workdir / "state" / "crash.json").read_text())


def _live_tokens(state: State, workdir: Path) -> dict[str, int]:
    target = LocalTarget.__new__(LocalTarget)
    found = LocalTarget.find(target, f"ubench:{state.lineage}:")
    return {token: handle["pid"] for token, handle in found.items()}


def _check_consistent(workdir: Path) -> None:
    state = _state(workdir)
    live = _live_tokens(state, workdir)
    recorded = {r.token: r for r in state.resources}
    assert set(live) <= set(recorded), "a running service is missing from the state"
    addresses = [token.split(":")[2] for token in live]
    assert len(addresses) == len(set(addresses)), "two processes for one address"
    for token, pid in live.items():
        handle = recorded[token].handle
        # A pending record (no handle yet) still tracks its process by token.
        if handle is not None:
            assert handle["pid"] == pid


@pytest.fixture
def stack(workdir: Path) -> Path:
    path = workdir / "crash.yaml"
    path.write_text(STACK.format(python=PYTHON, db=free_port(), app=free_port()))
    yield path
    _ubench(workdir, "destroy", str(path), "--auto-approve")


@pytest.mark.parametrize("point", ["before-submit", "after-submit", "health-wait"])
def test_apply_killed_at_step_recovers(point: str, stack: Path, workdir: Path) -> None:
    for _ in range(REPEATS):
        code = _ubench(workdir, "apply", str(stack), "--auto-approve", failpoint=point)
        assert code == -signal.SIGKILL
        _check_consistent(workdir)

        assert _ubench(workdir, "apply", str(stack), "--auto-approve") == 0
        _check_consistent(workdir)
        state = _state(workdir)
        assert len(_live_tokens(state, workdir)) == 2
        assert all(r.healthy for r in state.resources)
        assert _ubench(workdir, "plan", str(stack), "--detailed-exitcode") == 0

        # Start the next round from nothing, so the failpoint is reached again.
        assert _ubench(workdir, "destroy", str(stack), "--auto-approve") == 0
        assert _live_tokens(_state(workdir), workdir) == {}


def test_destroy_killed_recovers(stack: Path, workdir: Path) -> None:
    for _ in range(REPEATS):
        assert _ubench(workdir, "apply", str(stack), "--auto-approve") == 0
        code = _ubench(
            workdir, "destroy", str(stack), "--auto-approve", failpoint="destroy"
        )
        assert code == -signal.SIGKILL
        _check_consistent(workdir)

        assert _ubench(workdir, "destroy", str(stack), "--auto-approve") == 0
        state = _state(workdir)
        assert state.resources == []
        assert _live_tokens(state, workdir) == {}


def test_orphan_is_stopped_by_next_apply(stack: Path, workdir: Path) -> None:
    assert _ubench(workdir, "apply", str(stack), "--auto-approve") == 0
    state_path = workdir / "state" / "crash.json"
    # Losing the record of a running service (a restored older state file, say)
    # leaves an orphan that still carries the stack's token.
    state = _state(workdir)
    lost = next(r for r in state.resources if r.service == "app")
    lost_pid = lost.handle["pid"] if lost.handle else 0
    state.resources = [r for r in state.resources if r.service != "app"]
    state_path.write_text(state.model_dump_json())
    # Change the spec so the orphan cannot be adopted as the new app.
    stack.write_text(stack.read_text().replace("DB:", "MODE: new, DB:"))

    assert _ubench(workdir, "apply", str(stack), "--auto-approve") == 0
    _check_consistent(workdir)
    live = _live_tokens(_state(workdir), workdir)
    assert lost_pid not in live.values()
    assert len(live) == 2
