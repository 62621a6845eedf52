"""Mapping of Kubernetes Job and pod status to ubench's JobStatus."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from ubench_iac.k8s.manifest import CONTAINER_NAME, DEFAULT_NAMESPACE, service_host
from ubench_iac.status import JobStatus, Observation

_FATAL_WAITING_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
    }
)
"""Container waiting reasons that do not clear without a change to the Job.

ErrImagePull is left out because the first failed pull may be a passing
registry error, and the kubelet turns a lasting one into ImagePullBackOff.
"""


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """Return the conditions whose status is True, by type."""
    return {
        str(condition.get("type")): condition
        for condition in status.get("conditions") or []
        if condition.get("status") == "True"
    }


def _describe(condition: Mapping[str, Any]) -> str:
    reason = condition.get("reason") or ""
    message = condition.get("message") or ""
    return f"{reason}: {message}" if reason and message else reason or message


def _job_of_pod(pod: Mapping[str, Any]) -> str | None:
    labels = pod.get("metadata", {}).get("labels") or {}
    name = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name")
    if name:
        return str(name)
    for owner in pod.get("metadata", {}).get("ownerReferences") or []:
        if owner.get("kind") == "Job":
            return str(owner.get("name"))
    return None


def newest_pods(pods: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """Return the newest pod of each Job, by Job name."""
    newest: dict[str, Mapping[str, Any]] = {}
    for pod in pods:
        job = _job_of_pod(pod)
        if job is None:
            continue
        created = str(pod.get("metadata", {}).get("creationTimestamp") or "")
        current = newest.get(job)
        current_created = (
            str(current.get("metadata", {}).get("creationTimestamp") or "")
            if current
            else None
        )
        if current_created is None or created >= current_created:
            newest[job] = pod
    return newest


def _container_state(pod: Mapping[str, Any] | None) -> Mapping[str, Any]:
    if pod is None:
        return {}
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER_NAME:
            return status.get("state") or {}
    return {}


def _pod_condition(pod: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any]:
    if pod is None:
        return {}
    conditions: list[Mapping[str, Any]] = pod.get("status", {}).get("conditions") or []
    for condition in conditions:
        if condition.get("type") == kind:
            return condition
    return {}


def _parse_time(text: str | None) -> datetime.datetime | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True)
class _JobView:
    """One listed Job and its newest pod, with what the observation needs."""

    job: Mapping[str, Any]
    pod: Mapping[str, Any] | None
    now: datetime.datetime

    @property
    def name(self) -> str:
        return str(self.job["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.job["metadata"].get("namespace") or DEFAULT_NAMESPACE)

    @property
    def node(self) -> str | None:
        if self.pod is None:
            return None
        node = self.pod.get("spec", {}).get("nodeName")
        return str(node) if node else None

    @property
    def host(self) -> str | None:
        """Service DNS name when the pod has ports (so a Service), else its IP."""
        template = self.job.get("spec", {}).get("template", {}).get("spec", {})
        containers = template.get("containers") or [{}]
        if containers[0].get("ports"):
            return service_host(self.name, self.namespace)
        if self.pod is None:
            return None
        ip = self.pod.get("status", {}).get("podIP")
        return str(ip) if ip else None

    def time_left_s(self) -> int | None:
        deadline = self.job.get("spec", {}).get("activeDeadlineSeconds")
        started = _parse_time(self.job.get("status", {}).get("startTime"))
        if deadline is None or started is None:
            return None
        elapsed = (self.now - started).total_seconds()
        return max(0, int(deadline - elapsed))


def observe_job(
    job: Mapping[str, Any] | None,
    pod: Mapping[str, Any] | None,
    now: datetime.datetime,
    name: str = "",
    namespace: str = "",
) -> Observation:
    """Map a Job (and its newest pod) as the API returns them to an observation.

    ``job`` None means no Job of that name exists: the service is gone.
    """
    if job is None:
        return Observation(
            JobStatus.GONE,
            reason=f"no Job {name} in namespace {namespace}: it was deleted",
            raw_state="NotFound",
        )
    view = _JobView(job, pod, now)
    if job["metadata"].get("deletionTimestamp"):
        return Observation(
            JobStatus.STOPPING, reason="the Job is being deleted", raw_state="Deleting"
        )
    status = job.get("status") or {}
    conditions = _conditions(status)
    if "Complete" in conditions:
        return Observation(JobStatus.COMPLETED, exit_code=0, raw_state="Complete")
    if "Failed" in conditions:
        return _failed(view, conditions["Failed"])
    for ending in ("FailureTarget", "SuccessCriteriaMet"):
        # Kubernetes 1.31+ sets these first and Complete or Failed only once
        # the pod has terminated.
        if ending in conditions:
            return Observation(
                JobStatus.STOPPING,
                reason=_describe(conditions[ending]),
                raw_state=ending,
            )
    if "Suspended" in conditions:
        return Observation(
            JobStatus.SUSPENDED,
            reason=_describe(conditions["Suspended"]),
            raw_state="Suspended",
        )
    if status.get("active"):
        return _active(view)
    if status.get("succeeded"):
        return Observation(JobStatus.COMPLETED, exit_code=0, raw_state="Succeeded")
    if status.get("failed"):
        return _failed(view, {})
    return Observation(
        JobStatus.PENDING,
        reason="waiting for the Job controller to create the pod",
        raw_state="Created",
    )


def _active(view: _JobView) -> Observation:
    pod = view.pod
    nodes = (view.node,) if view.node else ()
    if pod is None:
        return Observation(
            JobStatus.PENDING,
            reason="waiting for the Job controller to create the pod",
            raw_state="Active",
        )
    phase = str(pod.get("status", {}).get("phase") or "Pending")
    if phase == "Pending":
        scheduled = _pod_condition(pod, "PodScheduled")
        if view.node is None or scheduled.get("status") == "False":
            return Observation(
                JobStatus.PENDING,
                reason=_describe(scheduled) or "waiting to be scheduled",
                raw_state=str(scheduled.get("reason") or "Unscheduled"),
            )
        waiting = _container_state(pod).get("waiting") or {}
        reason = str(waiting.get("reason") or "ContainerCreating")
        detail = _describe(waiting) or reason
        if reason in _FATAL_WAITING_REASONS:
            return Observation(
                JobStatus.FAILED, reason=detail, nodes=nodes, raw_state=reason
            )
        return Observation(
            JobStatus.PENDING, reason=detail, nodes=nodes, raw_state=reason
        )
    if phase in ("Succeeded", "Failed"):
        # The pod ended and the Job controller has not counted it yet.
        return Observation(
            JobStatus.STOPPING, nodes=nodes, reason=f"pod {phase}", raw_state=phase
        )
    reason = "the node stopped reporting the pod's state" if phase == "Unknown" else ""
    # The readiness probe in the manifest drives the pod's Ready condition, so
    # apply need not reach the Service from outside the cluster.
    ready = _pod_condition(pod, "Ready").get("status") == "True"
    return Observation(
        JobStatus.RUNNING,
        host=view.host,
        nodes=nodes,
        reason=reason,
        time_left_s=view.time_left_s(),
        raw_state=phase,
        ready=ready or None,
    )


def _failed(view: _JobView, condition: Mapping[str, Any]) -> Observation:
    terminated = _container_state(view.pod).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    nodes = (view.node,) if view.node else ()
    details = [_describe(condition)]
    if terminated.get("reason"):
        details.append(f"container {terminated['reason']}")
    if exit_code is not None:
        details.append(f"exit code {exit_code}")
    reason = "; ".join(detail for detail in details if detail)
    kind = str(condition.get("reason") or "Failed")
    if kind == "DeadlineExceeded":
        status = JobStatus.TIMEOUT
    elif terminated.get("reason") == "OOMKilled":
        status = JobStatus.OUT_OF_MEMORY
    elif _pod_condition(view.pod, "DisruptionTarget").get("status") == "True":
        # Preemption, eviction by the API or for a taint, or a node drain.
        status = JobStatus.PREEMPTED
        reason = _describe(_pod_condition(view.pod, "DisruptionTarget")) or reason
    else:
        status = JobStatus.FAILED
    return Observation(
        status,
        reason=reason,
        nodes=nodes,
        exit_code=None if exit_code is None else int(exit_code),
        raw_state=kind,
    )


# API access ---------------------------------------------------------------------
