"""Shared fixtures: a temporary working directory and an in-process CLI runner."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ubench_iac.cli import main

PYTHON = sys.executable
"""The interpreter of the test run: services started by tests use it."""


@dataclasses.dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in its own directory, so state/ is private to it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("UBENCH_STATE_DIR", raising=False)
    monkeypatch.delenv("UBENCH_STACK", raising=False)
    return tmp_path


@pytest.fixture
def ubench(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Run the ubench CLI in this process and return its exit code and output."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_state(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.fixture
def write_stack(workdir: Path, cleanup_stacks: list[str]) -> Callable[[str], Path]:
    """Write stack.yaml in the test's directory; destroy it after the test."""

    def write(body: str) -> Path:
        path = workdir / "stack.yaml"
        path.write_text(body)
        if str(path) not in cleanup_stacks:
            cleanup_stacks.append(str(path))
        return path

    return write


@pytest.fixture
def cleanup_stacks(ubench: Callable[..., Result]) -> Iterator[list[str]]:
    """Destroy the stacks a test registers, even when the test fails."""
    stacks: list[str] = []
    yield stacks
    for stack in stacks:
        ubench("destroy", stack, "--auto-approve")


GOLDEN = Path(__file__).parent / "golden"


def assert_golden(name: str, text: str) -> None:
    """Compare with tests/golden/NAME; UBENCH_UPDATE_GOLDEN=1 re-records it."""
    path = GOLDEN / name
    if os.environ.get("UBENCH_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    expected = path.read_text() if path.exists() else ""
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                text.splitlines(keepends=True),
                f"golden/{name}",
                "rendered",
            )
        )
        pytest.fail(
            f"rendering differs from tests/golden/{name}; if the change is "
            f"intended, re-record with UBENCH_UPDATE_GOLDEN=1:\n{diff}"
        )
