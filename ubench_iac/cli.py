"""The ``ubench`` command line: one thin command per library call."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import click
from loguru import logger

from ubench_iac import __version__
from ubench_iac.apply import ApplyOptions, read_log_tail
from ubench_iac.errors import StackError, StackErrors, UbenchError
from ubench_iac.health import probe
from ubench_iac.output import format_expiring, format_plan, plan_json
from ubench_iac.plan import Plan
from ubench_iac.schema import dump, recipe_schema, stack_schema
from ubench_iac.state import force_unlock, read_lock, release_lock
from ubench_iac.workspace import (
    Workspace,
    plan_from_file,
    read_plan_file,
    save_plan,
)

STACK_ENV = "UBENCH_STACK"


class _Context:
    verbose: bool = False


def _configure_logging(verbose: bool) -> None:
    """Add the CLI's log sink; library code never adds sinks itself."""
    logger.remove()
    if verbose:
        logger.add(
            sys.stderr, level="DEBUG", format="{time:HH:mm:ss} {level} {message}"
        )
    else:
        logger.add(sys.stderr, level="INFO", format=_short_format)


def _short_format(record: Any) -> str:
    if record["level"].no >= 30:
        return "{level}: {message}\n"
    return "{message}\n"


def _parse_vars(values: Sequence[str]) -> dict[str, str]:
    variables = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{item!r}: write NAME=VALUE", param_hint="--var")
        variables[name] = value
    return variables


def _stack_argument(function: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument(
        "stack", type=click.Path(dir_okay=False), envvar=STACK_ENV, required=True
    )(function)


def _common_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option(
        "--state",
        "state_path",
        type=click.Path(dir_okay=False),
        help="State file; default state/<stack name>.json.",
    )(function)
    function = click.option(
        "--var",
        "variables",
        multiple=True,
        metavar="NAME=VALUE",
        help="Override a stack variable; repeatable.",
    )(function)
    return function


def _open(stack: str, state_path: str | None, variables: Sequence[str]) -> Workspace:
    return Workspace.open(stack, state_path, _parse_vars(variables))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ubench")
@click.option("-v", "--verbose", is_flag=True, help="Debug logs and tracebacks.")
def cli(verbose: bool) -> None:
    """Deploy benchmark services declaratively: plan, apply, destroy.

    A stack file (YAML) lists services. ubench runs each as a local process
    group, a Slurm job or a Kubernetes workload, records it in a state file, and
    keeps the deployment matching the stack file.
    """
    _Context.verbose = verbose
    _configure_logging(verbose)


@cli.command()
@_stack_argument
@_common_options
def validate(stack: str, state_path: str | None, variables: Sequence[str]) -> None:
    """Check a stack file and render every script, without touching anything."""
    workspace = _open(stack, state_path, variables)
    plan = _plan_offline(workspace)
    click.echo(
        f"{stack}: valid; {_count(len(workspace.loaded.services), 'service')}, "
        f"{_count(len(plan.changes), 'resource')}, target {workspace.target.kind}."
    )


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _plan_offline(workspace: Workspace) -> Plan:
    from ubench_iac.plan import make_plan

    return make_plan(workspace.loaded, None, workspace.target)


@cli.command()
@_stack_argument
@_common_options
@click.option("--json", "as_json", is_flag=True, help="Print Terraform-style JSON.")
@click.option(
    "-out", "--out", "out", type=click.Path(dir_okay=False), help="Save the plan."
)
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there are no changes, 1 on error, 2 when there are changes.",
)
@click.option("--destroy", is_flag=True, help="Plan to destroy every resource.")
@click.option("--show-scripts", is_flag=True, help="Print each rendered script.")
@click.option(
    "--expiring-within",
    "expiring_within_min",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="List running jobs that reach their time limit within this many minutes.",
)
@click.option(
    "--renew", is_flag=True, help="Plan to replace the jobs listed as expiring."
)
@click.option(
    "--validate",
    "validate_jobs",
    is_flag=True,
    help="Ask the scheduler to check every job to start (sbatch --test-only).",
)
def plan(
    stack: str,
    state_path: str | None,
    variables: Sequence[str],
    as_json: bool,
    out: str | None,
    detailed_exitcode: bool,
    destroy: bool,
    show_scripts: bool,
    expiring_within_min: int,
    renew: bool,
    validate_jobs: bool,
) -> None:
    """Show what apply would change. Needs no lock and changes nothing.

    With --detailed-exitcode the exit code is 0 when there are no changes,
    1 on error and 2 when there are changes.
    """
    workspace = _open(stack, state_path, variables)
    within_s = expiring_within_min * 60
    the_plan = workspace.plan(destroy=destroy, expiring_within_s=within_s, renew=renew)
    if validate_jobs:
        problems = workspace.validate_submissions(the_plan)
        if problems:
            raise UbenchError(
                "the scheduler rejects these jobs:\n  " + "\n  ".join(problems)
            )
    if as_json:
        click.echo(json.dumps(plan_json(the_plan), indent=2))
    else:
        click.echo(format_expiring(the_plan, within_s), nl=False)
        click.echo(format_plan(the_plan, show_scripts=show_scripts), nl=False)
    if out:
        save_plan(the_plan, Path(out))
        click.echo(f"Saved the plan to {out}. Apply it with: ubench apply {out}")
    if detailed_exitcode and the_plan.has_changes:
        sys.exit(2)


def _apply_options(parallelism: int) -> ApplyOptions:
    return ApplyOptions(parallelism=parallelism)


@cli.command()
@click.argument("stack_or_plan", type=click.Path(dir_okay=False), envvar=STACK_ENV)
@_common_options
@click.option("--auto-approve", is_flag=True, help="Apply without asking.")
@click.option(
    "--parallelism", default=4, show_default=True, help="Services started at once."
)
@click.option(
    "--renew",
    is_flag=True,
    help="Also replace running jobs that reach their time limit within "
    "--expiring-within minutes.",
)
@click.option(
    "--expiring-within",
    "expiring_within_min",
    type=click.IntRange(min=0),
    default=30,
    show_default=True,
    help="Minutes before the time limit that count as expiring, for --renew.",
)
def apply(
    stack_or_plan: str,
    state_path: str | None,
    variables: Sequence[str],
    auto_approve: bool,
    parallelism: int,
    renew: bool,
    expiring_within_min: int,
) -> None:
    """Create, replace or delete services so they match the stack file.

    Given a plan file saved with 'ubench plan -out FILE', apply exactly that
    plan, and reject it if the state or the services changed since.
    """
    saved = read_plan_file(Path(stack_or_plan))
    if saved is None and _looks_like_plan_file(Path(stack_or_plan)):
        raise UbenchError(
            f"{stack_or_plan} is not a valid ubench plan file (unreadable, cut "
            "short, or from another tool): make a new one with "
            "'ubench plan STACK -out FILE'"
        )
    if saved is not None:
        workspace = Workspace.open(saved["stack_path"], state_path, saved["variables"])
        the_plan = plan_from_file(saved)
        confirm = None
    else:
        workspace = _open(stack_or_plan, state_path, variables)
        the_plan = workspace.plan(
            expiring_within_s=expiring_within_min * 60 if renew else None,
            renew=renew,
        )
        click.echo(format_plan(the_plan), nl=False)
        if not the_plan.has_changes:
            return
        confirm = None if auto_approve else _confirm
    _run_with_interrupts(workspace, the_plan, _apply_options(parallelism), confirm)
    _print_outputs(workspace)


@cli.command()
@_stack_argument
@_common_options
@click.option("--auto-approve", is_flag=True, help="Destroy without asking.")
@click.option("--parallelism", default=4, show_default=True)
def destroy(
    stack: str,
    state_path: str | None,
    variables: Sequence[str],
    auto_approve: bool,
    parallelism: int,
) -> None:
    """Stop every service of the stack, dependents first, and wait for each."""
    workspace = _open(stack, state_path, variables)
    the_plan = workspace.plan(destroy=True)
    click.echo(format_plan(the_plan), nl=False)
    if not the_plan.has_changes:
        return
    confirm = None if auto_approve else _confirm
    _run_with_interrupts(
        workspace, the_plan, _apply_options(parallelism), confirm, "destroy"
    )
    click.echo("Destroy complete.")


def _looks_like_plan_file(path: Path) -> bool:
    """Return whether a path that is not a valid plan file was meant to be one."""
    if path.suffix in (".plan", ".json", ".tfplan"):
        return True
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(1) == "{"
    except OSError:
        return False


def _confirm(the_plan: Plan) -> bool:
    if not sys.stdin.isatty():
        raise UbenchError(
            "apply needs confirmation, but standard input is not a terminal: "
            "pass --auto-approve, or apply a plan saved with 'ubench plan -out FILE'"
        )
    answer = click.prompt(
        "Do you want to perform these actions? Only 'yes' is accepted",
        default="",
        show_default=False,
    )
    return bool(answer == "yes")


def _run_with_interrupts(
    workspace: Workspace,
    the_plan: Plan,
    options: ApplyOptions,
    confirm: Callable[[Plan], bool] | None,
    operation: str = "apply",
) -> None:
    """Apply with Ctrl-C handling: the first stops new work, the second exits."""
    interrupted = threading.Event()
    lock_path = workspace.backend.lock_path
    own_pid = os.getpid()

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        if interrupted.is_set():
            holder = read_lock(lock_path)
            if holder is not None and holder.pid == own_pid:
                release_lock(lock_path, holder.id)
            os.write(2, b"\nubench: interrupted twice; exiting now.\n")
            os._exit(130)
        interrupted.set()
        os.write(
            2,
            b"\nubench: interrupted; starting nothing new and recording what "
            b"was submitted. Press Ctrl-C again to exit at once.\n",
        )

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        report = workspace.apply(
            the_plan,
            options,
            confirm=confirm,
            interrupted=interrupted,
            lock_operation=operation,
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted.is_set() or report.interrupted:
        raise UbenchError(
            "interrupted: the state records every service submitted so far; run "
            "ubench plan to see what remains"
        )


def _print_outputs(workspace: Workspace) -> None:
    state = workspace.read_state()
    outputs = state.outputs() if state else {}
    if outputs:
        click.echo("\nOutputs:")
        for name, value in outputs.items():
            click.echo(f"  {name} = {value}")


@cli.command()
@_stack_argument
@_common_options
@click.option("--json", "as_json", is_flag=True)
def status(
    stack: str, state_path: str | None, variables: Sequence[str], as_json: bool
) -> None:
    """Show each service's status, endpoint, age, time left and health."""
    workspace = _open(stack, state_path, variables)
    state = workspace.read_state()
    if state is None or not state.resources:
        click.echo("No services deployed.")
        return

    observations = workspace.refresh(state).observations
    rows = []
    for resource in state.resources:
        observed = observations.get(resource.address)
        status_text = observed.status.value if observed else resource.status
        endpoint = resource.endpoint
        healthy = "-"
        if observed and observed.status.value == "running" and endpoint:
            ok, _ = probe(resource.spec.get("health"), endpoint.host)
            healthy = "yes" if ok else "no"
        rows.append(
            {
                "address": resource.address,
                "status": status_text,
                "healthy": healthy,
                "endpoint": f"{endpoint.host}:{endpoint.port}" if endpoint else "",
                "age": _age(resource.created_at),
                "time_left": _duration(observed.time_left_s) if observed else "",
                "handle": resource.handle,
                "reason": observed.reason if observed else "",
            }
        )

    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return

    columns = ["address", "status", "healthy", "endpoint", "age", "time_left"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        click.echo("  ".join(str(row[c]).ljust(widths[c]) for c in columns))


def _age(created_at: str) -> str:
    try:
        created = dt.datetime.fromisoformat(created_at)
    except ValueError:
        return ""
    seconds = int((dt.datetime.now(dt.UTC) - created).total_seconds())
    return _duration(seconds)


def _duration(seconds: int | None) -> str:
    if seconds is None:
        return ""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


@cli.command()
@click.argument("name", required=False)
@click.option("-s", "--stack", envvar=STACK_ENV, required=True, help="Stack file.")
@_common_options
@click.option("--json", "as_json", is_flag=True)
def output(
    name: str | None,
    stack: str,
    state_path: str | None,
    variables: Sequence[str],
    as_json: bool,
) -> None:
    """Print recorded outputs: all, one service's (web), or one (web.url)."""
    workspace = _open(stack, state_path, variables)
    state = workspace.read_state()
    outputs = state.outputs() if state else {}
    if name is not None:
        if name in outputs:
            click.echo(json.dumps(outputs[name]) if as_json else outputs[name])
            return
        selected = {k: v for k, v in outputs.items() if k.startswith(f"{name}.")}
        if not selected:
            raise UbenchError(
                f"no output named '{name}'; known: {', '.join(outputs) or '(none)'}"
            )
        outputs = selected
    if as_json:
        click.echo(json.dumps(outputs, indent=2))
    else:
        for key, value in outputs.items():
            click.echo(f"{key} = {value}")


@cli.command()
@click.argument("service")
@click.option("-s", "--stack", envvar=STACK_ENV, required=True, help="Stack file.")
@_common_options
@click.option("-n", "--lines", default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs(
    service: str,
    stack: str,
    state_path: str | None,
    variables: Sequence[str],
    lines: int,
    follow: bool,
) -> None:
    """Print the log of a service (SERVICE or SERVICE[INDEX])."""
    workspace = _open(stack, state_path, variables)
    state = workspace.read_state()
    address = _address(service)
    resource = state.get(address) if state else None
    if resource is None or not resource.log:
        known = ", ".join(r.address for r in state.resources) if state else "(none)"
        raise UbenchError(f"no deployed service {address}; deployed: {known}")
    remote = workspace.target.logs(resource.handle, lines) if resource.handle else None
    if remote is not None:
        click.echo(remote.rstrip("\n"))
        return
    click.echo(read_log_tail(resource.log, lines))
    if follow:
        _follow(Path(resource.log))


def _address(name: str) -> str:
    """Expand ``web`` or ``web[1]`` to the address ``service.web[0]``."""
    address = name if name.startswith("service.") else f"service.{name}"
    return address if address.endswith("]") else f"{address}[0]"


def _follow(path: Path) -> NoReturn:
    with open(path, encoding="utf-8", errors="replace") as handle:
        handle.seek(0, os.SEEK_END)
        while True:
            line = handle.readline()
            if line:
                click.echo(line, nl=False)
            else:
                time.sleep(0.5)


@cli.group("state")
def state_group() -> None:
    """Inspect the state file."""


@state_group.command("list")
@click.option("-s", "--stack", envvar=STACK_ENV, required=True, help="Stack file.")
@_common_options
def state_list(stack: str, state_path: str | None, variables: Sequence[str]) -> None:
    """List the addresses recorded in the state."""
    state = _open(stack, state_path, variables).read_state()
    for resource in state.resources if state else []:
        click.echo(resource.address)


@state_group.command("show")
@click.argument("address")
@click.option("-s", "--stack", envvar=STACK_ENV, required=True, help="Stack file.")
@_common_options
def state_show(
    address: str, stack: str, state_path: str | None, variables: Sequence[str]
) -> None:
    """Print one recorded resource as JSON."""
    state = _open(stack, state_path, variables).read_state()
    resource = state.get(_address(address)) if state else None
    if resource is None:
        raise UbenchError(f"no resource {address} in the state; see: ubench state list")
    click.echo(resource.model_dump_json(indent=2))


@cli.command("force-unlock")
@click.argument("lock_id")
@click.option("-s", "--stack", envvar=STACK_ENV, required=True, help="Stack file.")
@_common_options
def force_unlock_command(
    lock_id: str, stack: str, state_path: str | None, variables: Sequence[str]
) -> None:
    """Remove a stale state lock left by a run that died on another host."""
    workspace = _open(stack, state_path, variables)
    holder = force_unlock(workspace.backend.lock_path, lock_id)
    click.echo(f"Removed {holder.describe()}.")


@cli.command()
@_stack_argument
@click.argument("directory", type=click.Path(file_okay=False))
@_common_options
def render(
    stack: str, directory: str, state_path: str | None, variables: Sequence[str]
) -> None:
    """Write every rendered script into DIRECTORY for review."""
    workspace = _open(stack, state_path, variables)
    the_plan = _plan_offline(workspace)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for change in the_plan.changes:
        if change.script is None or change.desired is None:
            continue
        suffix = workspace.target.script_path(change.desired).suffix
        name = f"{change.service}-{change.index}{suffix}"
        (out / name).write_text(change.script, encoding="utf-8")
        click.echo(f"wrote {out / name}")


@cli.command()
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default="schemas",
    show_default=True,
)
def schema(output_dir: str) -> None:
    """Write the JSON Schemas of stack and recipe files."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stack.schema.json").write_text(dump(stack_schema()))
    (out / "recipe.schema.json").write_text(dump(recipe_schema()))
    click.echo(f"wrote {out}/stack.schema.json and {out}/recipe.schema.json")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI with one error boundary: a message, exit 1, no traceback."""
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except UbenchError as exc:
        if _Context.verbose:
            traceback.print_exc()
        prefix = "" if isinstance(exc, StackError | StackErrors) else "error: "
        click.echo(f"{prefix}{exc}", err=True)
        sys.exit(1)
    except SystemExit:
        raise
    sys.exit(0)
