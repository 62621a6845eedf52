"""Render batch scripts from the Jinja2 templates in ``templates/``.

The output is a pure function of the resolved resource and the target settings:
the same input always renders the same bytes, which the golden files pin. Every
value that reaches a script goes through ``shlex.quote`` (the ``q`` filter), so
spaces, quotes, ``;``, ``$``, newlines or unicode never become shell syntax.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
from collections.abc import Sequence
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2

from ubench_iac.errors import RenderError
from ubench_iac.models import GpuDirective, TargetConfig
from ubench_iac.paths import data_dir
from ubench_iac.resolve import DesiredResource
from ubench_iac.slurm.timelimit import format_time_limit

_UNSAFE_DIRECTIVE = re.compile(r'["\n\r\x00]')


@dataclasses.dataclass(frozen=True)
class ScriptPaths:
    """Paths of a rendered script and the files it writes, on the running node."""

    script: Path
    log: Path
    env_file: Path
    """0600 file with secret and comma-holding values, read at run time."""


@cache
def environment() -> jinja2.Environment:
    """Return the Jinja2 environment for ubench's own templates."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(data_dir("templates"))),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["q"] = quote
    return env


def quote(value: Any) -> str:
    """Quote one value as a single shell word."""
    return shlex.quote(str(value))


def render_template(name: str, context: dict[str, Any]) -> str:
    """Render template ``name`` with ``context``; errors name the template."""
    try:
        return environment().get_template(name).render(context)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {name}: {exc}") from exc


def render_batch_script(
    resource: DesiredResource,
    config: TargetConfig,
    token: str,
    paths: ScriptPaths,
) -> str:
    """Render the batch script that runs one resource (Slurm and local alike)."""
    return render_template(
        "sbatch.sh.j2", script_context(resource, config, token, paths)
    )


def script_context(
    resource: DesiredResource,
    config: TargetConfig,
    token: str,
    paths: ScriptPaths,
) -> dict[str, Any]:
    """Build the template context of one resource's batch script."""
    spec = resource.spec
    resources = spec["resources"]
    inline_env, file_env = split_environment(resource)
    image_cache = config.image_cache or str(paths.script.parent.parent / "images")
    return {
        "token": token,
        "address": resource.address,
        "directives": slurm_directives(resource, config, token, paths),
        "modules": config.modules or [],
        "environment": inline_env,
        "env_file": str(paths.env_file) if file_env else None,
        "run_dir": str(resource.run_dir),
        "workdir": spec["workdir"] or str(resource.run_dir),
        "runtime": spec["runtime"],
        "argv": spec["command"].get("argv"),
        "script": spec["command"].get("script"),
        "image": spec["image"],
        "image_file": image_file(spec["image"], image_cache),
        "image_cache": image_cache,
        "binds": spec["binds"],
        "gpus": resources["gpus"],
        "nodes": resources["nodes"],
        "tasks_per_node": resources["tasks_per_node"],
        "cpus": resources["cpus"],
    }


def split_environment(
    resource: DesiredResource,
) -> tuple[list[tuple[str, str]], list[str]]:
    """Split the environment into values written inline and names read from file.

    Secrets never appear in a script. Values holding a comma go to the file too,
    because ``apptainer --env`` splits its argument on commas.
    """
    inline: list[tuple[str, str]] = []
    from_file: list[str] = []
    for name, value in resource.spec["environment"].items():
        if name in resource.secrets or "," in value:
            from_file.append(name)
        else:
            inline.append((name, value))
    return inline, from_file


def env_file_text(resource: DesiredResource) -> str:
    """Return the 0600 env file: ``NAME='value'`` lines for a shell to source."""
    _, names = split_environment(resource)
    lines = []
    for name in names:
        value = resource.secrets.get(name, resource.spec["environment"][name])
        lines.append(f"{name}={shlex.quote(value)}\n")
    return "".join(lines)


def image_file(image: str | None, cache_dir: str) -> str | None:
    """Return the local .sif path an image is pulled to, or the image path itself."""
    if image is None:
        return None
    for scheme in ("docker://", "oras://", "library://"):
        if image.startswith(scheme):
            name = re.sub(r"[^A-Za-z0-9._-]+", "_", image.removeprefix(scheme))
            return str(PurePosixPath(cache_dir) / f"{name}.sif")
    return image


def slurm_directives(
    resource: DesiredResource,
    config: TargetConfig,
    token: str,
    paths: ScriptPaths,
) -> list[str]:
    """Return the ``#SBATCH`` options, one for each value that is set.

    Slurm 21.08 and later reject an empty value such as ``--gres=``, so an unset
    value gets no directive at all.
    """
    spec = resource.spec
    resources = spec["resources"]
    slurm = spec["slurm"]
    gpus = resources["gpus"]
    options: list[tuple[str, Any]] = [
        ("job-name", token),
        ("comment", token),
        ("output", paths.log),
        ("open-mode", "append"),
        ("nodes", resources["nodes"]),
        ("ntasks-per-node", resources["tasks_per_node"]),
        ("cpus-per-task", resources["cpus"]),
        ("mem", _mem(resources["mem_gb"])),
        (
            "time",
            None
            if resources["time_limit_s"] is None
            else format_time_limit(resources["time_limit_s"]),
        ),
        ("account", slurm.get("account") or config.account),
        ("partition", _partition(slurm, config, gpus)),
        ("qos", slurm.get("qos") or config.qos),
        ("constraint", slurm.get("constraint")),
    ]
    if gpus:
        options.append(_gpu_option(config.gpu_directive, gpus, resources["gpu_type"]))
    lines = [f"--{flag}={_directive_value(flag, v)}" for flag, v in options if v]
    if slurm.get("exclusive"):
        lines.append("--exclusive")
    for extra in [*(config.extra_directives or []), *slurm.get("extra_directives", [])]:
        lines.append(_directive_value("extra_directives", extra))
    return lines


def _partition(slurm: dict[str, Any], config: TargetConfig, gpus: int) -> str | None:
    if slurm.get("partition"):
        return str(slurm["partition"])
    if gpus and config.gpu_partition:
        return config.gpu_partition
    return config.partition


def _gpu_option(
    style: GpuDirective | None, gpus: int, gpu_type: str | None
) -> tuple[str, str]:
    typed = f"{gpu_type}:{gpus}" if gpu_type else str(gpus)
    if style is GpuDirective.GPUS:
        return ("gpus", typed)
    if style is GpuDirective.GPUS_PER_NODE:
        return ("gpus-per-node", typed)
    return ("gres", f"gpu:{typed}")


def _mem(mem_gb: float | None) -> str | None:
    if mem_gb is None:
        return None
    megabytes = round(mem_gb * 1024)
    return f"{megabytes // 1024}G" if megabytes % 1024 == 0 else f"{megabytes}M"


def _directive_value(flag: str, value: Any) -> str:
    text = str(value)
    if _UNSAFE_DIRECTIVE.search(text):
        raise RenderError(
            f"#SBATCH {flag}: value {text!r} contains a quote or a line break, "
            "which sbatch cannot read in a directive"
        )
    return f'"{text}"' if " " in text else text


def render_all(resources: Sequence[DesiredResource], render_one: Any) -> dict[str, str]:
    """Render every resource with ``render_one``; used by plan to fail early."""
    return {resource.address: render_one(resource) for resource in resources}
