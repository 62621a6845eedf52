"""Pydantic models of a stack file.

The JSON Schema in ``schemas/stack.schema.json`` is generated from these models
(``ubench schema``), so editors validate stacks with the same rules as the loader.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,62}$"
"""Names of stacks, services and recipes: they become file names and job names."""

ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
PORT_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,30}$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
SlurmWord = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,:&|!()\[\]+=@-]+$")]
"""A value of an #SBATCH option: no space, quote or line break to escape it."""
SbatchOption = Annotated[str, Field(pattern=r"^--?[A-Za-z][A-Za-z0-9-]*(=[^\s\"']+)?$")]
"""A raw sbatch option such as --reservation=x, written into an #SBATCH line."""
EnvName = Annotated[str, Field(pattern=ENV_NAME_PATTERN)]
PortName = Annotated[str, Field(pattern=PORT_NAME_PATTERN)]
PortNumber = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Runtime(StrEnum):
    """Program that the batch script starts the service's command with."""

    HOST = "host"
    """Run the command directly on the node."""
    APPTAINER = "apptainer"
    """Run the command inside ``image`` with ``apptainer exec``."""
    CHARLIECLOUD = "charliecloud"
    """Run the command inside an image directory or squashfs with ``ch-run``."""


class HealthType(StrEnum):
    """Kind of readiness probe ubench runs from where it runs."""

    HTTP = "http"
    TCP = "tcp"
    COMMAND = "command"


class GpuDirective(StrEnum):
    """Slurm option used to request GPUs; sites and Slurm versions differ."""

    GRES = "gres"
    """``--gres=gpu[:type]:N`` per node."""
    GPUS = "gpus"
    """``--gpus=[type:]N`` for the whole job."""
    GPUS_PER_NODE = "gpus-per-node"
    """``--gpus-per-node=[type:]N``."""


class HealthCheck(_Model):
    """Readiness probe: apply waits for it before starting dependents."""

    type: HealthType = HealthType.HTTP
    path: str = Field("/", description="HTTP path to GET; any 2xx or 3xx is healthy.")
    port: str | int | None = Field(
        None, description="Port name or number; default: the service's first port."
    )
    command: str | None = Field(
        None,
        description="Shell command run where ubench runs; exit 0 is healthy. "
        "HOST and PORT are set in its environment.",
    )
    interval_s: float = Field(2.0, gt=0, description="First wait between probes.")
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one probe.")
    retries: int = Field(60, ge=1, description="Probes before giving up.")
    initial_delay_s: float = Field(0.0, ge=0, description="Wait before the first.")

    @model_validator(mode="after")
    def _command_needs_command(self) -> HealthCheck:
        if self.type is HealthType.COMMAND and not self.command:
            raise ValueError("a health check of type 'command' needs 'command'")
        return self


class Metrics(_Model):
    """A Prometheus endpoint; apply lists it in file_sd target files."""

    port: str | int | None = Field(
        None, description="Port name or number; default: the service's first port."
    )
    path: str = "/metrics"
    labels: dict[str, str] = Field(default_factory=dict)


class Resources(_Model):
    """Resources a service requests from the scheduler, per job."""

    nodes: int = Field(1, ge=1)
    cpus: int = Field(1, ge=1, description="CPUs per task.")
    mem_gb: float | None = Field(None, gt=0, description="Memory per node in GiB.")
    gpus: int = Field(0, ge=0, description="GPUs per node.")
    gpu_type: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$")
    time_limit: str | int | None = Field(
        None,
        description="Slurm time limit: minutes (90), H:MM:SS or D-HH:MM:SS; quote "
        "forms with colons, since YAML 1.1 reads 1:30:00 as a number.",
    )
    tasks_per_node: int = Field(1, ge=1)


class EnvValue(_Model):
    """An environment value that is secret or comes from the applier's shell."""

    value: str | None = None
    from_env: str | None = Field(
        None,
        pattern=ENV_NAME_PATTERN,
        description="Name of a variable in the environment of the person applying.",
    )
    default: str | None = Field(
        None, description="Value used when the from_env variable is not set."
    )
    secret: bool = Field(
        False,
        description="Keep the value out of plans, state, logs and rendered scripts.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvValue:
        if (self.value is None) == (self.from_env is None):
            raise ValueError("set exactly one of 'value' and 'from_env'")
        return self


class Bind(_Model):
    """A host path made visible inside the container."""

    source: str = Field(min_length=1)
    target: str | None = Field(None, description="Path inside; default: source.")
    read_only: bool = False


def _parse_bind(value: Any) -> Any:
    """Accept the short form ``SRC[:DST[:ro|rw]]`` used by apptainer --bind."""
    if not isinstance(value, str):
        return value
    parts = value.split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"invalid bind {value!r}: write SOURCE[:TARGET[:ro]]")
    read_only = False
    if len(parts) == 3:
        if parts[2] not in ("ro", "rw"):
            raise ValueError(f"invalid bind option {parts[2]!r}: use 'ro' or 'rw'")
        read_only = parts[2] == "ro"
    target = parts[1] if len(parts) >= 2 and parts[1] else None
    return {"source": parts[0], "target": target, "read_only": read_only}


class SlurmOptions(_Model):
    """Per-service Slurm settings that override the target's cluster profile."""

    partition: SlurmWord | None = None
    qos: SlurmWord | None = None
    account: SlurmWord | None = None
    constraint: SlurmWord | None = None
    exclusive: bool | None = None
    endpoint_node: int | None = Field(
        None,
        ge=0,
        description="Index in the job's node list of the node whose address is "
        "the endpoint; default 0, the first node.",
    )
    extra_directives: list[SbatchOption] = Field(
        default_factory=list, description="Raw sbatch options, e.g. --reservation=x."
    )


class ServiceFields(_Model):
    """Fields shared by recipes and services; a service overrides its recipe."""

    description: str | None = None
    params: dict[str, str | int | float | bool] | None = Field(
        None,
        description="Recipe parameters, used in templates as params.NAME; a "
        "service overrides them one by one.",
    )
    image: str | None = Field(
        None,
        description="Container image: docker://..., a .sif path (apptainer), an "
        "image directory or squashfs file (charliecloud).",
    )
    runtime: Runtime | None = Field(
        None, description="Default: apptainer when image is set, else host."
    )
    command: str | list[str] | None = Field(
        None,
        description="A list is executed as argv; a string is a bash script.",
    )
    args: list[str] | None = Field(None, description="Appended to a list command.")
    environment: dict[EnvName, str | int | EnvValue] | None = None
    ports: dict[PortName, PortNumber | Literal["auto"]] | None = Field(
        None,
        description="Named ports (1-65535), or 'auto' for a stable port derived "
        "from the stack, service and port names.",
    )
    binds: (
        list[
            Annotated[
                Bind,
                BeforeValidator(_parse_bind, json_schema_input_type=str | Bind),
            ]
        ]
        | None
    ) = Field(None, description="Binds as SOURCE[:TARGET[:ro]] or objects.")
    workdir: str | None = None
    resources: Resources | None = None
    health: HealthCheck | None = None
    depends_on: list[Name] | None = None
    replicas: int | None = Field(None, ge=1, le=256)
    outputs: dict[str, str] | None = Field(
        None,
        description="Values published after the service is healthy; templates "
        "may use host, port, ports, service and var.",
    )
    metrics: Metrics | None = Field(
        None,
        description="Metrics endpoint; apply writes it to the stack's file_sd "
        "directory (template value stack.file_sd_dir) while the service runs.",
    )
    slurm: SlurmOptions | None = None


class Recipe(ServiceFields):
    """A reusable service definition."""


class Service(ServiceFields):
    """One service of the stack, optionally based on a recipe."""

    recipe: str | None = Field(
        None,
        description="Name of a recipe in this stack's 'recipes' or in ubench's "
        "built-in library.",
    )


class TargetConfig(_Model):
    """Target settings: where and how the stack's services run."""

    kind: Literal["local", "slurm", "kubernetes"] = "local"
    host: str | None = Field(
        None, description="local: address services are reached at (127.0.0.1)."
    )
    workdir: str | None = Field(
        None,
        description="Directory for scripts, logs and run data; default: beside the "
        "state file. On Slurm it must be visible from the compute nodes.",
    )
    kill_wait_s: int = Field(
        10, ge=0, description="Seconds between SIGTERM and SIGKILL on stop."
    )
    profile: str | None = Field(
        None, description="slurm: cluster profile name (e.g. meluxina) or file."
    )
    account: SlurmWord | None = None
    partition: SlurmWord | None = None
    gpu_partition: SlurmWord | None = None
    qos: SlurmWord | None = None
    time_limit: str | int | None = None
    modules: list[str] | None = None
    gpu_directive: GpuDirective | None = None
    image_cache: str | None = Field(
        None, description="Directory for pulled images (APPTAINER_CACHEDIR)."
    )
    extra_directives: list[SbatchOption] | None = None
    namespace: str | None = Field(None, description="kubernetes: namespace.")


class Stack(_Model):
    """A stack file: a named set of services deployed together to one target."""

    name: Name
    description: str | None = None
    target: TargetConfig = Field(default_factory=TargetConfig)
    variables: dict[str, str | int | float | bool] = Field(default_factory=dict)
    recipes: dict[Name, Recipe | str] = Field(
        default_factory=dict,
        description="Inline recipes, or a path to a recipe YAML file relative to "
        "the stack file.",
    )
    services: dict[Name, Service] = Field(min_length=1)
