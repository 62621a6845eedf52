"""Resolve service definitions into the desired spec of each resource.

A resource is one replica of one service, addressed ``service.NAME[INDEX]``. Its
spec is canonical: every value that two spellings could express (key order,
trailing newlines, ``8000`` versus ``"8000"``, ``90`` versus ``"1:30:00"``) has
one form, so a plan right after an apply finds nothing to change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
import jinja2.sandbox

from ubench_iac.errors import StackError
from ubench_iac.loader import LoadedStack, ServiceDefinition, effective_runtime
from ubench_iac.models import EnvValue, HealthCheck, Resources
from ubench_iac.slurm.timelimit import TimeLimitError, parse_time_limit
from ubench_iac.yamlload import Path as ValuePath

UNKNOWN = "(known after apply)"
"""Placeholder for a value that only exists once a dependency runs."""

IN_PLACE_FIELDS = frozenset({"description", "health", "metrics", "outputs"})
"""Spec fields that ubench alone uses, so a change needs no restart."""

AUTO_PORT_BASE = 20000
AUTO_PORT_SPAN = 20000

_TEMPLATE_HELP = (
    "templates can use var.NAME (declared under variables:), params.NAME, "
    "services.DEP.outputs.KEY / .host / .port (DEP must be in depends_on), "
    "port, ports.NAME, service.name, service.index, service.run_dir, stack.name"
)


class _Namespace(dict[str, Any]):
    """A template namespace that names itself in 'undefined' errors."""

    def __init__(self, label: str, values: Mapping[str, Any]) -> None:
        super().__init__(values)
        self.label = label


class _StrictUndefined(jinja2.StrictUndefined):
    """Undefined values fail with 'NAME is undefined in NAMESPACE'."""

    @property
    def _undefined_message(self) -> str:
        owner = self._undefined_obj
        label = getattr(owner, "label", None)
        if label is None:
            return super()._undefined_message
        return f"{self._undefined_name!r} is undefined in {label}"


_jinja = jinja2.sandbox.SandboxedEnvironment(
    undefined=_StrictUndefined, autoescape=False, keep_trailing_newline=True
)


@dataclasses.dataclass(frozen=True)
class DesiredResource:
    """Desired state of one replica of a service, fully resolved."""

    address: str
    service: str
    index: int
    spec: dict[str, Any]
    """Canonical spec; secret values are replaced by a keyed hash."""
    spec_hash: str
    secrets: Mapping[str, str]
    """Secret environment values; never written to state, plans or logs."""
    unknown: tuple[str, ...]
    """Spec fields that depend on values known only after apply."""
    dependencies: tuple[str, ...]
    """Addresses of the resources this one waits for."""
    run_dir: Path
    definition: ServiceDefinition = dataclasses.field(repr=False, compare=False)

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.spec["ports"])

    @property
    def primary_port(self) -> int | None:
        """Return the first port in declared order; the spec sorts port names."""
        declared = list(self.definition.service.ports or {})
        return self.spec["ports"][declared[0]] if declared else None


@dataclasses.dataclass(frozen=True)
class DependencyView:
    """Values of a dependency's replica 0 that its dependents may use."""

    host: str
    port: int | None
    """The dependency's first declared port."""
    ports: Mapping[str, int]
    outputs: Mapping[str, str]

    def as_context(self, name: str = "") -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "ports": _Namespace(f"services.{name}.ports", self.ports),
            "outputs": _Namespace(f"services.{name}.outputs", self.outputs),
        }


def file_sd_dir(run_root: Path) -> Path:
    """Return the directory of the stack's Prometheus file_sd target files."""
    return run_root / "file_sd"


def address_of(service: str, index: int) -> str:
    """Return the resource address of one replica, e.g. ``service.web[0]``."""
    return f"service.{service}[{index}]"


def spec_hash(spec: Mapping[str, Any]) -> str:
    """Hash a canonical spec; equal specs always give equal hashes."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def secret_digest(value: str, key: str) -> str:
    """Return a keyed hash of a secret, stored in place of its value."""
    digest = hmac.new(key.encode(), value.encode(), hashlib.sha256).hexdigest()
    return f"(secret hmac-sha256:{digest[:16]})"


def auto_port(stack: str, service: str, port_name: str) -> int:
    """Pick a stable port for ``ports: {NAME: auto}`` from the names alone."""
    seed = f"{stack}/{service}/{port_name}".encode()
    number = int.from_bytes(hashlib.sha256(seed).digest()[:4], "big")
    return AUTO_PORT_BASE + number % AUTO_PORT_SPAN


class Resolver:
    """Turn a loaded stack into desired resources, one service at a time.

    Each resource gets its run directory under ``run_root``. ``secret_key``
    keys the hashes stored for secret values, and
    ``environ`` supplies ``from_env`` values (default: this process's).
    """

    def __init__(
        self,
        loaded: LoadedStack,
        run_root: Path,
        secret_key: str,
        environ: Mapping[str, str] | None = None,
        recorded_ports: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.loaded = loaded
        self.run_root = run_root
        self.secret_key = secret_key
        self.environ = os.environ if environ is None else environ
        self.recorded_ports = recorded_ports or {}
        self._ports = self._assign_ports()

    def replicas(self, service: str) -> int:
        return self.loaded.services[service].service.replicas or 1

    def resolve(
        self,
        service: str,
        index: int,
        dependencies: Mapping[str, DependencyView | None],
    ) -> DesiredResource:
        """Resolve one replica; a dependency view of None means 'not yet known'."""
        definition = self.loaded.services[service]
        fields = definition.service
        address = address_of(service, index)
        run_dir = self.run_root / f"{service}-{index}"
        ports = self._ports[address]
        context = {
            "var": _Namespace("var", self.loaded.stack.variables),
            "params": _Namespace("params", fields.params or {}),
            "stack": {
                "name": self.loaded.name,
                "file_sd_dir": str(file_sd_dir(self.run_root)),
                "workdir": str(self.run_root),
            },
            "service": {
                "name": service,
                "index": index,
                "replicas": self.replicas(service),
                "address": address,
                "run_dir": str(run_dir),
            },
            "port": next(iter(ports.values()), None),
            "ports": ports,
            "services": _Namespace(
                "services",
                {
                    name: _UnknownView() if view is None else view.as_context(name)
                    for name, view in dependencies.items()
                },
            ),
        }
        render = _FieldRenderer(definition, context)

        environment, secrets = self._environment(definition, render)
        spec: dict[str, Any] = {
            "description": fields.description,
            "image": render.text(("image",), fields.image),
            "runtime": str(effective_runtime(fields)),
            "command": render.command(),
            "environment": environment,
            "ports": ports,
            "binds": [
                {
                    "source": render.text(("binds", i, "source"), bind.source),
                    "target": render.text(("binds", i, "target"), bind.target),
                    "read_only": bind.read_only,
                }
                for i, bind in enumerate(fields.binds or [])
            ],
            "workdir": render.text(("workdir",), fields.workdir),
            "resources": self._resources(definition),
            "health": self._health(definition, render, ports),
            "metrics": self._metrics(definition, ports),
            "outputs": dict(sorted((fields.outputs or {}).items())),
            "slurm": (
                fields.slurm.model_dump(mode="json", exclude_defaults=True)
                if fields.slurm
                else {}
            ),
        }
        spec = _canonical(spec)
        dependency_addresses = tuple(
            address_of(name, i)
            for name in fields.depends_on or []
            for i in range(self.replicas(name))
        )
        return DesiredResource(
            address=address,
            service=service,
            index=index,
            spec=spec,
            spec_hash=spec_hash(spec),
            secrets=secrets,
            unknown=tuple(sorted(render.unknown)),
            dependencies=dependency_addresses,
            run_dir=run_dir,
            definition=definition,
        )

    def _environment(
        self, definition: ServiceDefinition, render: _FieldRenderer
    ) -> tuple[dict[str, str], dict[str, str]]:
        environment: dict[str, str] = {}
        secrets: dict[str, str] = {}
        for name, value in (definition.service.environment or {}).items():
            path: ValuePath = ("environment", name)
            if not isinstance(value, EnvValue):
                environment[name] = render.text(path, str(value)) or ""
                continue
            if value.from_env is not None:
                if value.from_env in self.environ:
                    text = self.environ[value.from_env]
                elif value.default is not None:
                    text = value.default
                else:
                    raise definition.error(
                        path,
                        f"environment variable {value.from_env} is not set",
                        f"export {value.from_env}=... before running ubench, or "
                        "give the value a 'default'",
                    )
            else:
                text = render.text(path, value.value) or ""
            if value.secret:
                secrets[name] = text
                environment[name] = secret_digest(text, self.secret_key)
            else:
                environment[name] = text
        return environment, secrets

    def _resources(self, definition: ServiceDefinition) -> dict[str, Any]:
        resources = definition.service.resources or Resources()
        raw_limit = resources.time_limit
        if raw_limit is None:
            raw_limit = self.loaded.stack.target.time_limit
        try:
            limit_s = None if raw_limit is None else parse_time_limit(raw_limit)
        except TimeLimitError as exc:
            raise definition.error(("resources", "time_limit"), str(exc)) from None
        data = resources.model_dump(mode="json", exclude={"time_limit"})
        data["time_limit_s"] = limit_s
        return data

    def _health(
        self,
        definition: ServiceDefinition,
        render: _FieldRenderer,
        ports: Mapping[str, int],
    ) -> dict[str, Any] | None:
        health = definition.service.health
        if health is None:
            return None
        data = health.model_dump(mode="json")
        data["path"] = render.text(("health", "path"), health.path)
        data["command"] = render.text(("health", "command"), health.command)
        data["port"] = _health_port(definition, health, ports)
        return data

    def _claim_fixed(
        self, fixed: dict[int, str], port: int, service: str, port_name: str
    ) -> None:
        """Reject a fixed port that two services could bind on one node.

        Services that each ask for whole nodes (slurm.exclusive) never share
        one, so they may use the same port.
        """
        other = fixed.get(port)
        definition = self.loaded.services[service]
        if other is not None and other != service:
            other_definition = self.loaded.services[other]
            if not (_exclusive(definition) and _exclusive(other_definition)):
                raise definition.error(
                    ("ports", port_name),
                    f"port {port} is also fixed for service '{other}', and both "
                    "could run on the same node",
                    "use 'auto' or another port for one of them",
                )
        fixed[port] = service

    def _metrics(
        self, definition: ServiceDefinition, ports: Mapping[str, int]
    ) -> dict[str, Any] | None:
        metrics = definition.service.metrics
        if metrics is None:
            return None
        port = metrics.port
        if isinstance(port, str):
            if port not in ports:
                raise definition.error(
                    ("metrics", "port"),
                    f"unknown port name '{port}'",
                    f"use one of the service's ports: {', '.join(ports) or '(none)'}",
                )
            port = ports[port]
        elif port is None:
            port = next(iter(ports.values()), None)
            if port is None:
                raise definition.error(
                    ("metrics",), "metrics need a port", "declare 'ports:'"
                )
        return {"port": port, "path": metrics.path, "labels": dict(metrics.labels)}

    def _assign_ports(self) -> dict[str, dict[str, int]]:
        """Give every resource concrete port numbers, keeping recorded ones."""
        assigned: dict[str, dict[str, int]] = {}
        taken: set[int] = set()
        fixed: dict[int, str] = {}
        for name in self.loaded.order:
            declared = self.loaded.services[name].service.ports or {}
            for index in range(self.replicas(name)):
                address = address_of(name, index)
                recorded = self.recorded_ports.get(address, {})
                ports: dict[str, int] = {}
                for port_name, value in declared.items():
                    if isinstance(value, int):
                        # A fixed port on a replicated service: replica i gets +i,
                        # so replicas on one host do not collide.
                        ports[port_name] = value + index
                        self._claim_fixed(fixed, value + index, name, port_name)
                        continue
                    port = recorded.get(port_name) or auto_port(
                        self.loaded.name, f"{name}-{index}", port_name
                    )
                    while port in taken:
                        port = AUTO_PORT_BASE + (port - AUTO_PORT_BASE + 1) % (
                            AUTO_PORT_SPAN
                        )
                    ports[port_name] = port
                    taken.add(port)
                assigned[address] = ports
        return assigned


def _exclusive(definition: ServiceDefinition) -> bool:
    slurm = definition.service.slurm
    return bool(slurm and slurm.exclusive)


def _health_port(
    definition: ServiceDefinition, health: HealthCheck, ports: Mapping[str, int]
) -> int | None:
    if isinstance(health.port, int):
        return health.port
    if isinstance(health.port, str):
        if health.port not in ports:
            raise definition.error(
                ("health", "port"),
                f"unknown port name '{health.port}'",
                f"use one of the service's ports: {', '.join(ports) or '(none)'}",
            )
        return ports[health.port]
    if health.type.value in ("http", "tcp") and not ports:
        raise definition.error(
            ("health",),
            f"a {health.type.value} health check needs a port",
            "declare 'ports:' or set health.port",
        )
    return next(iter(ports.values()), None)


def _undefined_fix(message: str) -> str:
    name = message.split("'")[1] if message.count("'") >= 2 else "NAME"
    if message.endswith("undefined in var"):
        return f"declare '{name}' under variables:, or pass --var {name}=VALUE"
    if message.endswith("undefined in services"):
        return (
            f"add '{name}' to depends_on to use its outputs (and check that a "
            "service of that name exists)"
        )
    if message.endswith("undefined in params"):
        return f"set params.{name} in the service or its recipe"
    if ".outputs" in message:
        return "use one of the outputs the dependency declares under outputs:"
    return _TEMPLATE_HELP


class _UnknownView:
    """A dependency whose host and outputs exist only after it is applied."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _UnknownMapping() if name in ("outputs", "ports") else UNKNOWN

    def __getitem__(self, name: str) -> Any:
        return self.__getattr__(name)


class _UnknownMapping:
    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return UNKNOWN

    def __getitem__(self, name: str) -> str:
        return UNKNOWN


class _FieldRenderer:
    """Render Jinja2 templates in one service's fields, with errors that point."""

    def __init__(self, definition: ServiceDefinition, context: dict[str, Any]) -> None:
        self.definition = definition
        self.context = context
        self.unknown: set[str] = set()

    def text(self, path: ValuePath, value: str | None) -> str | None:
        if value is None or ("{{" not in value and "{%" not in value):
            return value
        try:
            rendered = _jinja.from_string(value).render(self.context)
        except jinja2.TemplateSyntaxError as exc:
            fix = "fix the syntax"
            if "{#" in value:
                fix = (
                    "Jinja2 reads '{#' as the start of a comment, as in bash's "
                    "${#VAR}: write {{ '{#' }} instead, or wrap the script in "
                    "{% raw %}...{% endraw %}"
                )
            raise self.definition.error(
                path, f"invalid template {value!r}: {exc.message}", fix
            ) from None
        except (jinja2.UndefinedError, jinja2.exceptions.SecurityError) as exc:
            message = exc.message or str(exc)
            raise self.definition.error(
                path, f"invalid template {value!r}: {message}", _undefined_fix(message)
            ) from None
        if UNKNOWN in rendered:
            self.unknown.add(".".join(str(part) for part in path))
        return rendered

    def command(self) -> dict[str, Any]:
        fields = self.definition.service
        if fields.command is None and not fields.args:
            return {}
        if isinstance(fields.command, str):
            return {"script": self.text(("command",), fields.command)}
        argv = [
            self.text(("command", i), item) or ""
            for i, item in enumerate(fields.command or [])
        ]
        argv += [
            self.text(("args", i), item) or ""
            for i, item in enumerate(fields.args or [])
        ]
        return {"argv": argv}


def _canonical(value: Any) -> Any:
    """Give every value one spelling: sorted keys, no trailing newlines, ints."""
    if isinstance(value, Mapping):
        return {str(key): _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, list | tuple):
        return [_canonical(item) for item in value]
    if isinstance(value, str):
        return value.replace("\r\n", "\n").rstrip("\n")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def render_outputs(
    resource: DesiredResource, host: str, variables: Mapping[str, Any]
) -> dict[str, str]:
    """Render a resource's outputs once its host is known."""
    context = {
        "host": host,
        "port": resource.primary_port,
        "ports": resource.ports,
        "service": {
            "name": resource.service,
            "index": resource.index,
            "address": resource.address,
            "run_dir": str(resource.run_dir),
        },
        "var": dict(variables),
        "params": dict(resource.definition.service.params or {}),
    }
    outputs: dict[str, str] = {}
    for key, template in resource.spec["outputs"].items():
        try:
            outputs[key] = _jinja.from_string(template).render(context)
        except jinja2.TemplateError as exc:
            raise resource.definition.error(
                ("outputs", key),
                f"invalid template {template!r}: {exc}",
                _TEMPLATE_HELP,
            ) from None
    return outputs


__all__ = [
    "IN_PLACE_FIELDS",
    "UNKNOWN",
    "DependencyView",
    "DesiredResource",
    "Resolver",
    "StackError",
    "address_of",
    "auto_port",
    "render_outputs",
    "secret_digest",
    "spec_hash",
]
