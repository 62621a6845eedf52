"""Kubernetes target: each service is a batch/v1 Job of one pod, plus a Service.

``render`` writes the Job and, when the service has ports, a ClusterIP Service
from ``templates/k8s/*.yaml.j2``. ``submit`` creates exactly those objects, plus
a Secret that contains the secret environment values, so that these never
appear in the rendered manifest. The Job runs once (``backoffLimit: 0``) and its
``activeDeadlineSeconds`` enforces the time limit the way Slurm's walltime does.

Every object carries the label ``ubench.io/lineage``, so one list call covers
a refresh of the whole stack. The idempotency token is too long for a label
value and has characters that label values forbid, so it is the annotation
``ubench.io/token``.

NOTE: no Kubernetes API server runs where ubench is developed. The manifests
are pinned by golden files and the API calls are tested against a fake server
on loopback, never against a real cluster.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
import yaml
from loguru import logger

from ubench_iac.errors import RenderError, TargetError
from ubench_iac.models import TargetConfig
from ubench_iac.paths import data_dir
from ubench_iac.resolve import DesiredResource
from ubench_iac.status import JobStatus, Observation
from ubench_iac.targets.base import Handle, Scan, Submission, Target

LINEAGE_LABEL = "ubench.io/lineage"
RESOURCE_LABEL = "ubench.io/resource"
TOKEN_ANNOTATION = "ubench.io/token"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
DEFAULT_NAMESPACE = "default"
CONTAINER_NAME = "service"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
"""Node label set by NVIDIA GPU feature discovery, e.g. NVIDIA-A100-SXM4-80GB."""

INSTALL_HINT = "pip install 'ubench-iac[kubernetes]'"
API_TIMEOUT_S = 30.0
"""Timeout of one API request, so an unresponsive server fails the command."""

MAX_NAME_LENGTH = 63
"""Service names are DNS-1035 labels, and a Job's name becomes a label value."""
MAX_LABEL_VALUE_LENGTH = 63
MAX_PORT_NAME_LENGTH = 15

_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?$")
_DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]*[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")

_UNPULLABLE_SCHEMES = ("oras://", "library://", "shub://")
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


# Names and labels ---------------------------------------------------------


def _short_hash(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:8]


def _fit(text: str, seed: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` characters, ending it with a hash of ``seed``.

    The hash keeps two long names that share a prefix distinct after the cut.
    """
    if len(text) <= limit:
        return text
    head = text[: limit - 9].rstrip("-._")
    return f"{head}-{_short_hash(seed)}"


def object_name(stack: str, service: str, index: int) -> str:
    """Return the DNS-1123 name of a resource's Job, Service and Secret.

    The stack and service names are lower-cased and ``_`` becomes ``-``. Names
    longer than 63 characters are cut and end with a hash of the full name.
    """
    raw = f"{stack}-{service}-{index}"
    name = _fit(raw.lower().replace("_", "-"), raw, MAX_NAME_LENGTH)
    if not _DNS_LABEL.match(name):
        raise RenderError(
            f"cannot make a Kubernetes name of stack '{stack}' and service "
            f"'{service}': {name!r} is not a DNS-1035 label"
        )
    return name


def label_value(text: str) -> str:
    """Return ``text`` as a valid label value, cut with a hash when too long."""
    value = _fit(text, text, MAX_LABEL_VALUE_LENGTH)
    if not _LABEL_VALUE.match(value):
        # Characters a label value cannot hold: the hash alone identifies it.
        value = f"h-{_short_hash(text)}"
    return value


def lineage_of(token: str) -> str:
    """Return the lineage of a token ``ubench:<lineage>:<address>:<hash>``."""
    parts = token.split(":")
    if len(parts) < 4 or parts[0] != "ubench" or not parts[1]:
        raise RenderError(f"invalid ubench token {token!r}")
    return parts[1]


def _lineage_of_prefix(prefix: str) -> str | None:
    """Return the lineage a token prefix pins, such as ``ubench:<lineage>:``."""
    parts = prefix.split(":")
    if len(parts) >= 3 and parts[0] == "ubench" and parts[1]:
        return parts[1]
    return None


def _selector(lineage: str | None) -> str:
    # Without a lineage, every object ubench made in the namespace matches.
    return f"{LINEAGE_LABEL}={label_value(lineage)}" if lineage else LINEAGE_LABEL


def service_host(name: str, namespace: str) -> str:
    """Return the DNS name of a resource's Service inside the cluster."""
    return f"{name}.{namespace}.svc"


def _port_names(ports: Mapping[str, int]) -> list[tuple[str, int]]:
    """Return each port as (IANA service name, number).

    Kubernetes port names have at most 15 characters of ``[a-z0-9-]``, while
    ubench allows 31 and ``_``. A name that does not fit becomes ``port-N``.
    """
    named: list[tuple[str, int]] = []
    used: set[str] = set()
    for name, number in ports.items():
        candidate = re.sub("-+", "-", name.replace("_", "-")).strip("-")
        fits = len(candidate) <= MAX_PORT_NAME_LENGTH and _PORT_NAME.match(candidate)
        has_letter = any(char.isalpha() for char in candidate)
        if not (fits and has_letter) or candidate in used:
            candidate = f"port-{number}"
        used.add(candidate)
        named.append((candidate, number))
    return named


# Rendering ------------------------------------------------------------------


_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
"""Escapes of the characters that YAML requires escaped, and of common
control characters, which read better than their ``\\xNN`` forms."""


def yaml_str(value: object) -> str:
    """Quote a string as a YAML double-quoted scalar that loads back unchanged.

    Printable characters stay as they are. Quotes, backslashes, control
    characters, the byte-order mark and line breaks become escapes. The line
    breaks include U+0085, U+2028 and U+2029, which YAML 1.1 reads as such.
    """
    if not isinstance(value, str):
        raise RenderError(
            f"a Kubernetes manifest value must be a string, got "
            f"{type(value).__name__} {value!r}"
        )
    parts = ['"']
    for char in value:
        code = ord(char)
        if char in _SHORT_ESCAPES:
            parts.append(_SHORT_ESCAPES[char])
        elif _is_plain(code):
            parts.append(char)
        elif code <= 0xFF:
            parts.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            parts.append(f"\\u{code:04x}")
        else:
            parts.append(f"\\U{code:08x}")
    parts.append('"')
    return "".join(parts)


def _is_plain(code: int) -> bool:
    """Return whether a character may appear unescaped in a double-quoted scalar."""
    if 0x20 <= code <= 0x7E:
        return True
    if code in (0x2028, 0x2029, 0xFEFF):
        return False
    return 0xA0 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or code >= 0x10000


def yaml_int(value: object) -> str:
    """Return an integer as YAML text; any other value raises RenderError."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise RenderError(
            f"a Kubernetes manifest number must be an integer, got {value!r}"
        )
    return str(value)


def no_expansion(text: str) -> str:
    """Escape ``$`` so the kubelet passes ``text`` to the container unchanged.

    The kubelet expands ``$(NAME)`` in a container's command, args and env
    values and in exec probe commands, and turns ``$$`` into ``$``.
    """
    return text.replace("$", "$$")


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yaml_str"] = yaml_str
    env.filters["yaml_int"] = yaml_int
    return env


def _render_template(name: str, context: Mapping[str, Any]) -> str:
    try:
        return _environment().get_template(name).render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {name}: {exc}") from exc


def _image(resource: DesiredResource) -> str:
    image = resource.spec["image"]
    if not image:
        raise RenderError(
            f"{resource.address}: the kubernetes target runs containers, so the "
            "service needs an 'image' (e.g. docker://python:3.12-slim)"
        )
    if image.startswith(_UNPULLABLE_SCHEMES):
        raise RenderError(
            f"{resource.address}: image {image!r} is an Apptainer image, which "
            "Kubernetes cannot pull: use an OCI image (docker://...)"
        )
    image = str(image).removeprefix("docker://")
    if image.startswith(("/", "./", "../")) or image.endswith((".sif", ".sqfs")):
        raise RenderError(
            f"{resource.address}: image {image!r} is a file on this machine, "
            "which Kubernetes cannot pull: push it to a registry and name it "
            "there"
        )
    return image


def _command(resource: DesiredResource) -> list[str] | None:
    command = resource.spec["command"]
    if "argv" in command:
        return [no_expansion(word) for word in command["argv"]]
    if "script" in command:
        return ["/bin/bash", "-c", no_expansion(command["script"])]
    # No command: the image's own entrypoint runs.
    return None


def _environment_entries(resource: DesiredResource) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for name, value in resource.spec["environment"].items():
        if name in resource.secrets:
            entries.append({"name": name, "secret": True})
        else:
            entries.append(
                {"name": name, "secret": False, "value": no_expansion(value)}
            )
    return entries


def _quantities(resource: DesiredResource) -> dict[str, str]:
    """Return the pod's CPU, memory and GPU quantities.

    Requests equal limits, so the pod gets the Guaranteed QoS class and, with
    whole CPUs and the static CPU manager, cores of its own. Benchmarks need
    that repeatability more than they need burst capacity.
    """
    resources = resource.spec["resources"]
    quantities = {"cpu": str(resources["cpus"])}
    if resources["mem_gb"] is not None:
        mebibytes = round(resources["mem_gb"] * 1024)
        quantities["memory"] = (
            f"{mebibytes // 1024}Gi" if mebibytes % 1024 == 0 else f"{mebibytes}Mi"
        )
    if resources["gpus"]:
        quantities[GPU_RESOURCE] = str(resources["gpus"])
    return quantities


def _probe(resource: DesiredResource) -> dict[str, Any] | None:
    health = resource.spec["health"]
    if health is None:
        return None
    probe: dict[str, Any] = {
        "type": health["type"],
        "port": health["port"],
        "path": health["path"],
        "initial_delay_s": math.ceil(health["initial_delay_s"]),
        "period_s": max(1, math.ceil(health["interval_s"])),
        "timeout_s": max(1, math.ceil(health["timeout_s"])),
    }
    if health["type"] == "command":
        # The command runs inside the container, which may lack bash, so it
        # gets /bin/sh with the HOST and PORT that ubench's own probe sets.
        port = "" if health["port"] is None else str(health["port"])
        script = f"HOST=127.0.0.1 PORT={port}; export HOST PORT\n{health['command']}"
        probe["exec"] = ["/bin/sh", "-c", no_expansion(script)]
    return probe


def _volumes(resource: DesiredResource) -> list[dict[str, Any]]:
    return [
        {
            "name": f"bind-{i}",
            "source": bind["source"],
            "target": bind["target"] or bind["source"],
            "read_only": bool(bind["read_only"]),
        }
        for i, bind in enumerate(resource.spec["binds"])
    ]


def _check_shape(resource: DesiredResource) -> None:
    resources = resource.spec["resources"]
    if resources["nodes"] > 1 or resources["tasks_per_node"] > 1:
        raise RenderError(
            f"{resource.address}: the kubernetes target runs one pod with one "
            f"task, but the service asks for {resources['nodes']} nodes and "
            f"{resources['tasks_per_node']} tasks per node; multi-node services "
            "need an operator such as KubeRay or the MPI operator"
        )


def manifest_context(
    resource: DesiredResource, config: TargetConfig, stack: str, token: str
) -> dict[str, Any]:
    """Build the template context of one resource's Job and Service."""
    _check_shape(resource)
    name = object_name(stack, resource.service, resource.index)
    selector = [
        (LINEAGE_LABEL, label_value(lineage_of(token))),
        (RESOURCE_LABEL, label_value(f"{resource.service}-{resource.index}")),
    ]
    gpu_type = resource.spec["resources"]["gpu_type"]
    time_limit_s = resource.spec["resources"]["time_limit_s"]
    return {
        "name": name,
        "namespace": config.namespace or DEFAULT_NAMESPACE,
        "labels": [*selector, (MANAGED_BY_LABEL, "ubench")],
        "selector": selector,
        "annotations": [(TOKEN_ANNOTATION, token)],
        "container": CONTAINER_NAME,
        "image": _image(resource),
        "command": _command(resource),
        "workdir": resource.spec["workdir"],
        "env": _environment_entries(resource),
        "secret_name": name,
        "ports": _port_names(resource.ports),
        "quantities": sorted(_quantities(resource).items()),
        "probe": _probe(resource),
        "volumes": _volumes(resource),
        "node_selector": [(GPU_PRODUCT_LABEL, gpu_type)] if gpu_type else [],
        "deadline_s": time_limit_s,
        "grace_s": config.kill_wait_s,
    }


def render_manifest(
    resource: DesiredResource, config: TargetConfig, stack: str, token: str
) -> str:
    """Render the Job and, if the service has ports, its Service as YAML."""
    context = manifest_context(resource, config, stack, token)
    text = _render_template("k8s/job.yaml.j2", context)
    if context["ports"]:
        text += "---\n" + _render_template("k8s/service.yaml.j2", context)
    return text


def secret_manifest(
    resource: DesiredResource, config: TargetConfig, stack: str, token: str
) -> dict[str, Any] | None:
    """Return the Secret of a resource's secret values, or None if it has none.

    It is built at submit time only, so secret values never reach the rendered
    manifest, the plan or the state.
    """
    if not resource.secrets:
        return None
    context = manifest_context(resource, config, stack, token)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": context["secret_name"],
            "namespace": context["namespace"],
            "labels": dict(context["labels"]),
            "annotations": dict(context["annotations"]),
        },
        "type": "Opaque",
        "data": {
            key: base64.b64encode(value.encode()).decode()
            for key, value in sorted(resource.secrets.items())
        },
    }


# Observing Jobs ---------------------------------------------------------------


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


def _api_error_message(exc: Any) -> str:
    """Return 'STATUS REASON: message' of an ApiException, message from its body."""
    message = ""
    body = getattr(exc, "body", None)
    if body:
        try:
            message = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError):
            message = str(body)[:500]
    text = f"{exc.status} {exc.reason}"
    return f"{text}: {message}" if message else text


class KubernetesApi:
    """The Kubernetes API calls the target makes, with JSON in and out.

    Responses are read as the JSON the server sent (``_preload_content=False``),
    so the code works on the documented wire format whichever version of the
    ``kubernetes`` package built the client. Every failure raises TargetError
    with the HTTP status and reason; ``delete`` alone treats 404 as done.
    """

    def __init__(self, api_client: Any) -> None:
        client = _import_kubernetes().client
        self.api_client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    @classmethod
    def from_environment(cls) -> KubernetesApi:
        """Connect with the kubeconfig (``KUBECONFIG`` or ~/.kube/config).

        Inside a pod without a kubeconfig, the pod's service account is used.
        """
        kubernetes = _import_kubernetes()
        config = kubernetes.config
        try:
            # The package reads KUBECONFIG only when imported, so read it here.
            return cls(
                config.new_client_from_config(config_file=os.environ.get("KUBECONFIG"))
            )
        except config.ConfigException as kubeconfig_error:
            configuration = kubernetes.client.Configuration()
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException as incluster_error:
                raise TargetError(
                    "cannot configure the Kubernetes client: no usable kubeconfig "
                    f"({kubeconfig_error}) and not inside a pod "
                    f"({incluster_error}); set KUBECONFIG or create ~/.kube/config"
                ) from None
            return cls(kubernetes.client.ApiClient(configuration))

    def _call(
        self, verb: str, what: str, method: Callable[..., Any], *args: Any, **kw: Any
    ) -> Any:
        """Call one API method; raise TargetError on any failure."""
        kubernetes = _import_kubernetes()
        import urllib3

        logger.debug("kubernetes {} {}", verb, what)
        try:
            response = method(
                *args, _preload_content=False, _request_timeout=API_TIMEOUT_S, **kw
            )
            data = response.data
        except kubernetes.client.exceptions.ApiException as exc:
            raise _ApiError(verb, what, exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TargetError(
                f"kubernetes {verb} {what}: cannot reach the API server: {exc}"
            ) from None
        try:
            return json.loads(data) if data else {}
        except ValueError as exc:
            raise TargetError(
                f"kubernetes {verb} {what}: the API server sent invalid JSON: {exc}"
            ) from None

    def list_jobs(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call(
            "list jobs",
            f"{namespace} -l {selector}",
            self._batch.list_namespaced_job,
            namespace,
            label_selector=selector,
        )
        return list(result.get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        result = self._call(
            "list pods",
            f"{namespace} -l {selector}",
            self._core.list_namespaced_pod,
            namespace,
            label_selector=selector,
        )
        return list(result.get("items") or [])

    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Return a Job or Service, or None if there is none (HTTP 404)."""
        methods = {
            "Job": self._batch.read_namespaced_job,
            "Service": self._core.read_namespaced_service,
        }
        try:
            found: dict[str, Any] = self._call(
                f"read {kind.lower()}",
                f"{namespace}/{name}",
                methods[kind],
                name,
                namespace,
            )
        except _ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def create(
        self, kind: str, body: Mapping[str, Any], *, dry_run: bool = False
    ) -> None:
        """Create a Job, Service or Secret, or with ``dry_run`` only validate it."""
        methods = {
            "Job": self._batch.create_namespaced_job,
            "Service": self._core.create_namespaced_service,
            "Secret": self._core.create_namespaced_secret,
        }
        metadata = body["metadata"]
        extra = {"dry_run": "All"} if dry_run else {}
        self._call(
            f"create {kind.lower()}" + (" (dry run)" if dry_run else ""),
            f"{metadata['namespace']}/{metadata['name']}",
            methods[kind],
            metadata["namespace"],
            dict(body),
            **extra,
        )

    def replace_secret(self, body: Mapping[str, Any]) -> None:
        metadata = body["metadata"]
        self._call(
            "replace secret",
            f"{metadata['namespace']}/{metadata['name']}",
            self._core.replace_namespaced_secret,
            metadata["name"],
            metadata["namespace"],
            dict(body),
        )

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete an object; return False if there was none (HTTP 404)."""
        methods = {
            "Job": self._batch.delete_namespaced_job,
            "Service": self._core.delete_namespaced_service,
            "Secret": self._core.delete_namespaced_secret,
        }
        # Foreground: the Job stays, marked as being deleted, until its pod is
        # gone, so a refresh reports it as stopping rather than gone too soon.
        extra = {"propagation_policy": "Foreground"} if kind == "Job" else {}
        try:
            self._call(
                f"delete {kind.lower()}",
                f"{namespace}/{name}",
                methods[kind],
                name,
                namespace,
                **extra,
            )
        except _ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True


class _ApiError(TargetError):
    """An API call that the server rejected with an HTTP error status."""

    def __init__(self, verb: str, what: str, exc: Any) -> None:
        self.status = int(exc.status or 0)
        self.reason = str(exc.reason or "")
        self.detail = _api_error_message(exc)
        super().__init__(f"kubernetes {verb} {what} failed: {self.detail}")


def _import_kubernetes() -> Any:
    try:
        import kubernetes
        import kubernetes.client
        import kubernetes.client.exceptions
        import kubernetes.config
    except ImportError as exc:
        raise TargetError(
            f"the kubernetes target needs the kubernetes package ({exc}): "
            f"{INSTALL_HINT}"
        ) from None
    return kubernetes


# The target -----------------------------------------------------------------------


class _Listings:
    """Job and pod listings of one refresh, cached by namespace and selector."""

    def __init__(self, api: KubernetesApi) -> None:
        self.api = api
        self._jobs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._pods: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}

    def jobs(self, namespace: str, selector: str) -> dict[str, dict[str, Any]]:
        key = (namespace, selector)
        if key not in self._jobs:
            items = self.api.list_jobs(namespace, selector)
            self._jobs[key] = {str(job["metadata"]["name"]): job for job in items}
        return self._jobs[key]

    def pod(self, namespace: str, selector: str, job: str) -> Mapping[str, Any] | None:
        key = (namespace, selector)
        if key not in self._pods:
            self._pods[key] = newest_pods(self.api.list_pods(namespace, selector))
        return self._pods[key].get(job)


class KubernetesTarget(Target):
    """Run each service as a Kubernetes Job of one pod, reached by a Service."""

    kind = "kubernetes"

    def __init__(
        self,
        config: TargetConfig,
        stack: str,
        workdir: Path,
        api: KubernetesApi | None = None,
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        super().__init__(config, stack, workdir)
        self._api = api
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))

    @property
    def api(self) -> KubernetesApi:
        """The API client, made on first use so that rendering needs no cluster."""
        if self._api is None:
            self._api = KubernetesApi.from_environment()
        return self._api

    @property
    def namespace(self) -> str:
        return self.config.namespace or DEFAULT_NAMESPACE

    def predict_host(self, resource: DesiredResource | None = None) -> str | None:
        # A service with ports is reached through its Service's DNS name, known
        # before it runs; without ports only the pod IP exists, once it runs.
        if resource is None or not resource.ports:
            return None
        name = object_name(self.stack, resource.service, resource.index)
        return service_host(name, self.namespace)

    def script_path(self, resource: DesiredResource) -> Path:
        return resource.run_dir / "manifest.yaml"

    def render(self, resource: DesiredResource, token: str) -> str:
        return render_manifest(resource, self.config, self.stack, token)

    def submit(self, submission: Submission) -> Handle:
        resource = submission.resource
        token = submission.token
        documents = [doc for doc in yaml.safe_load_all(submission.script) if doc]
        job = next(doc for doc in documents if doc.get("kind") == "Job")
        namespace = str(job["metadata"]["namespace"])
        name = str(job["metadata"]["name"])
        handle: Handle = {
            "namespace": namespace,
            "job": name,
            "lineage": lineage_of(token),
        }
        # Kept for review and for kubectl. It contains no secret values.
        submission.script_path.parent.mkdir(parents=True, exist_ok=True)
        submission.script_path.write_text(submission.script, encoding="utf-8")

        secret = secret_manifest(resource, self.config, self.stack, token)
        if secret is not None:
            self._create_secret(secret)
        self._create_job(job, token)
        for document in documents:
            if document.get("kind") == "Service":
                self._create_service(document, token)
        return handle

    def _create_secret(self, secret: Mapping[str, Any]) -> None:
        try:
            self.api.create("Secret", secret)
        except _ApiError as exc:
            if exc.status != 409:
                raise
            # An earlier run whose cleanup failed left it, so replace it.
            self.api.replace_secret(secret)

    def _create_job(self, job: Mapping[str, Any], token: str) -> None:
        """Create the Job, unless the very same Job (same token) exists already."""
        try:
            self.api.create("Job", job)
        except _ApiError as exc:
            if exc.status != 409:
                raise
            namespace = job["metadata"]["namespace"]
            name = job["metadata"]["name"]
            other = _token_of(self.api.read("Job", namespace, name))
            if other == token:
                # An earlier submit of this spec created it and then failed.
                return
            raise TargetError(
                f"a Job named {name} already exists in namespace {namespace} "
                f"({other or 'without a ubench token'}): it may still be being "
                "deleted, or another service maps to the same name; wait, or "
                f"remove it with 'kubectl delete job -n {namespace} {name}'"
            ) from None

    def _create_service(self, service: Mapping[str, Any], token: str) -> None:
        try:
            self.api.create("Service", service)
        except _ApiError as exc:
            if exc.status != 409:
                raise
            metadata = service["metadata"]
            namespace, name = metadata["namespace"], metadata["name"]
            if _token_of(self.api.read("Service", namespace, name)) == token:
                return
            # An earlier run left it, perhaps with other ports, so recreate it.
            self.api.delete("Service", namespace, name)
            self.api.create("Service", service)

    def test_submit(self, submission: Submission) -> str | None:
        """Ask the API server to validate and admit the objects without storing.

        A rejection (4xx: invalid field, quota, permission) is the objection;
        an unreachable or failing server raises TargetError. A name already
        taken (409) is no objection, because a replacement's old Job keeps the
        name until apply deletes it, and submit reports a real conflict.
        """
        for document in yaml.safe_load_all(submission.script):
            if not document:
                continue
            try:
                self.api.create(document["kind"], document, dry_run=True)
            except _ApiError as exc:
                if exc.status == 409:
                    continue
                if 400 <= exc.status < 500:
                    return (
                        f"the API server rejects the {document['kind']}: {exc.detail}"
                    )
                raise
        return None

    def refresh(self, handles: Sequence[Handle]) -> list[Observation]:
        listings = _Listings(self.api)
        return [self._observe(handle, listings) for handle in handles]

    def scan(self, handles: Sequence[Handle], prefix: str) -> Scan:
        """Observe ``handles`` and find the stack's Jobs from one Job listing."""
        listings = _Listings(self.api)
        observations = [self._observe(handle, listings) for handle in handles]
        found = {
            token: (handle, self._observe(handle, listings))
            for token, handle in self._find(prefix, listings).items()
        }
        return Scan(observations=observations, found=found)

    def _observe(self, handle: Handle, listings: _Listings) -> Observation:
        namespace, name = _handle_target(handle)
        selector = _selector(handle.get("lineage"))
        job = listings.jobs(namespace, selector).get(name)
        pod = None
        if job is not None and not job["metadata"].get("deletionTimestamp"):
            pod = listings.pod(namespace, selector, name)
        return observe_job(job, pod, self._clock(), name, namespace)

    def cancel(self, handles: Sequence[Handle]) -> None:
        for handle in handles:
            namespace, name = _handle_target(handle)
            for kind in ("Job", "Service", "Secret"):
                self.api.delete(kind, namespace, name)

    def logs(self, handle: Handle, lines: int) -> str | None:
        # TODO: read the pod's log through the API (read_namespaced_pod_log);
        # until then ubench names the kubectl command that prints it.
        raise TargetError(
            "ubench cannot read pod logs yet; run: kubectl logs "
            f"job/{handle.get('job')} -n {handle.get('namespace')} --tail={lines}"
        )

    def find(self, prefix: str) -> Mapping[str, Handle]:
        return self._find(prefix, _Listings(self.api))

    def _find(self, prefix: str, listings: _Listings) -> dict[str, Handle]:
        """Return the Jobs whose token starts with ``prefix`` and are not deleted."""
        found: dict[str, Handle] = {}
        lineage = _lineage_of_prefix(prefix)
        for job in listings.jobs(self.namespace, _selector(lineage)).values():
            metadata = job["metadata"]
            token = _token_of(job)
            if not token or not token.startswith(prefix):
                continue
            if metadata.get("deletionTimestamp"):
                continue
            found[token] = {
                "namespace": str(metadata.get("namespace") or self.namespace),
                "job": str(metadata["name"]),
                "lineage": _lineage_of_prefix(token),
            }
        return found


def _token_of(obj: Mapping[str, Any] | None) -> str | None:
    annotations = (obj or {}).get("metadata", {}).get("annotations") or {}
    token = annotations.get(TOKEN_ANNOTATION)
    return str(token) if token else None


def _handle_target(handle: Handle) -> tuple[str, str]:
    namespace = handle.get("namespace")
    name = handle.get("job")
    if not namespace or not name:
        raise TargetError(f"a Kubernetes handle without namespace or job: {handle}")
    return str(namespace), str(name)
