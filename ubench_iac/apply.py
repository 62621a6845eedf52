"""Carry out a plan: stop what goes, start what comes, wait until healthy.

Deletions run first, dependents before their dependencies. Creations and
replacements run in dependency order, independent resources in parallel. Each
resource is recorded with its token before it is submitted, and its handle as
soon as the target returns it, so the next refresh finds a service that a crash
left running.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from loguru import logger

from ubench_iac.errors import TargetError, UbenchError
from ubench_iac.failpoints import failpoint
from ubench_iac.health import probe
from ubench_iac.loader import LoadedStack
from ubench_iac.plan import Action, Plan, ResourceChange, token_for
from ubench_iac.resolve import (
    DependencyView,
    DesiredResource,
    Resolver,
    file_sd_dir,
    render_outputs,
)
from ubench_iac.state import Endpoint, LocalBackend, ResourceState, State
from ubench_iac.status import JobStatus, Observation
from ubench_iac.targets.base import Handle, Submission, Target

LOG_TAIL_LINES = 20
REFRESH_RETRIES = 5


@dataclasses.dataclass(frozen=True)
class ApplyOptions:
    """Knobs of one apply or destroy run."""

    parallelism: int = 4
    poll_interval_s: float = 0.5
    max_poll_interval_s: float = 5.0
    stop_timeout_s: float | None = None
    """How long to wait for a stop before SIGKILL; default kill_wait_s + 20."""
    pending_timeout_s: float = 3600.0
    """How long a job may wait in the queue before apply gives up on it."""


class Outcome(StrEnum):
    """Outcome of apply for one resource."""

    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"
    INTERRUPTED = "interrupted"


@dataclasses.dataclass
class ResourceResult:
    address: str
    outcome: Outcome
    message: str = ""
    log_tail: str = ""


@dataclasses.dataclass
class ApplyReport:
    """Outcomes of every resource of a plan."""

    results: list[ResourceResult] = dataclasses.field(default_factory=list)

    @property
    def failed(self) -> list[ResourceResult]:
        return [r for r in self.results if r.outcome is Outcome.FAILED]

    @property
    def interrupted(self) -> bool:
        return any(r.outcome is Outcome.INTERRUPTED for r in self.results)

    def describe_failures(self) -> str:
        lines = []
        for result in self.results:
            if result.outcome in (Outcome.FAILED, Outcome.SKIPPED):
                lines.append(f"{result.address}: {result.outcome}: {result.message}")
            if result.log_tail:
                lines.append(f"  last lines of its log:\n{_indent(result.log_tail)}")
        return "\n".join(lines)


class ServiceFailed(UbenchError):
    """A service ended or stayed unhealthy while apply waited for it."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class Interrupted(UbenchError):
    """The user pressed Ctrl-C; nothing new is started."""


class Poller:
    """Share target refreshes between waiters: at most one query per round.

    The first waiter to call ``observe`` after the interval has passed refreshes
    all watched handles in one call, and the other waiters read its result. A
    failing refresh is retried with a counter before it becomes an error.
    """

    def __init__(self, target: Target, interval_s: float) -> None:
        self.target = target
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._watched: dict[str, Handle] = {}
        self._latest: dict[str, Observation] = {}
        self._last_round = 0.0
        self._failures = 0
        self.rounds = 0

    def watch(self, address: str, handle: Handle) -> None:
        with self._lock:
            self._watched[address] = handle
            self._latest.pop(address, None)

    def unwatch(self, address: str) -> None:
        with self._lock:
            self._watched.pop(address, None)
            self._latest.pop(address, None)

    def observe(self, address: str, *, fresh: bool = False) -> Observation | None:
        """Return a recent observation of ``address``, refreshing if it is due.

        ``fresh`` forces a new round, for a check that must postdate an event.
        """
        with self._lock:
            due = time.monotonic() - self._last_round >= self.interval_s
            if (fresh or due or address not in self._latest) and self._watched:
                self._refresh()
            return self._latest.get(address)

    def _refresh(self) -> None:
        addresses = list(self._watched)
        try:
            observations = self.target.refresh([self._watched[a] for a in addresses])
        except TargetError as exc:
            self._failures += 1
            if self._failures > REFRESH_RETRIES:
                raise
            logger.warning(
                "refresh failed (retry {}/{}): {}", self._failures, REFRESH_RETRIES, exc
            )
            self._last_round = time.monotonic()
            return
        self._failures = 0
        self.rounds += 1
        self._last_round = time.monotonic()
        self._latest.update(zip(addresses, observations, strict=True))


class Applier:
    """Apply one plan to one target, recording every step in the state."""

    def __init__(
        self,
        plan: Plan,
        loaded: LoadedStack | None,
        backend: LocalBackend,
        state: State,
        target: Target,
        options: ApplyOptions,
        interrupted: threading.Event | None = None,
    ) -> None:
        self.plan = plan
        self.loaded = loaded
        self.backend = backend
        self.state = state
        self.target = target
        self.options = options
        self.interrupted = interrupted or threading.Event()
        self.poller = Poller(target, options.poll_interval_s)
        self.report = ApplyReport()
        self._state_lock = threading.Lock()
        self.resolver = (
            Resolver(
                loaded,
                target.workdir,
                secret_key=state.lineage,
                recorded_ports={
                    r.address: dict(r.spec.get("ports", {})) for r in state.resources
                },
            )
            if loaded is not None
            else None
        )

    def run(self) -> ApplyReport:
        """Apply the plan; returns the report, raising only on internal errors."""
        deletions = [c for c in self.plan.changes if c.action is Action.DELETE]
        if deletions:
            self._delete(deletions)
        others = [c for c in self.plan.changes if c.action is not Action.DELETE]
        if others:
            self._create_and_update(others)
        return self.report

    # Deletions -------------------------------------------------------------

    def _delete(self, changes: Sequence[ResourceChange]) -> None:
        """Stop resources in waves, dependents before the resources they use."""
        remaining = {c.address: c for c in changes}
        while remaining:
            needed = {
                dep
                for c in remaining.values()
                if c.prior
                for dep in c.prior.dependencies
            }
            wave = [c for a, c in remaining.items() if a not in needed] or list(
                remaining.values()
            )
            self._stop_wave(wave)
            for change in wave:
                del remaining[change.address]

    def _stop_wave(self, wave: Sequence[ResourceChange]) -> None:
        if self.interrupted.is_set():
            for change in wave:
                self._result(change.address, Outcome.INTERRUPTED, "not stopped")
            return
        priors = [c.prior for c in wave if c.prior is not None]
        for prior in priors:
            logger.bind(address=prior.address).info(
                "{}: stopping ({})", prior.address, _describe_handle(prior.handle)
            )
        try:
            self.stop([p for p in priors if p.handle])
            failpoint("destroy")
        except UbenchError as exc:
            for change in wave:
                self._result(change.address, Outcome.FAILED, str(exc))
            return
        deposed = {c.address for c in wave if c.deposed}
        for prior in priors:
            if prior.address in deposed:
                # An orphan was never in the state: nothing to remove there.
                logger.bind(address=prior.address).info(
                    "{}: stopped orphan {}", prior.address, prior.token
                )
                self._result(prior.address, Outcome.DONE, "orphan stopped")
                continue
            self._unpublish_metrics(prior)
            with self._state_lock:
                self.state.remove(prior.address)
                self.backend.write(self.state)
            logger.bind(address=prior.address).info("{}: destroyed", prior.address)
            self._result(prior.address, Outcome.DONE, "destroyed")

    def stop(self, resources: Sequence[ResourceState]) -> None:
        """Cancel resources and wait until each has ended; SIGKILL if they linger."""
        handles = [r.handle for r in resources if r.handle]
        if not handles:
            return
        self.target.cancel(handles)
        timeout_s = self.options.stop_timeout_s
        if timeout_s is None:
            timeout_s = self.target.config.kill_wait_s + 20.0
        if self._wait_ended(handles, timeout_s):
            return
        kill: Callable[[Sequence[Handle]], None] | None = getattr(
            self.target, "kill", None
        )
        if kill is not None:
            logger.warning("{} services outlived their stop; killing", len(handles))
            kill(handles)
            if self._wait_ended(handles, 10.0):
                return
        raise TargetError(
            f"{len(handles)} services did not stop within {timeout_s:g} s"
        )

    def _wait_ended(self, handles: Sequence[Handle], timeout_s: float) -> bool:
        """Wait until every handle has ended, polling through the shared poller.

        Stops that run in parallel threads (replacements) and health waits all
        share the poller's one target query per round.
        """
        keys = [f"stopping {json.dumps(handle, sort_keys=True)}" for handle in handles]
        for key, handle in zip(keys, handles, strict=True):
            self.poller.watch(key, handle)
        try:
            deadline = time.monotonic() + timeout_s
            interval = self.options.poll_interval_s
            while True:
                observations = [self.poller.observe(key) for key in keys]
                if all(o is not None and o.status.is_terminal for o in observations):
                    return True
                if time.monotonic() >= deadline:
                    return False
                time.sleep(interval)
                interval = min(interval * 1.5, self.options.max_poll_interval_s)
        finally:
            for key in keys:
                self.poller.unwatch(key)

    # Creations and updates -------------------------------------------------

    def _create_and_update(self, changes: Sequence[ResourceChange]) -> None:
        pending = {c.address: c for c in changes}
        finished: dict[str, Outcome] = {}
        running: dict[concurrent.futures.Future[Outcome], str] = {}
        with concurrent.futures.ThreadPoolExecutor(
            max_workers=max(self.options.parallelism, 1)
        ) as pool:
            while pending or running:
                for address, change in list(pending.items()):
                    dependencies = change.desired.dependencies if change.desired else ()
                    unmet = [
                        d for d in dependencies if d in pending or _running(d, running)
                    ]
                    if unmet:
                        continue
                    del pending[address]
                    failed = [
                        d
                        for d in dependencies
                        if finished.get(d, Outcome.DONE) is not Outcome.DONE
                    ]
                    if failed:
                        finished[address] = Outcome.SKIPPED
                        self._result(
                            address,
                            Outcome.SKIPPED,
                            f"not started because {', '.join(failed)} did not "
                            "become healthy",
                        )
                        continue
                    running[pool.submit(self._apply_one, change)] = address
                if not running:
                    continue
                done, _ = concurrent.futures.wait(
                    running, return_when=concurrent.futures.FIRST_COMPLETED
                )
                for future in done:
                    finished[running.pop(future)] = future.result()

    def _apply_one(self, change: ResourceChange) -> Outcome:
        address = change.address
        try:
            if self.interrupted.is_set():
                raise Interrupted("not started: apply was interrupted")
            desired = self._final_desired(change)
            if change.action is Action.NO_OP:
                return Outcome.DONE
            if change.adopted:
                self._adopt(change, desired)
            elif change.action is Action.UPDATE:
                self._update(change, desired)
            else:
                self._create(change, desired)
            return self._result(address, Outcome.DONE, "")
        except Interrupted as exc:
            return self._result(address, Outcome.INTERRUPTED, str(exc))
        except ServiceFailed as exc:
            logger.bind(address=address).error("{}: {}", address, exc)
            return self._result(address, Outcome.FAILED, str(exc), exc.log_tail)
        except UbenchError as exc:
            logger.bind(address=address).error("{}: {}", address, exc)
            return self._result(address, Outcome.FAILED, str(exc))

    def _final_desired(self, change: ResourceChange) -> DesiredResource:
        """Resolve again with the real outputs of dependencies, now healthy."""
        assert change.desired is not None
        if self.resolver is None:
            return change.desired
        service = self.resolver.loaded.services[change.service]
        views: dict[str, DependencyView | None] = {}
        for name in service.service.depends_on or []:
            recorded = self.state.get(f"service.{name}[0]")
            if recorded is None or recorded.endpoint is None:
                views[name] = None
                continue
            views[name] = DependencyView(
                host=recorded.endpoint.host,
                port=recorded.endpoint.port,
                ports=recorded.endpoint.ports,
                outputs=recorded.outputs,
            )
        return self.resolver.resolve(change.service, change.index, views)

    def _update(self, change: ResourceChange, desired: DesiredResource) -> None:
        assert change.prior is not None
        record = change.prior.model_copy(deep=True)
        record.spec = desired.spec
        record.spec_hash = desired.spec_hash
        if record.endpoint is not None:
            record.outputs = render_outputs(
                desired, record.endpoint.host, self._variables()
            )
        self._save(record)
        self._publish_metrics(record)
        logger.bind(address=change.address).info(
            "{}: updated in place ({})", change.address, change.reason
        )

    def _adopt(self, change: ResourceChange, desired: DesiredResource) -> None:
        """Record a job found by its token, then wait for it like a new one."""
        assert change.prior is not None
        record = change.prior.model_copy(deep=True)
        record.dependencies = list(desired.dependencies)
        record.run_dir = str(desired.run_dir)
        record.script = str(self.target.script_path(desired))
        record.log = str(self.target.log_path(desired))
        self._save(record)
        logger.bind(address=change.address).info(
            "{}: adopted ({})", change.address, _describe_handle(record.handle)
        )
        self._await(record, desired)

    def _create(self, change: ResourceChange, desired: DesiredResource) -> None:
        address = change.address
        log = logger.bind(address=address)
        if change.action is Action.REPLACE and change.prior is not None:
            log.info(
                "{}: stopping for replacement ({})",
                address,
                _describe_handle(change.prior.handle),
            )
            self._unpublish_metrics(change.prior)
            self.stop([change.prior])
        elif change.prior is not None and change.prior.handle:
            # Recreating an ended service: make sure nothing of it lingers.
            self.stop([change.prior])

        token = token_for(self.state.lineage, address, desired.spec_hash)
        script = self.target.render(desired, token)
        record = ResourceState(
            address=address,
            service=desired.service,
            index=desired.index,
            target=self.target.kind,
            spec=desired.spec,
            spec_hash=desired.spec_hash,
            token=token,
            status="submitting",
            dependencies=list(desired.dependencies),
            run_dir=str(desired.run_dir),
            script=str(self.target.script_path(desired)),
            log=str(self.target.log_path(desired)),
        )
        self._save(record)
        submission = Submission(
            resource=desired,
            token=token,
            script=script,
            script_path=self.target.script_path(desired),
            log_path=self.target.log_path(desired),
        )
        failpoint("before-submit")
        record.handle = self.target.submit(submission)
        failpoint("after-submit")
        record.status = JobStatus.PENDING.value
        self._save(record)
        log.info("{}: submitted ({})", address, _describe_handle(record.handle))
        self._await(record, desired)

    def _await(self, record: ResourceState, desired: DesiredResource) -> None:
        """Wait until healthy, then record the endpoint and outputs."""
        address = record.address
        log = logger.bind(address=address)
        observation = self._wait_healthy(record, desired)
        host = self._endpoint_host(observation, desired)
        record.status = observation.status.value
        record.healthy = True
        record.endpoint = Endpoint(
            host=host,
            port=desired.primary_port,
            ports=desired.ports,
            nodes=list(observation.nodes),
        )
        record.outputs = render_outputs(desired, host, self._variables())
        self._save(record)
        self._publish_metrics(record)
        where = f" at {host}:{desired.primary_port}" if desired.primary_port else ""
        log.info("{}: healthy{}", address, where)

    def _wait_healthy(
        self, record: ResourceState, desired: DesiredResource
    ) -> Observation:
        """Wait for the job to run and its health check to pass, bounded."""
        assert record.handle is not None
        health = desired.spec["health"]
        self.poller.watch(record.address, record.handle)
        try:
            return self._wait_loop(record, desired, health)
        finally:
            self.poller.unwatch(record.address)

    def _endpoint_host(self, observation: Observation, desired: DesiredResource) -> str:
        """Return the host to reach: the job's first node unless the spec picks one."""
        index = desired.spec["slurm"].get("endpoint_node")
        if index is not None and len(observation.nodes) > index:
            return str(observation.nodes[index])
        return observation.host or self.target.predict_host(desired) or "localhost"

    def _wait_loop(
        self,
        record: ResourceState,
        desired: DesiredResource,
        health: dict[str, Any] | None,
    ) -> Observation:
        started = time.monotonic()
        running_since: float | None = None
        interval = (
            float(health["interval_s"]) if health else self.options.poll_interval_s
        )
        max_interval = max(interval * 4, 10.0)
        attempts = 0
        last_status = ""
        while True:
            if self.interrupted.is_set():
                raise Interrupted("apply was interrupted while waiting for health")
            observation = self.poller.observe(record.address)
            failpoint("health-wait")
            if observation is not None and observation.status.value != last_status:
                last_status = observation.status.value
                self._note_status(record, observation)
            if observation is None or observation.status in (
                JobStatus.PENDING,
                JobStatus.SUSPENDED,
            ):
                if time.monotonic() - started > self.options.pending_timeout_s:
                    raise ServiceFailed(
                        f"still waiting to start after "
                        f"{self.options.pending_timeout_s:g} s"
                        + (f" ({observation.reason})" if observation else "")
                    )
                time.sleep(self.options.poll_interval_s)
                continue
            if (
                observation.status.is_terminal
                or observation.status is JobStatus.STOPPING
            ):
                raise ServiceFailed(
                    f"ended before it became healthy: {observation.status.value}"
                    + (f" ({observation.reason})" if observation.reason else ""),
                    _log_tail(record.log),
                )
            if running_since is None:
                running_since = time.monotonic()
            if health is None or observation.ready is True:
                return observation
            if time.monotonic() - running_since < float(health["initial_delay_s"]):
                time.sleep(min(interval, self.options.poll_interval_s))
                continue
            host = self._endpoint_host(observation, desired)
            healthy, detail = probe(health, host)
            attempts += 1
            if healthy:
                return self._confirm_alive(record, detail)
            logger.debug(
                "{}: health probe {}/{} failed: {}",
                record.address,
                attempts,
                health["retries"],
                detail,
            )
            if attempts >= int(health["retries"]):
                raise ServiceFailed(
                    f"health check failed {attempts} times; last: {detail}",
                    _log_tail(record.log),
                )
            time.sleep(interval)
            interval = min(interval * 1.5, max_interval)

    def _confirm_alive(self, record: ResourceState, detail: str) -> Observation:
        """Check that the service still runs after its health check passed.

        Another process listening on the same port can pass the probe while the
        service itself has already failed to bind the port and exited.
        """
        observation = self.poller.observe(record.address, fresh=True)
        if observation is None or observation.status.is_terminal:
            ended = observation.status.value if observation else "gone"
            raise ServiceFailed(
                f"the health check passed ({detail}) but the service had ended "
                f"({ended}); another process may hold its port",
                _log_tail(record.log),
            )
        return observation

    def _note_status(self, record: ResourceState, observation: Observation) -> None:
        record.status = observation.status.value
        self._save(record)
        logger.bind(address=record.address).info(
            "{}: {}{}",
            record.address,
            observation.status.value,
            f" ({observation.reason})" if observation.reason else "",
        )

    # Prometheus file_sd targets -------------------------------------------

    def _metrics_file(self, record: ResourceState) -> Path:
        return (
            file_sd_dir(self.target.workdir) / f"{record.service}-{record.index}.json"
        )

    def _publish_metrics(self, record: ResourceState) -> None:
        """List a healthy service's metrics endpoint for Prometheus to scrape."""
        metrics = record.spec.get("metrics")
        path = self._metrics_file(record)
        if not metrics or record.endpoint is None:
            path.unlink(missing_ok=True)
            return
        entry = [
            {
                "targets": [f"{record.endpoint.host}:{metrics['port']}"],
                "labels": {
                    "job": record.service,
                    "ubench_stack": self.target.stack,
                    "ubench_address": record.address,
                    "__metrics_path__": metrics["path"],
                    **metrics["labels"],
                },
            }
        ]
        path.parent.mkdir(parents=True, exist_ok=True)
        # Prometheus may read the file at any moment: replace it atomically.
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(entry, indent=2) + "\n")
        os.replace(temporary, path)

    def _unpublish_metrics(self, record: ResourceState) -> None:
        self._metrics_file(record).unlink(missing_ok=True)

    # Helpers ---------------------------------------------------------------

    def _variables(self) -> dict[str, object]:
        return dict(self.loaded.stack.variables) if self.loaded else {}

    def _save(self, record: ResourceState) -> None:
        with self._state_lock:
            self.state.put(record)
            self.backend.write(self.state)

    def _result(
        self, address: str, outcome: Outcome, message: str, log_tail: str = ""
    ) -> Outcome:
        self.report.results.append(ResourceResult(address, outcome, message, log_tail))
        return outcome


def _running(
    address: str, running: dict[concurrent.futures.Future[Outcome], str]
) -> bool:
    return address in running.values()


def _describe_handle(handle: Handle | None) -> str:
    if not handle:
        return "no handle"
    if "job_id" in handle:
        return f"job {handle['job_id']}"
    if "pid" in handle:
        return f"pid {handle['pid']}"
    return ", ".join(f"{k} {v}" for k, v in handle.items())


def _log_tail(path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    if not path:
        return ""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def read_log_tail(path: str | None, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a log file, or '' if it is missing."""
    return _log_tail(path, lines)


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.splitlines())
