"""Fixtures of the Slurm tests: the real cluster, command counting, an image.

The tests run against a real Slurm: the cluster that SLURM_CONF names, or else
a 3-node one that ``scripts/local-slurm up 3`` starts for the session and
stops at its end. Where no cluster can be had the tests skip with the reason;
with UBENCH_REQUIRE_SLURM=1 (set by CI) they fail instead.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from ubench_iac.errors import CommandError
from ubench_iac.slurm.client import CommandLineClient, SubmittedJob

REPO = Path(__file__).resolve().parent.parent
REQUIRE_ENV = "UBENCH_REQUIRE_SLURM"
START_TIMEOUT_S = 600
WAIT_STEP_S = 0.5

# A failed start is remembered, so the second test module does not try again.
_start_failure: list[str] = []


def unavailable(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it when CI requires Slurm."""
    message = f"Slurm tests cannot run: {reason}"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1 makes this a failure)", pytrace=False)
    pytest.skip(message)


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """The cluster the tests use, and whether this session started it."""

    conf: Path
    started: bool

    def command(self, *argv: str) -> str:
        """Run a Slurm command against the cluster and return its stdout."""
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "SLURM_CONF": str(self.conf)},
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{argv} failed with {result.returncode}: {result.stderr.strip()}"
            )
        return result.stdout

    def job_state(self, job_id: str) -> str:
        """Return the state squeue shows for ``job_id`` ('' if none)."""
        out = self.command("squeue", "--noheader", "--states=all", "--format=%i|%T")
        for line in out.splitlines():
            listed, _, state = line.strip().partition("|")
            if listed == job_id:
                return state
        return ""

    def wait_for_state(
        self, job_id: str, states: Sequence[str], timeout_s: float
    ) -> str:
        """Poll squeue until the job is in one of ``states``; return the last."""
        deadline = time.monotonic() + timeout_s
        state = self.job_state(job_id)
        while state not in states and time.monotonic() < deadline:
            time.sleep(WAIT_STEP_S)
            state = self.job_state(job_id)
        return state

    def live_job_names(self) -> list[str]:
        """Names of the pending, running and ending jobs (squeue's default)."""
        out = self.command("squeue", "--noheader", "--format=%j")
        return [line.strip() for line in out.splitlines() if line.strip()]


def wait_for_text(path: Path, text: str, timeout_s: float) -> str:
    """Poll a file a job writes until it contains ``text``; return its content."""
    deadline = time.monotonic() + timeout_s
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content or time.monotonic() >= deadline:
            return content
        time.sleep(WAIT_STEP_S)


def _start_local_cluster() -> Path:
    script = REPO / "scripts" / "local-slurm"
    try:
        result = subprocess.run(
            [str(script), "up", "3"],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        unavailable(f"scripts/local-slurm up 3 did not finish: {exc}")
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        unavailable(
            f"scripts/local-slurm up 3 exited {result.returncode} (it needs root "
            f"and apt):\n{tail}"
        )
    for line in result.stdout.splitlines():
        if line.startswith("export SLURM_CONF="):
            return Path(line.removeprefix("export SLURM_CONF=").strip())
    unavailable(f"scripts/local-slurm up 3 printed no SLURM_CONF: {result.stdout!r}")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The real Slurm cluster: SLURM_CONF's, or a local 3-node one."""
    if _start_failure:
        unavailable(_start_failure[0])
    started = False
    conf_env = os.environ.get("SLURM_CONF")
    if conf_env:
        conf = Path(conf_env)
        if not conf.is_file():
            _start_failure.append(f"SLURM_CONF={conf_env} is not a file")
            unavailable(_start_failure[0])
    else:
        try:
            conf = _start_local_cluster()
        except pytest.skip.Exception as exc:
            _start_failure.append(str(exc.msg))
            raise
        os.environ["SLURM_CONF"] = str(conf)
        started = True
    cluster = SlurmCluster(conf, started)
    try:
        cluster.command("sinfo", "--noheader")
    except (AssertionError, OSError, subprocess.TimeoutExpired) as exc:
        _start_failure.append(f"sinfo fails against {conf}: {exc}")
        unavailable(_start_failure[0])
    try:
        yield cluster
    finally:
        if started:
            subprocess.run(
                [str(REPO / "scripts" / "local-slurm"), "down"],
                capture_output=True,
                timeout=START_TIMEOUT_S,
                check=False,
            )
            os.environ.pop("SLURM_CONF", None)


@pytest.fixture(scope="session")
def busybox_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Charliecloud image directory with busybox, on the nodes' filesystem."""
    if shutil.which("ch-run") is None or not Path("/bin/busybox").exists():
        unavailable(
            "ch-run or busybox-static is missing; run scripts/install-system-deps"
        )
    image = tmp_path_factory.mktemp("images") / "busybox"
    subprocess.run(
        [str(REPO / "scripts" / "make-busybox-image"), str(image)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return image


@pytest.fixture
def slurm_commands(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Record the argv of every command a CommandLineClient runs, in order."""
    calls: list[list[str]] = []
    original = CommandLineClient.run

    def recording(
        self: CommandLineClient, argv: Sequence[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return original(self, argv, **kwargs)

    monkeypatch.setattr(CommandLineClient, "run", recording)
    return calls


def count(calls: Sequence[Sequence[str]], program: str) -> int:
    """Return how many recorded commands ran ``program``."""
    return sum(1 for argv in calls if argv and argv[0] == program)


@pytest.fixture
def down_controller_conf(slurm_cluster: SlurmCluster, tmp_path: Path) -> Path:
    """A copy of the cluster's slurm.conf whose slurmctld port has no listener."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    lines = []
    for line in slurm_cluster.conf.read_text().splitlines():
        if line.startswith("SlurmctldPort="):
            line = f"SlurmctldPort={port}"
        lines.append(line)
    conf = tmp_path / "down" / "slurm.conf"
    conf.parent.mkdir()
    conf.write_text("\n".join(lines) + "\n")
    return conf


class UncertainSbatchFake:
    """A fake at the outer boundary: a real client whose sbatch "times out".

    Its first ``fail_first`` submissions fail as if sbatch timed out waiting
    for slurmctld's reply. With ``really_submit`` the failed call has queued
    the job for real first (the reply was lost); without, nothing was queued.
    Everything else goes to the real client.
    """

    def __init__(
        self, real: CommandLineClient, *, really_submit: bool, fail_first: int = 1
    ) -> None:
        self.real = real
        self.really_submit = really_submit
        self.fail_first = fail_first
        self.submit_calls = 0
        self.queued: list[str] = []

    def submit(self, script_path: Path, env: Any) -> SubmittedJob:
        self.submit_calls += 1
        if self.submit_calls > self.fail_first:
            job = self.real.submit(script_path, env)
            self.queued.append(job.job_id)
            return job
        if self.really_submit:
            self.queued.append(self.real.submit(script_path, env).job_id)
        raise CommandError(
            ["sbatch", "--parsable", str(script_path)], None, timed_out=True
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def batch_script(
    path: Path, name: str, body: str = "sleep 300", **options: str
) -> Path:
    """Write a small batch script named ``name`` that logs beside itself."""
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}"]
    lines.append(f"#SBATCH --output={path.parent / (path.stem + '.log')}")
    lines += [
        f"#SBATCH --{key.replace('_', '-')}={value}" for key, value in options.items()
    ]
    lines.append(body)
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o700)
    return path
