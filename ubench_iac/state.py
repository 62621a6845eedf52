"""The state file: what ubench deployed, and the lock that guards it.

The local backend keeps one JSON file per stack. Every write goes to a temporary
file in the same directory, is fsynced, and replaces the old file with
``os.replace``, so a reader sees either the old or the new state, never a torn
one. The previous snapshot is kept as ``<state>.backup``. Files are mode 0600.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
from loguru import logger

from ubench_iac.errors import LockError, StateError

STATE_VERSION = 1


def now() -> str:
    """Return the current UTC time as an ISO 8601 string."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Endpoint(pydantic.BaseModel):
    """Network location of a running service."""

    host: str
    port: int | None = None
    ports: dict[str, int] = {}
    nodes: list[str] = []


class ResourceState(pydantic.BaseModel):
    """One deployed replica of a service, as last recorded."""

    address: str
    service: str
    index: int
    target: str
    spec: dict[str, Any]
    spec_hash: str
    token: str
    """Idempotency token carried by the job or process: finds it after a crash."""
    handle: dict[str, Any] | None = None
    """Target's handle: a job id, or a pid with its start time; None if pending."""
    status: str = "pending"
    healthy: bool = False
    endpoint: Endpoint | None = None
    outputs: dict[str, str] = {}
    dependencies: list[str] = []
    run_dir: str | None = None
    script: str | None = None
    log: str | None = None
    created_at: str = pydantic.Field(default_factory=now)
    updated_at: str = pydantic.Field(default_factory=now)


class State(pydantic.BaseModel):
    """Contents of a state file."""

    version: int = STATE_VERSION
    serial: int = 0
    lineage: str = pydantic.Field(default_factory=lambda: str(uuid.uuid4()))
    stack: str
    target: str = "local"
    resources: list[ResourceState] = []

    def get(self, address: str) -> ResourceState | None:
        return next((r for r in self.resources if r.address == address), None)

    def put(self, resource: ResourceState) -> None:
        """Insert or replace the resource with the same address."""
        resource.updated_at = now()
        for i, existing in enumerate(self.resources):
            if existing.address == resource.address:
                self.resources[i] = resource
                return
        self.resources.append(resource)
        self.resources.sort(key=lambda r: (r.service, r.index))

    def remove(self, address: str) -> None:
        self.resources = [r for r in self.resources if r.address != address]

    def outputs(self) -> dict[str, str]:
        """Return every recorded output as ``SERVICE.KEY`` (``SERVICE[i].KEY``)."""
        flat: dict[str, str] = {}
        for resource in self.resources:
            prefix = (
                resource.service
                if resource.index == 0
                else f"{resource.service}[{resource.index}]"
            )
            for key, value in resource.outputs.items():
                flat[f"{prefix}.{key}"] = value
        return flat


class LocalBackend:
    """A state file on a local or shared file system."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def backup_path(self) -> Path:
        return self.path.with_name(self.path.name + ".backup")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def read(self) -> State | None:
        """Return the recorded state, or None when there is no state file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{self.path}: cannot read the state file: {exc}") from exc
        try:
            return State.model_validate_json(text)
        except pydantic.ValidationError as exc:
            raise StateError(
                f"{self.path}: the state file is invalid ({exc.error_count()} "
                f"errors, first: {exc.errors()[0]['msg']}); the previous snapshot "
                f"is {self.backup_path}"
            ) from exc

    def write(self, state: State) -> None:
        """Increment the serial and replace the state file atomically."""
        state.serial += 1
        text = state.model_dump_json(indent=2) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            _atomic_write(self.backup_path, self.path.read_bytes())
        _atomic_write(self.path, text.encode())
        logger.debug("wrote state {} serial {}", self.path, state.serial)

    def delete(self) -> None:
        """Remove the state file and its backup (after a full destroy)."""
        for path in (self.path, self.backup_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    @contextlib.contextmanager
    def lock(self, operation: str) -> Iterator[LockInfo]:
        """Hold the exclusive state lock for ``operation``; release on every exit.

        A heartbeat thread renews the lock's lease while it is held, so a run on
        another host (the state on NFS) can tell a live holder from a dead one.
        """
        info = acquire_lock(self.lock_path, operation)
        stop = threading.Event()
        heartbeat = threading.Thread(
            target=_renew_lease, args=(self.lock_path, info, stop), daemon=True
        )
        heartbeat.start()
        try:
            yield info
        finally:
            stop.set()
            heartbeat.join()
            release_lock(self.lock_path, info.id)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


LEASE_S = 300.0
"""How long a lock stays valid without a heartbeat, seen from another host."""


class LockInfo(pydantic.BaseModel):
    """Holder of a state lock, as written into the lock file."""

    id: str
    pid: int
    host: str
    user: str
    operation: str
    created_at: str
    expires_at: float = 0.0
    """Unix time after which a holder on another host counts as dead."""

    def describe(self) -> str:
        return (
            f"lock {self.id} held by {self.user}@{self.host} pid {self.pid} "
            f"({self.operation}, since {self.created_at})"
        )


def acquire_lock(path: Path, operation: str) -> LockInfo:
    """Create the lock file exclusively, taking over a lock whose holder died.

    O_CREAT|O_EXCL is atomic on local file systems and on NFSv3 and later.
    A holder counts as dead only when it ran on this host and its pid is gone.
    """
    info = LockInfo(
        id=str(uuid.uuid4()),
        pid=os.getpid(),
        host=socket.gethostname(),
        user=_user(),
        operation=operation,
        created_at=now(),
        expires_at=time.time() + LEASE_S,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            holder = read_lock(path)
            if holder is not None and not _holder_is_dead(holder):
                raise LockError(
                    f"the state is locked: {holder.describe()}. If no other ubench "
                    f"is running, run: ubench force-unlock {holder.id}"
                ) from None
            logger.warning(
                "taking over the state lock of a dead process: {}",
                holder.describe() if holder else "unreadable lock file",
            )
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(info.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())
        return info
    raise LockError(f"could not acquire the state lock {path}: another run took it")


def read_lock(path: Path) -> LockInfo | None:
    """Return the lock holder, or None when the lock file is missing or unreadable."""
    try:
        return LockInfo.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, pydantic.ValidationError):
        return None


def release_lock(path: Path, lock_id: str) -> None:
    """Remove the lock file if it still belongs to ``lock_id``."""
    holder = read_lock(path)
    if holder is None or holder.id != lock_id:
        logger.warning("state lock {} was taken over by another run; left as is", path)
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def force_unlock(path: Path, lock_id: str) -> LockInfo:
    """Remove the lock ``lock_id`` for a user who knows its holder is dead."""
    holder = read_lock(path)
    if holder is None:
        raise LockError(f"no lock to remove at {path}")
    if holder.id != lock_id:
        raise LockError(
            f"lock id {lock_id} does not match the current {holder.describe()}"
        )
    path.unlink()
    return holder


def _renew_lease(path: Path, info: LockInfo, stop: threading.Event) -> None:
    """Push the lease forward every third of its length until ``stop`` is set."""
    renewals = 0
    while not stop.wait(LEASE_S / 3):
        holder = read_lock(path)
        if holder is None or holder.id != info.id:
            logger.warning("lost the state lock {} to another run", path)
            return
        info.expires_at = time.time() + LEASE_S
        # Only the holder rewrites its own lock file, and a rename is atomic.
        _atomic_write(path, info.model_dump_json().encode())
        renewals += 1
        logger.debug("renewed lock {} ({} times)", info.id, renewals)


def _holder_is_dead(holder: LockInfo) -> bool:
    if holder.host != socket.gethostname():
        # Another host's pids mean nothing here: only an expired lease counts.
        return 0 < holder.expires_at < time.time()
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def state_json(state: State) -> dict[str, Any]:
    """Return the state as plain JSON data."""
    return state.model_dump(mode="json")
