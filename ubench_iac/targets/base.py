"""The contract every target implements: render, submit, refresh, cancel, logs.

A target turns a resolved resource into something that runs (a detached process
group, a Slurm job, a Kubernetes workload) and reports on it. ``refresh`` and
``cancel`` take every handle of a stack at once, so a target can serve them
with one query (one ``squeue``, one API list call) whatever the number of services.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ubench_iac.models import TargetConfig
from ubench_iac.render import ScriptPaths, env_file_text, render_batch_script
from ubench_iac.resolve import DesiredResource
from ubench_iac.status import Observation

Handle = dict[str, Any]
"""A target's record of one submitted resource; JSON data kept in the state."""


@dataclasses.dataclass(frozen=True)
class Submission:
    """Everything a target needs to start one resource."""

    resource: DesiredResource
    token: str
    """Idempotency token: ``ubench:<lineage>:<address>:<spec hash>``."""
    script: str
    """The rendered batch script or manifest."""
    script_path: Path
    log_path: Path


@dataclasses.dataclass(frozen=True)
class Scan:
    """Result of one refresh of a stack: its handles, and what carries its token."""

    observations: list[Observation]
    """One observation per handle asked about, in order."""
    found: dict[str, tuple[Handle, Observation]]
    """Live jobs or processes carrying a token with the stack's prefix."""


class Target(abc.ABC):
    """One place services run; subclasses register themselves by ``kind``."""

    kind: ClassVar[str]
    registry: ClassVar[dict[str, type[Target]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Target.registry[cls.kind] = cls

    def __init__(self, config: TargetConfig, stack: str, workdir: Path) -> None:
        self.config = config
        self.stack = stack
        self.workdir = workdir
        """Directory holding each resource's script, log and run directory."""

    def run_dir(self, service: str, index: int) -> Path:
        """Return the directory of one resource's script, log and data."""
        return self.workdir / f"{service}-{index}"

    def script_path(self, resource: DesiredResource) -> Path:
        return resource.run_dir / "job.sh"

    def log_path(self, resource: DesiredResource) -> Path:
        return resource.run_dir / "service.log"

    @abc.abstractmethod
    def predict_host(self, resource: DesiredResource | None = None) -> str | None:
        """Return the host a resource will listen on, or None if unknown until run."""

    @abc.abstractmethod
    def render(self, resource: DesiredResource, token: str) -> str:
        """Render the script or manifest of one resource: a pure function."""

    @abc.abstractmethod
    def submit(self, submission: Submission) -> Handle:
        """Start one resource and return its handle as soon as the target has it."""

    @abc.abstractmethod
    def refresh(self, handles: Sequence[Handle]) -> list[Observation]:
        """Observe every handle with one query; the result is in the same order.

        Raises TargetError when the target cannot be asked: a failed query is
        never reported as services being gone.
        """

    @abc.abstractmethod
    def cancel(self, handles: Sequence[Handle]) -> None:
        """Request every handle to stop; returns without waiting."""

    @abc.abstractmethod
    def find(self, prefix: str) -> Mapping[str, Handle]:
        """Return the live handles whose token starts with ``prefix``, by token."""

    def scan(self, handles: Sequence[Handle], prefix: str) -> Scan:
        """Observe ``handles`` and find live ones whose token has ``prefix``.

        The default makes two queries; a target whose single query returns both
        (one squeue call listing the user's jobs) overrides it.
        """
        observations = self.refresh(handles) if handles else []
        found = dict(self.find(prefix))
        observed_found = self.refresh(list(found.values())) if found else []
        return Scan(
            observations=observations,
            found={
                token: (handle, observation)
                for (token, handle), observation in zip(
                    found.items(), observed_found, strict=True
                )
            },
        )

    def logs(self, handle: Handle, lines: int) -> str | None:
        """Return the last ``lines`` of a service's log from the target.

        None means the log is the file recorded in the state (local, Slurm).
        """
        return None

    def test_submit(self, submission: Submission) -> str | None:
        """Ask the scheduler whether it would accept a job; return its objection.

        Targets without a dry run (the local one) accept everything.
        """
        return None


class BatchScriptTarget(Target):
    """A target that runs the rendered batch script (local processes, Slurm)."""

    def paths(self, resource: DesiredResource) -> ScriptPaths:
        return ScriptPaths(
            script=self.script_path(resource),
            log=self.log_path(resource),
            env_file=resource.run_dir / "secrets.env",
        )

    def render(self, resource: DesiredResource, token: str) -> str:
        return render_batch_script(resource, self.config, token, self.paths(resource))

    def write_job_files(self, submission: Submission) -> ScriptPaths:
        """Write the script (0700) and its secrets file (0600) into the run dir.

        The secrets file is written first, so the script never runs without it.
        """
        resource = submission.resource
        paths = self.paths(resource)
        resource.run_dir.mkdir(parents=True, exist_ok=True)
        write_private(paths.env_file, env_file_text(resource))
        write_private(paths.script, submission.script, mode=0o700)
        return paths


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to a file only its owner can read, whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def get_target(config: TargetConfig, stack: str, workdir: Path) -> Target:
    """Build the target named by ``config.kind``."""
    # Importing a target's module registers its class.
    importlib.import_module(f"ubench_iac.targets.{config.kind}")
    return Target.registry[config.kind](config, stack, workdir)
