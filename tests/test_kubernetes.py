"""Kubernetes target: golden manifests, YAML quoting, names, and API calls.

No Kubernetes API server can run where these tests run. The manifests are
pinned by golden files in tests/golden/k8s, and the API calls go through the
real ``kubernetes`` client to FakeKubernetesApi, a small HTTP server on
loopback that stores objects the way the API server's REST paths do.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import http.server
import json
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from loguru import logger

from tests.conftest import Result, assert_golden, read_state
from ubench_iac.errors import RenderError, TargetError
from ubench_iac.k8s.api import KubernetesApi
from ubench_iac.k8s.manifest import label_value, no_expansion, object_name, yaml_str
from ubench_iac.k8s.observe import observe_job
from ubench_iac.loader import load_stack
from ubench_iac.models import TargetConfig
from ubench_iac.resolve import DesiredResource, Resolver
from ubench_iac.status import JobStatus
from ubench_iac.targets.base import Submission
from ubench_iac.targets.kubernetes import KubernetesTarget

try:
    import kubernetes  # noqa: F401

    HAVE_CLIENT = True
except ImportError:
    HAVE_CLIENT = False

needs_client = pytest.mark.skipif(
    not HAVE_CLIENT,
    reason="the kubernetes package is not installed: pip install "
    "'ubench-iac[kubernetes]' to test the API calls",
)

LINEAGE = "00000000-0000-0000-0000-000000000000"
TOKEN = f"ubench:{LINEAGE}:service.x[0]:0123456789ab"
RUN_ROOT = Path("/scratch/ubench/golden")
SECRET = "not-a-real-token"
NOW = datetime.datetime(2025, 1, 1, 12, 0, tzinfo=datetime.UTC)

GOLDEN_STACK = """\
name: golden
target: {kind: kubernetes, namespace: bench}
services:
  web:
    image: docker://python:3.12-slim
    command: [python3, -m, http.server, "{{ port }}"]
    ports: {http: 8000}
    environment: {MODE: "fast run", PRICE: "$(HOME) costs $5"}
    resources: {cpus: 2, mem_gb: 4, time_limit: "1:30:00"}
    health: {type: http, path: /healthz, interval_s: 3, timeout_s: 2.5}
  llm:
    image: docker://vllm/vllm-openai:v0.6.3.post1
    command: [vllm, serve, facebook/opt-125m, --port, "{{ port }}"]
    ports: {http: 8001, prometheus_metrics: 9400}
    binds: [/project/scratch/hf:/hf, "/etc/ssl/certs:/etc/ssl/certs:ro"]
    environment:
      HF_HOME: /hf
      HF_TOKEN: {value: not-a-real-token, secret: true}
    resources:
      cpus: 16
      gpus: 4
      gpu_type: NVIDIA-A100-SXM4-80GB
      mem_gb: 120.5
      time_limit: "2-00:00:00"
    health: {type: tcp, initial_delay_s: 30}
  batch_job:
    image: ubuntu:24.04
    command: |
      echo "starting on $(hostname)"
      exec sleep infinity
    workdir: /tmp
    health: {type: command, command: "test -f /tmp/ready"}
"""

HOSTILE = [
    'double " quote',
    "single ' quote",
    "colon: space",
    "# hash",
    "key: value # comment",
    "{{ braces }} {% block %} {# comment #}",
    "new\nline",
    "\ttab and trailing space ",
    "unicode ✓ ünïcödé 😀",
    "line breaks \x85 \u2028 \u2029",
    "byte order mark \ufeff",
    "control \x00 \x1b \x7f",
    "back\\slash \\n",
    "- dash",
    "[flow, list]",
    "{flow: map}",
    "&anchor *alias !tag",
    "null",
    "true",
    "0x1F",
    "1:30:00",
    "---",
    "...",
    "$(HOME) $$ $",
    "%percent @at `tick`",
    "",
]


# Fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def resources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, DesiredResource]:
    path = tmp_path_factory.mktemp("k8s") / "golden.yaml"
    path.write_text(GOLDEN_STACK)
    loaded = load_stack(path)
    resolver = Resolver(loaded, RUN_ROOT, secret_key="golden")
    return {name: resolver.resolve(name, 0, {}) for name in loaded.order}


def _config(**overrides: Any) -> TargetConfig:
    return TargetConfig(kind="kubernetes", namespace="bench", **overrides)


def _target(api: KubernetesApi | None = None) -> KubernetesTarget:
    return KubernetesTarget(_config(), "golden", RUN_ROOT, api=api, clock=lambda: NOW)


def _render(resource: DesiredResource) -> str:
    return _target().render(resource, TOKEN)


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def _container(text: str) -> dict[str, Any]:
    job = _documents(text)[0]
    container: dict[str, Any] = job["spec"]["template"]["spec"]["containers"][0]
    return container


# Golden manifests -------------------------------------------------------------


@pytest.mark.parametrize("service", ["web", "llm", "batch_job"])
def test_render_matches_golden(
    service: str, resources: dict[str, DesiredResource]
) -> None:
    assert_golden(f"k8s/{service}.yaml", _render(resources[service]))


def test_render_is_pure(resources: dict[str, DesiredResource]) -> None:
    assert _render(resources["llm"]) == _render(resources["llm"])


@pytest.mark.parametrize("service", ["web", "llm", "batch_job"])
def test_render_parses_as_yaml(
    service: str, resources: dict[str, DesiredResource]
) -> None:
    documents = _documents(_render(resources[service]))
    kinds = [doc["kind"] for doc in documents]
    expected = ["Job"] if service == "batch_job" else ["Job", "Service"]
    assert kinds == expected


def test_render_job_runs_once_with_deadline(
    resources: dict[str, DesiredResource],
) -> None:
    job = _documents(_render(resources["web"]))[0]
    assert job["apiVersion"] == "batch/v1"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 5400
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_render_job_without_time_limit_has_no_deadline(
    resources: dict[str, DesiredResource],
) -> None:
    job = _documents(_render(resources["batch_job"]))[0]
    assert "activeDeadlineSeconds" not in job["spec"]


def test_render_script_runs_under_bash(
    resources: dict[str, DesiredResource],
) -> None:
    command = _container(_render(resources["batch_job"]))["command"]
    assert command[:2] == ["/bin/bash", "-c"]
    assert command[2] == 'echo "starting on $$(hostname)"\nexec sleep infinity'


def test_render_strips_docker_scheme(resources: dict[str, DesiredResource]) -> None:
    container = _container(_render(resources["llm"]))
    assert container["image"] == "vllm/vllm-openai:v0.6.3.post1"


def test_render_gpu_limit_and_selector(resources: dict[str, DesiredResource]) -> None:
    job = _documents(_render(resources["llm"]))[0]
    pod = job["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    requests = pod["containers"][0]["resources"]["requests"]
    assert limits["nvidia.com/gpu"] == "4"
    assert "nvidia.com/gpu" not in requests
    assert limits["memory"] == "123392Mi"
    assert requests["cpu"] == "16"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def test_render_cpu_service_has_no_gpu(resources: dict[str, DesiredResource]) -> None:
    limits = _container(_render(resources["web"]))["resources"]["limits"]
    assert limits == {"cpu": "2", "memory": "4Gi"}


def test_render_probes_match_health(resources: dict[str, DesiredResource]) -> None:
    web = _container(_render(resources["web"]))["readinessProbe"]
    llm = _container(_render(resources["llm"]))["readinessProbe"]
    batch = _container(_render(resources["batch_job"]))["readinessProbe"]
    assert web["httpGet"] == {"path": "/healthz", "port": 8000}
    assert web["periodSeconds"] == 3
    assert web["timeoutSeconds"] == 3
    assert llm["tcpSocket"] == {"port": 8001}
    assert llm["initialDelaySeconds"] == 30
    assert batch["exec"]["command"][:2] == ["/bin/sh", "-c"]
    assert batch["exec"]["command"][2].endswith("\ntest -f /tmp/ready")


def test_render_binds_become_host_paths(
    resources: dict[str, DesiredResource],
) -> None:
    job = _documents(_render(resources["llm"]))[0]
    pod = job["spec"]["template"]["spec"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert pod["volumes"][0] == {
        "name": "bind-0",
        "hostPath": {"path": "/project/scratch/hf"},
    }
    assert mounts[0] == {"name": "bind-0", "mountPath": "/hf", "readOnly": False}
    assert mounts[1]["mountPath"] == "/etc/ssl/certs"
    assert mounts[1]["readOnly"] is True


def test_render_service_selects_pod(resources: dict[str, DesiredResource]) -> None:
    job, service = _documents(_render(resources["llm"]))
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector == {
        "ubench.io/lineage": LINEAGE,
        "ubench.io/resource": "llm-0",
    }
    assert all(pod_labels[key] == value for key, value in selector.items())
    assert service["metadata"]["name"] == job["metadata"]["name"]
    assert [p["name"] for p in service["spec"]["ports"]] == ["http", "port-9400"]


def test_render_token_is_an_annotation(resources: dict[str, DesiredResource]) -> None:
    job = _documents(_render(resources["web"]))[0]
    assert job["metadata"]["annotations"]["ubench.io/token"] == TOKEN
    assert TOKEN not in job["metadata"]["labels"].values()


# Secrets ----------------------------------------------------------------------


def test_render_keeps_secrets_out(resources: dict[str, DesiredResource]) -> None:
    text = _render(resources["llm"])
    env = {e["name"]: e for e in _container(text)["env"]}
    assert SECRET not in text
    assert resources["llm"].spec["environment"]["HF_TOKEN"] not in text
    assert env["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "golden-llm-0", "key": "HF_TOKEN"}},
    }
    assert env["HF_HOME"] == {"name": "HF_HOME", "value": "/hf"}


# Quoting ----------------------------------------------------------------------


def _hostile(resource: DesiredResource, value: str) -> DesiredResource:
    spec = json.loads(json.dumps(resource.spec))
    spec["command"] = {"argv": [value, "x" + value]}
    spec["environment"] = {"HOSTILE": value}
    spec["workdir"] = "/w" + value
    spec["binds"] = [{"source": "/s" + value, "target": "/t" + value, "read_only": 0}]
    spec["image"] = "docker://img" + value
    spec["health"] = {**spec["health"], "type": "http", "path": "/" + value}
    return dataclasses.replace(resource, spec=spec, secrets={})


@pytest.mark.parametrize("value", HOSTILE)
def test_render_hostile_values_round_trip(
    value: str, resources: dict[str, DesiredResource]
) -> None:
    text = _render(_hostile(resources["web"], value))
    job = _documents(text)[0]
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == [no_expansion(value), no_expansion("x" + value)]
    assert container["env"] == [{"name": "HOSTILE", "value": no_expansion(value)}]
    assert container["workingDir"] == "/w" + value
    assert container["image"] == "img" + value
    assert container["readinessProbe"]["httpGet"]["path"] == "/" + value
    assert container["volumeMounts"][0]["mountPath"] == "/t" + value
    assert pod["volumes"][0]["hostPath"]["path"] == "/s" + value
    assert job["kind"] == "Job"
    assert job["metadata"]["name"] == "golden-web-0"


@given(st.text())
def test_yaml_str_round_trips_any_text(value: str) -> None:
    assert yaml.safe_load(yaml_str(value)) == value
    assert yaml.safe_load(f"key:\n  - {yaml_str(value)}\n") == {"key": [value]}


def test_yaml_str_escapes_lone_surrogate() -> None:
    quoted = yaml_str("a\ud800b")
    assert quoted.isascii()
    assert yaml.safe_load(quoted) == "a\ud800b"


def test_yaml_str_rejects_non_string() -> None:
    with pytest.raises(RenderError, match="must be a string"):
        yaml_str(None)


def test_no_expansion_doubles_dollars() -> None:
    assert no_expansion("$(HOME) $$ $") == "$$(HOME) $$$$ $$"


# Names and labels -----------------------------------------------------------


DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")


def test_object_name_lowercases_and_replaces_underscores() -> None:
    assert object_name("My_Stack", "Batch_Job", 3) == "my-stack-batch-job-3"


def test_object_name_cuts_long_names_with_hash() -> None:
    stack = "s" * 63
    first = object_name(stack, "a" * 63, 0)
    second = object_name(stack, "a" * 62 + "b", 0)
    assert len(first) == 63
    assert DNS_LABEL.match(first)
    assert DNS_LABEL.match(second)
    assert first != second
    assert first.startswith("s" * 40)


def test_object_name_cut_drops_trailing_hyphen() -> None:
    # The cut falls right after the hyphen between stack and service names.
    name = object_name("a" * 53, "b" * 20, 0)
    assert DNS_LABEL.match(name)
    assert re.fullmatch(r"a{53}-[0-9a-f]{8}", name)


def test_label_value_keeps_valid_values() -> None:
    assert label_value("Batch_Job-0") == "Batch_Job-0"


def test_label_value_cuts_long_values() -> None:
    value = label_value("x" * 63 + "_-0")
    assert len(value) == 63
    assert re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", value)


def test_render_long_names_fit(tmp_path: Path) -> None:
    long = "S" + "_x" * 31
    path = tmp_path / "long.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": long,
                "target": {"kind": "kubernetes"},
                "services": {long: {"image": "busybox", "ports": {"http": 80}}},
            }
        )
    )
    loaded = load_stack(path)
    resource = Resolver(loaded, tmp_path, "k").resolve(long, 0, {})
    target = KubernetesTarget(TargetConfig(kind="kubernetes"), long, tmp_path)
    job, service = _documents(target.render(resource, TOKEN))
    labels = job["metadata"]["labels"]
    assert DNS_LABEL.match(job["metadata"]["name"])
    assert service["metadata"]["name"] == job["metadata"]["name"]
    assert job["metadata"]["namespace"] == "default"
    assert len(labels["ubench.io/resource"]) <= 63


# Rendering errors -------------------------------------------------------------


def _with_spec(resource: DesiredResource, **changes: Any) -> DesiredResource:
    spec = json.loads(json.dumps(resource.spec))
    spec.update(changes)
    return dataclasses.replace(resource, spec=spec)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (None, "needs an 'image'"),
        ("/project/images/redis.sif", "file on this machine"),
        ("oras://ghcr.io/x/y:1", "Apptainer image"),
    ],
)
def test_render_rejects_unpullable_image(
    image: str | None, message: str, resources: dict[str, DesiredResource]
) -> None:
    with pytest.raises(RenderError, match=message):
        _render(_with_spec(resources["web"], image=image))


def test_render_rejects_multiple_nodes(resources: dict[str, DesiredResource]) -> None:
    spec_resources = {**resources["web"].spec["resources"], "nodes": 2}
    with pytest.raises(RenderError, match="one pod with one task"):
        _render(_with_spec(resources["web"], resources=spec_resources))


# Mapping Job states (pure: no client needed) -----------------------------------


def _job(
    status: dict[str, Any] | None = None, *, ports: bool = True, **meta: Any
) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "service"}
    if ports:
        container["ports"] = [{"name": "http", "containerPort": 8000}]
    return {
        "metadata": {"name": "golden-web-0", "namespace": "bench", **meta},
        "spec": {
            "activeDeadlineSeconds": 3600,
            "template": {"spec": {"containers": [container]}},
        },
        "status": status or {},
    }


def _pod(
    phase: str,
    *,
    node: str | None = "node-1",
    conditions: list[dict[str, Any]] | None = None,
    state: dict[str, Any] | None = None,
    job: str = "golden-web-0",
    created: str = "2025-01-01T11:00:00Z",
) -> dict[str, Any]:
    spec = {"nodeName": node} if node else {}
    return {
        "metadata": {
            "name": f"{job}-abcde",
            "labels": {"job-name": job},
            "creationTimestamp": created,
        },
        "spec": spec,
        "status": {
            "phase": phase,
            "podIP": "10.0.0.7",
            "conditions": conditions or [],
            "containerStatuses": [{"name": "service", "state": state or {}}],
        },
    }


def _failed(reason: str, message: str = "") -> dict[str, Any]:
    condition = {"type": "Failed", "status": "True", "reason": reason}
    if message:
        condition["message"] = message
    return {"failed": 1, "conditions": [condition]}


UNSCHEDULED = [
    {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
    }
]
TERMINATED_1 = {"terminated": {"exitCode": 1, "reason": "Error"}}
OOM = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
DISRUPTED = [
    {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": "PreemptionByScheduler",
        "message": "preempted by a pod of higher priority",
    }
]
RUNNING_STATUS = {"active": 1, "startTime": "2025-01-01T11:30:00Z"}

JOB_STATES: list[
    tuple[str, dict[str, Any] | None, dict[str, Any] | None, JobStatus]
] = [
    ("running", _job(RUNNING_STATUS), _pod("Running"), JobStatus.RUNNING),
    (
        "unscheduled",
        _job({"active": 1}),
        _pod("Pending", node=None, conditions=UNSCHEDULED),
        JobStatus.PENDING,
    ),
    (
        "pulling image",
        _job({"active": 1}),
        _pod("Pending", state={"waiting": {"reason": "ContainerCreating"}}),
        JobStatus.PENDING,
    ),
    (
        "bad image",
        _job({"active": 1}),
        _pod("Pending", state={"waiting": {"reason": "ImagePullBackOff"}}),
        JobStatus.FAILED,
    ),
    ("no pod yet", _job({"active": 1}), None, JobStatus.PENDING),
    ("just created", _job({}), None, JobStatus.PENDING),
    (
        "completed",
        _job({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}),
        _pod("Succeeded"),
        JobStatus.COMPLETED,
    ),
    (
        "deadline",
        _job(_failed("DeadlineExceeded", "Job was active longer than specified")),
        _pod("Failed", state={"terminated": {"exitCode": 143}}),
        JobStatus.TIMEOUT,
    ),
    (
        "exit code",
        _job(_failed("BackoffLimitExceeded", "Job has reached the backoff limit")),
        _pod("Failed", state=TERMINATED_1),
        JobStatus.FAILED,
    ),
    (
        "out of memory",
        _job(_failed("BackoffLimitExceeded")),
        _pod("Failed", state=OOM),
        JobStatus.OUT_OF_MEMORY,
    ),
    (
        "preempted",
        _job(_failed("BackoffLimitExceeded")),
        _pod("Failed", conditions=DISRUPTED, state=TERMINATED_1),
        JobStatus.PREEMPTED,
    ),
    (
        "failure target",
        _job(
            {
                "active": 1,
                "conditions": [
                    {
                        "type": "FailureTarget",
                        "status": "True",
                        "reason": "DeadlineExceeded",
                    }
                ],
            }
        ),
        _pod("Running"),
        JobStatus.STOPPING,
    ),
    (
        "suspended",
        _job({"conditions": [{"type": "Suspended", "status": "True"}]}),
        None,
        JobStatus.SUSPENDED,
    ),
    (
        "being deleted",
        _job(RUNNING_STATUS, deletionTimestamp="2025-01-01T11:59:00Z"),
        None,
        JobStatus.STOPPING,
    ),
    ("missing", None, None, JobStatus.GONE),
]


@pytest.mark.parametrize(
    ("job", "pod", "expected"),
    [case[1:] for case in JOB_STATES],
    ids=[case[0] for case in JOB_STATES],
)
def test_observe_job_maps_state(
    job: dict[str, Any] | None, pod: dict[str, Any] | None, expected: JobStatus
) -> None:
    assert observe_job(job, pod, NOW, "golden-web-0", "bench").status is expected


def test_observe_running_reports_service_host() -> None:
    observation = observe_job(_job(RUNNING_STATUS), _pod("Running"), NOW)
    assert observation.host == "golden-web-0.bench.svc"
    assert observation.nodes == ("node-1",)
    assert observation.time_left_s == 1800


def test_observe_running_without_ports_reports_pod_ip() -> None:
    observation = observe_job(_job(RUNNING_STATUS, ports=False), _pod("Running"), NOW)
    assert observation.host == "10.0.0.7"


def test_observe_unscheduled_gives_scheduler_reason() -> None:
    pod = _pod("Pending", node=None, conditions=UNSCHEDULED)
    observation = observe_job(_job({"active": 1}), pod, NOW)
    assert "Insufficient nvidia.com/gpu" in observation.reason
    assert observation.raw_state == "Unschedulable"


def test_observe_failed_gives_exit_code() -> None:
    job = _job(_failed("BackoffLimitExceeded", "Job has reached the backoff limit"))
    observation = observe_job(job, _pod("Failed", state=TERMINATED_1), NOW)
    assert observation.exit_code == 1
    assert "exit code 1" in observation.reason
    assert observation.raw_state == "BackoffLimitExceeded"


def test_observe_timeout_keeps_condition_message() -> None:
    job = _job(_failed("DeadlineExceeded", "Job was active longer than specified"))
    observation = observe_job(job, None, NOW)
    assert observation.reason == (
        "DeadlineExceeded: Job was active longer than specified"
    )


# The fake API server ------------------------------------------------------------


_PATH = re.compile(
    r"^/(?P<group>api/v1|apis/batch/v1)/namespaces/(?P<namespace>[^/]+)/"
    r"(?P<plural>jobs|pods|services|secrets)(?:/(?P<name>[^/]+))?(?P<log>/log)?$"
)
_KINDS = {"jobs": "Job", "pods": "Pod", "services": "Service", "secrets": "Secret"}


@dataclasses.dataclass
class Request:
    method: str
    plural: str
    namespace: str
    name: str | None
    query: dict[str, str]
    body: Any


class FakeKubernetesApi:
    """An HTTP server on loopback that responds like the Kubernetes API server.

    It stands in only for the API server, which cannot run here: the target and
    the real ``kubernetes`` client are under test. It stores Jobs, pods,
    Services and Secrets under their REST paths, serves list calls with label
    selectors (``key=value`` and ``key``), returns 404 and 409 as the server
    does, records every request, and fails the next matching request on demand.
    It runs no controllers: tests set Job and pod status themselves, except
    that with ``start_pods`` a new Job gets a running pod at once, and deleting
    a Job deletes its pods, as the Job controller and garbage collector would.
    """

    def __init__(self) -> None:
        self.start_pods = False
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: list[Request] = []
        self.failures: list[tuple[str, str, int, str]] = []
        self.pod_logs: dict[str, str] = {}
        self._lock = threading.Lock()
        self._serial = 0
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

            def do_PUT(self) -> None:
                fake._handle(self, "PUT")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # Test helpers.

    def fail_next(self, method: str, plural: str, status: int, reason: str) -> None:
        """Fail the next METHOD request on PLURAL with an HTTP error status."""
        self.failures.append((method, plural, status, reason))

    def calls(self, method: str, plural: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.plural == plural]

    def put(self, plural: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        self.objects[(plural, meta.get("namespace", "bench"), meta["name"])] = obj

    def get(self, plural: str, name: str, namespace: str = "bench") -> Any:
        return self.objects.get((plural, namespace, name))

    # Request handling.

    def _handle(self, handler: http.server.BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        match = _PATH.match(url.path)
        if match is None:
            self._send(handler, 404, _status(404, "NotFound", f"no route {url.path}"))
            return
        plural, namespace, name = match["plural"], match["namespace"], match["name"]
        if match["log"]:
            self._send_log(handler, namespace, name, query)
            return
        with self._lock:
            self.requests.append(Request(method, plural, namespace, name, query, body))
            for failure in self.failures:
                if failure[:2] == (method, plural):
                    self.failures.remove(failure)
                    code, reason = failure[2], failure[3]
                    self._send(handler, code, _status(code, reason, "injected"))
                    return
            code, response = self._respond(method, plural, namespace, name, query, body)
        self._send(handler, code, response)

    def _respond(
        self,
        method: str,
        plural: str,
        namespace: str,
        name: str | None,
        query: dict[str, str],
        body: Any,
    ) -> tuple[int, dict[str, Any]]:
        kind = _KINDS[plural]
        if method == "GET" and name is None:
            selector = query.get("labelSelector", "")
            items = [
                obj
                for (p, ns, _), obj in sorted(self.objects.items())
                if p == plural and ns == namespace and _selects(selector, obj)
            ]
            return 200, {"kind": f"{kind}List", "apiVersion": "v1", "items": items}
        key = (plural, namespace, name or (body or {}).get("metadata", {}).get("name"))
        not_found = _status(404, "NotFound", f'{plural} "{key[2]}" not found')
        if method == "GET":
            return (200, self.objects[key]) if key in self.objects else (404, not_found)
        if method == "DELETE":
            if self.objects.pop(key, None) is None:
                return 404, not_found
            if kind == "Job":
                for pod_key, pod in list(self.objects.items()):
                    if pod_key[0] == "pods" and _job_label(pod) == key[2]:
                        del self.objects[pod_key]
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if method == "POST":
            if key in self.objects:
                message = f'{plural} "{key[2]}" already exists'
                return 409, _status(409, "AlreadyExists", message)
            if query.get("dryRun") == "All":
                return 201, body
            self._serial += 1
            stored = json.loads(json.dumps(body))
            stored["metadata"]["uid"] = f"uid-{self._serial}"
            stored["metadata"]["creationTimestamp"] = "2025-01-01T11:00:00Z"
            if kind == "Job":
                stored["status"] = {}
                if self.start_pods:
                    self._start_pod(stored)
            self.objects[key] = stored
            return 201, stored
        if method == "PUT":
            if key not in self.objects:
                return 404, not_found
            self.objects[key] = body
            return 200, body
        return 405, _status(405, "MethodNotAllowed", method)

    def _start_pod(self, job: dict[str, Any]) -> None:
        now = datetime.datetime.now(datetime.UTC).isoformat()
        name = job["metadata"]["name"]
        namespace = job["metadata"]["namespace"]
        job["status"] = {"active": 1, "startTime": now}
        labels = {**job["spec"]["template"]["metadata"]["labels"], "job-name": name}
        self.objects[("pods", namespace, f"{name}-pod")] = {
            "metadata": {
                "name": f"{name}-pod",
                "namespace": namespace,
                "labels": labels,
                "creationTimestamp": now,
            },
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": "10.0.0.9"},
        }

    def _send_log(
        self,
        handler: http.server.BaseHTTPRequestHandler,
        namespace: str,
        pod: str,
        query: dict[str, str],
    ) -> None:
        """Serve a pod log as the API server does: plain text, tail_lines kept."""
        with self._lock:
            self.requests.append(Request("GET", "log", namespace, pod, query, None))
            if ("pods", namespace, pod) not in self.objects:
                self._send(handler, 404, _status(404, "NotFound", "no such pod"))
                return
            lines = self.pod_logs.get(pod, "").splitlines(keepends=True)
        tail = int(query.get("tailLines", len(lines)))
        data = "".join(lines[len(lines) - tail :] if tail else []).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _send(
        self, handler: http.server.BaseHTTPRequestHandler, code: int, response: Any
    ) -> None:
        data = json.dumps(response).encode()
        handler.send_response(code)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _job_label(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get("job-name")


def _selects(selector: str, obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if key not in labels or (value and labels[key] != value):
            return False
    return True


@pytest.fixture
def fake() -> Iterator[FakeKubernetesApi]:
    server = FakeKubernetesApi()
    server.start()
    yield server
    server.stop()


def _kubeconfig(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "fake", "user": {"token": "fake-token"}}],
                "contexts": [
                    {"name": "fake", "context": {"cluster": "fake", "user": "fake"}}
                ],
                "current-context": "fake",
            }
        )
    )
    return path


@pytest.fixture
def target(
    fake: FakeKubernetesApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> KubernetesTarget:
    """A target that finds the fake server through KUBECONFIG, as users would."""
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path, fake.url)))
    return KubernetesTarget(_config(), "golden", tmp_path, clock=lambda: NOW)


def _submission(resource: DesiredResource, tmp_path: Path) -> Submission:
    token = f"ubench:{LINEAGE}:{resource.address}:0123456789ab"
    return Submission(
        resource=resource,
        token=token,
        script=_target().render(resource, token),
        script_path=tmp_path / resource.service / "manifest.yaml",
        log_path=tmp_path / resource.service / "service.log",
    )


# Submit -----------------------------------------------------------------------


@needs_client
def test_submit_creates_secret_job_and_service(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    submission = _submission(resources["llm"], tmp_path)
    handle = target.submit(submission)
    posts = [r.plural for r in fake.requests if r.method == "POST"]
    manifest_job, manifest_service = _documents(submission.script)
    secret = fake.get("secrets", "golden-llm-0")
    assert handle == {"namespace": "bench", "job": "golden-llm-0", "lineage": LINEAGE}
    assert posts == ["secrets", "jobs", "services"]
    assert fake.get("jobs", "golden-llm-0")["spec"] == manifest_job["spec"]
    assert fake.get("services", "golden-llm-0")["spec"] == manifest_service["spec"]
    assert base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == SECRET
    assert submission.script_path.read_text() == submission.script


@needs_client
def test_submit_sends_secret_only_in_secret(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    target.submit(_submission(resources["llm"], tmp_path))
    encoded = base64.b64encode(SECRET.encode()).decode()
    for request in fake.requests:
        text = json.dumps(request.body)
        assert SECRET not in text
        assert (encoded in text) == (request.plural == "secrets")


@needs_client
def test_submit_logs_no_secret(
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    sink = logger.add(lines.append, level="DEBUG", format="{message}")
    try:
        target.submit(_submission(resources["llm"], tmp_path))
    finally:
        logger.remove(sink)
    text = "".join(lines)
    assert "kubernetes create secret bench/golden-llm-0" in text
    assert "kubernetes create job bench/golden-llm-0" in text
    assert SECRET not in text
    assert base64.b64encode(SECRET.encode()).decode() not in text


@needs_client
def test_submit_without_secrets_creates_no_secret(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    target.submit(_submission(resources["batch_job"], tmp_path))
    posts = [r.plural for r in fake.requests if r.method == "POST"]
    assert posts == ["jobs"]


@needs_client
def test_submit_replaces_stale_secret(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    stale = {"metadata": {"name": "golden-llm-0", "namespace": "bench"}, "data": {}}
    fake.put("secrets", stale)
    target.submit(_submission(resources["llm"], tmp_path))
    secret = fake.get("secrets", "golden-llm-0")
    assert len(fake.calls("PUT", "secrets")) == 1
    assert base64.b64decode(secret["data"]["HF_TOKEN"]).decode() == SECRET


@needs_client
def test_submit_existing_job_with_same_token_is_kept(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    submission = _submission(resources["web"], tmp_path)
    first = target.submit(submission)
    job = fake.get("jobs", "golden-web-0")
    second = target.submit(submission)
    assert second == first
    assert fake.get("jobs", "golden-web-0") is job
    assert len(fake.calls("POST", "jobs")) == 2
    assert len(fake.calls("GET", "jobs")) == 1
    assert len(fake.calls("GET", "services")) == 1
    assert fake.calls("DELETE", "services") == []


@needs_client
def test_submit_recreates_stale_service(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    stale = {"metadata": {"name": "golden-web-0", "namespace": "bench"}, "spec": {}}
    fake.put("services", stale)
    target.submit(_submission(resources["web"], tmp_path))
    service = fake.get("services", "golden-web-0")
    assert len(fake.calls("DELETE", "services")) == 1
    assert service["spec"]["ports"][0]["port"] == 8000


@needs_client
def test_submit_existing_job_with_other_token_fails(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    other = _job(RUNNING_STATUS)
    other["metadata"]["annotations"] = {"ubench.io/token": "ubench:other:x:y"}
    fake.put("jobs", other)
    with pytest.raises(TargetError, match="already exists in namespace bench"):
        target.submit(_submission(resources["web"], tmp_path))


@needs_client
def test_submit_api_rejection_raises(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    fake.fail_next("POST", "jobs", 403, "Forbidden")
    with pytest.raises(TargetError, match="403 Forbidden"):
        target.submit(_submission(resources["web"], tmp_path))


@needs_client
def test_test_submit_uses_dry_run(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    objection = target.test_submit(_submission(resources["web"], tmp_path))
    posts = fake.calls("POST", "jobs") + fake.calls("POST", "services")
    assert objection is None
    assert len(posts) == 2
    assert all(r.query.get("dryRun") == "All" for r in posts)
    assert fake.objects == {}


@needs_client
def test_test_submit_reports_rejection(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    fake.fail_next("POST", "jobs", 422, "Unprocessable Entity")
    objection = target.test_submit(_submission(resources["web"], tmp_path))
    assert objection is not None
    assert "rejects the Job: 422" in objection


@needs_client
def test_test_submit_ignores_taken_name(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    # The Job that a replacement deletes first still has the name.
    fake.fail_next("POST", "jobs", 409, "Conflict")
    objection = target.test_submit(_submission(resources["web"], tmp_path))
    assert objection is None
    assert len(fake.calls("POST", "services")) == 1


@needs_client
def test_test_submit_server_error_raises(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    fake.fail_next("POST", "jobs", 500, "Internal Server Error")
    with pytest.raises(TargetError, match="500"):
        target.test_submit(_submission(resources["web"], tmp_path))


# Refresh ----------------------------------------------------------------------


def _store_job(fake: FakeKubernetesApi, name: str, status: dict[str, Any]) -> None:
    job = _job(status)
    job["metadata"].update(
        name=name,
        labels={"ubench.io/lineage": LINEAGE},
        annotations={"ubench.io/token": f"ubench:{LINEAGE}:service.{name}[0]:abc"},
    )
    fake.put("jobs", job)


def _store_pod(fake: FakeKubernetesApi, pod: dict[str, Any]) -> None:
    pod["metadata"]["namespace"] = "bench"
    pod["metadata"]["labels"]["ubench.io/lineage"] = LINEAGE
    fake.put("pods", pod)


def _handle(name: str) -> dict[str, Any]:
    return {"namespace": "bench", "job": name, "lineage": LINEAGE}


@needs_client
def test_refresh_lists_once_for_many_handles(
    fake: FakeKubernetesApi, target: KubernetesTarget
) -> None:
    names = [f"golden-web-{i}" for i in range(8)]
    for name in names:
        _store_job(fake, name, RUNNING_STATUS)
        _store_pod(fake, _pod("Running", job=name))
    observations = target.refresh([_handle(name) for name in names])
    job_lists = fake.calls("GET", "jobs")
    assert [o.status for o in observations] == [JobStatus.RUNNING] * 8
    assert len(job_lists) == 1
    assert job_lists[0].query["labelSelector"] == f"ubench.io/lineage={LINEAGE}"
    assert len(fake.calls("GET", "pods")) == 1
    assert len(fake.requests) == 2


@needs_client
@pytest.mark.parametrize(
    ("job", "pod", "expected"),
    [case[1:] for case in JOB_STATES],
    ids=[case[0] for case in JOB_STATES],
)
def test_refresh_maps_job_state(
    job: dict[str, Any] | None,
    pod: dict[str, Any] | None,
    expected: JobStatus,
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
) -> None:
    if job is not None:
        _store_job(fake, "golden-web-0", job["status"])
        stored = fake.get("jobs", "golden-web-0")
        stored["metadata"].update(
            {k: v for k, v in job["metadata"].items() if k == "deletionTimestamp"}
        )
    if pod is not None:
        _store_pod(fake, json.loads(json.dumps(pod)))
    observations = target.refresh([_handle("golden-web-0")])
    assert observations[0].status is expected
    assert len(fake.calls("GET", "jobs")) == 1


@needs_client
@pytest.mark.parametrize(
    ("status", "reason"),
    [(500, "Internal Server Error"), (403, "Forbidden"), (401, "Unauthorized")],
)
def test_refresh_api_error_raises(
    status: int, reason: str, fake: FakeKubernetesApi, target: KubernetesTarget
) -> None:
    fake.fail_next("GET", "jobs", status, reason)
    with pytest.raises(TargetError, match=f"{status} {reason}"):
        target.refresh([_handle("golden-web-0")])


@needs_client
def test_refresh_pod_list_error_raises(
    fake: FakeKubernetesApi, target: KubernetesTarget
) -> None:
    _store_job(fake, "golden-web-0", RUNNING_STATUS)
    fake.fail_next("GET", "pods", 503, "Service Unavailable")
    with pytest.raises(TargetError, match="503 Service Unavailable"):
        target.refresh([_handle("golden-web-0")])


@needs_client
def test_refresh_unreachable_server_raises(tmp_path: Path) -> None:
    closed = FakeKubernetesApi()
    url = closed.url
    # Never started: closing the socket leaves the port refusing connections.
    closed.server.server_close()
    kubernetes_client = pytest.importorskip("kubernetes.client")
    configuration = kubernetes_client.Configuration()
    configuration.host = url
    configuration.retries = 0
    api = KubernetesApi(kubernetes_client.ApiClient(configuration))
    target = KubernetesTarget(_config(), "golden", tmp_path, api=api)
    with pytest.raises(TargetError, match="cannot reach the API server"):
        target.refresh([_handle("golden-web-0")])


@needs_client
def test_refresh_rejects_handle_without_job(target: KubernetesTarget) -> None:
    with pytest.raises(TargetError, match="without namespace or job"):
        target.refresh([{"namespace": "bench"}])


# Cancel, find and scan -----------------------------------------------------------


@needs_client
def test_cancel_deletes_job_service_and_secret(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    handle = target.submit(_submission(resources["llm"], tmp_path))
    target.cancel([handle])
    deletes = [r.plural for r in fake.requests if r.method == "DELETE"]
    job_delete = fake.calls("DELETE", "jobs")[0]
    policy = job_delete.query.get("propagationPolicy") or (job_delete.body or {}).get(
        "propagationPolicy"
    )
    assert deletes == ["jobs", "services", "secrets"]
    assert policy == "Foreground"
    assert fake.objects == {}


@needs_client
def test_cancel_is_idempotent_on_404(
    fake: FakeKubernetesApi,
    target: KubernetesTarget,
    resources: dict[str, DesiredResource],
    tmp_path: Path,
) -> None:
    handle = target.submit(_submission(resources["web"], tmp_path))
    target.cancel([handle])
    target.cancel([handle])
    assert len(fake.calls("DELETE", "jobs")) == 2
    assert fake.objects == {}


@needs_client
def test_cancel_api_error_raises(
    fake: FakeKubernetesApi, target: KubernetesTarget
) -> None:
    fake.fail_next("DELETE", "jobs", 500, "Internal Server Error")
    with pytest.raises(TargetError, match="500 Internal Server Error"):
        target.cancel([_handle("golden-web-0")])


@needs_client
def test_find_filters_by_token_prefix(
    fake: FakeKubernetesApi, target: KubernetesTarget
) -> None:
    _store_job(fake, "golden-web-0", RUNNING_STATUS)
    _store_job(fake, "golden-web-1", RUNNING_STATUS)
    fake.get("jobs", "golden-web-1")["metadata"]["deletionTimestamp"] = "x"
    found = target.find(f"ubench:{LINEAGE}:service.golden-web-0")
    assert found == {
        f"ubench:{LINEAGE}:service.golden-web-0[0]:abc": _handle("golden-web-0")
    }


@needs_client
def test_scan_uses_one_job_list(
    fake: FakeKubernetesApi, target: KubernetesTarget
) -> None:
    for name in ("golden-web-0", "golden-web-1", "golden-orphan-0"):
        _store_job(fake, name, RUNNING_STATUS)
        _store_pod(fake, _pod("Running", job=name))
    scan = target.scan(
        [_handle("golden-web-0"), _handle("golden-web-1")], f"ubench:{LINEAGE}:"
    )
    orphan = scan.found[f"ubench:{LINEAGE}:service.golden-orphan-0[0]:abc"]
    assert [o.status for o in scan.observations] == [JobStatus.RUNNING] * 2
    assert len(scan.found) == 3
    assert orphan[1].status is JobStatus.RUNNING
    assert len(fake.calls("GET", "jobs")) == 1
    assert len(fake.calls("GET", "pods")) == 1


# Client set-up --------------------------------------------------------------------


@needs_client
def test_missing_kubeconfig_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    target = KubernetesTarget(_config(), "golden", tmp_path)
    with pytest.raises(TargetError, match="cannot configure the Kubernetes client"):
        target.refresh([_handle("golden-web-0")])


def test_missing_package_raises_with_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "kubernetes", None)
    target = KubernetesTarget(_config(), "golden", tmp_path)
    with pytest.raises(TargetError, match=re.escape("pip install 'ubench-iac[kub")):
        target.find(f"ubench:{LINEAGE}:")


def test_render_needs_no_client(
    resources: dict[str, DesiredResource], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "kubernetes", None)
    assert "kind: Job" in _render(resources["web"])


def test_predict_host_is_unknown() -> None:
    assert _target().predict_host() is None


# The whole CLI -------------------------------------------------------------------


@needs_client
def test_cli_apply_plan_destroy(
    fake: FakeKubernetesApi,
    workdir: Path,
    ubench: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.start_pods = True
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(workdir, fake.url)))
    stack = workdir / "stack.yaml"
    stack.write_text(
        yaml.safe_dump(
            {
                "name": "e2e",
                "target": {"kind": "kubernetes", "namespace": "bench"},
                "services": {
                    "web": {
                        "image": "docker://python:3.12-slim",
                        "command": ["python3", "-m", "http.server", "{{ port }}"],
                        "ports": {"http": 8000},
                        "environment": {"TOKEN": {"value": SECRET, "secret": True}},
                        "outputs": {"url": "http://{{ host }}:{{ port }}"},
                    }
                },
            }
        )
    )
    applied = ubench("apply", str(stack), "--auto-approve")
    state_text = (workdir / "state" / "e2e.json").read_text()
    resource = read_state(workdir / "state" / "e2e.json")["resources"][0]
    assert applied.exit_code == 0, applied.output
    assert resource["handle"]["job"] == "e2e-web-0"
    assert resource["endpoint"]["host"] == "e2e-web-0.bench.svc"
    assert SECRET not in state_text
    assert (workdir / "state" / "e2e" / "web-0" / "manifest.yaml").is_file()

    planned = ubench("plan", str(stack), "--detailed-exitcode")
    outputs = ubench("output", "web.url", "-s", str(stack))
    assert planned.exit_code == 0, planned.output
    assert outputs.stdout.strip() == "http://e2e-web-0.bench.svc:8000"

    fake.pod_logs["e2e-web-0-pod"] = "starting\nserving on 8000\nGET / 200\n"
    logs = ubench("logs", "web", "-s", str(stack), "-n", "2")
    assert logs.exit_code == 0, logs.output
    assert logs.stdout == "serving on 8000\nGET / 200\n"
    log_calls = [r for r in fake.requests if r.plural == "log"]
    assert [r.query.get("tailLines") for r in log_calls] == ["2"]
    assert [r.query.get("container") for r in log_calls] == ["service"]

    destroyed = ubench("destroy", str(stack), "--auto-approve")
    assert destroyed.exit_code == 0, destroyed.output
    assert fake.objects == {}
