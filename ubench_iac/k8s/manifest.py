"""Kubernetes manifests: object names, YAML-safe values, Job and Service.

The manifest is a pure function of the resolved resource; the golden files in
tests/golden/k8s pin it.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Mapping
from functools import cache
from typing import Any

import jinja2

from ubench_iac.errors import RenderError
from ubench_iac.models import TargetConfig
from ubench_iac.paths import data_dir
from ubench_iac.resolve import DesiredResource

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


def lineage_of_prefix(prefix: str) -> str | None:
    """Return the lineage a token prefix pins, such as ``ubench:<lineage>:``."""
    parts = prefix.split(":")
    if len(parts) >= 3 and parts[0] == "ubench" and parts[1]:
        return parts[1]
    return None


def lineage_selector(lineage: str | None) -> str:
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
