"""The library API behind the CLI: one stack, its state file and its target.

workspace = Workspace.open("stacks/local-demo.yaml")
plan = workspace.plan()
report = workspace.apply(plan, ApplyOptions(), auto_approve=True)
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from ubench_iac.apply import Applier, ApplyOptions, ApplyReport
from ubench_iac.errors import ApplyError, StalePlanError, StateError
from ubench_iac.loader import LoadedStack, load_stack
from ubench_iac.output import plan_json
from ubench_iac.plan import (
    Action,
    Plan,
    Refresh,
    make_plan,
    refresh_state,
    token_for,
)
from ubench_iac.state import LocalBackend, State
from ubench_iac.targets.base import Submission, Target, get_target

PLAN_FILE_FORMAT = "ubench-plan/1"


def default_state_path(stack_name: str) -> Path:
    """Return ``state/<stack>.json`` under UBENCH_STATE_DIR or the working directory."""
    root = Path(os.environ.get("UBENCH_STATE_DIR", "state"))
    return root / f"{stack_name}.json"


@dataclasses.dataclass
class Workspace:
    """A loaded stack bound to its state backend and target."""

    loaded: LoadedStack
    backend: LocalBackend
    target: Target
    variables: dict[str, str]

    @classmethod
    def open(
        cls,
        stack_path: str | Path,
        state_path: str | Path | None = None,
        variables: Mapping[str, str] | None = None,
    ) -> Workspace:
        """Load the stack and bind it to its state file and target."""
        loaded = load_stack(stack_path, variables)
        path = Path(state_path) if state_path else default_state_path(loaded.name)
        backend = LocalBackend(path)
        config = loaded.stack.target
        workdir = Path(config.workdir) if config.workdir else path.with_suffix("")
        target = get_target(config, loaded.name, workdir.absolute())
        return cls(loaded, backend, target, dict(variables or {}))

    def read_state(self) -> State | None:
        state = self.backend.read()
        if state is not None and state.stack != self.loaded.name:
            raise StateError(
                f"{self.backend.path} belongs to stack '{state.stack}', not "
                f"'{self.loaded.name}': pass --state with this stack's state file"
            )
        return state

    def refresh(self, state: State | None) -> Refresh:
        return refresh_state(state, self.target)

    def plan(
        self,
        *,
        destroy: bool = False,
        expiring_within_s: int | None = None,
        renew: bool = False,
    ) -> Plan:
        """Refresh the recorded resources and plan the changes."""
        state = self.read_state()
        return make_plan(
            self.loaded,
            state,
            self.target,
            self.refresh(state),
            variables=self.variables,
            destroy=destroy,
            expiring_within_s=expiring_within_s,
            renew=renew,
        )

    def validate_submissions(self, plan: Plan) -> list[str]:
        """Ask the target whether it would accept each job the plan starts."""
        problems = []
        for change in plan.changes:
            if change.desired is None or change.script is None:
                continue
            if change.action not in (Action.CREATE, Action.REPLACE):
                continue
            desired = change.desired
            submission = Submission(
                resource=desired,
                token=token_for(plan.lineage, desired.address, desired.spec_hash),
                script=change.script,
                script_path=self.target.script_path(desired),
                log_path=self.target.log_path(desired),
            )
            objection = self.target.test_submit(submission)
            if objection:
                problems.append(f"{change.address}: {objection}")
        return problems

    def apply(
        self,
        plan: Plan,
        options: ApplyOptions,
        *,
        confirm: Callable[[Plan], bool] | None = None,
        interrupted: threading.Event | None = None,
        lock_operation: str = "apply",
    ) -> ApplyReport:
        """Apply ``plan`` under the state lock; raise ApplyError if any failed.

        The plan is made again under the lock and must match the one given, so
        a plan that another run made stale is rejected, never half applied.
        """
        with self.backend.lock(lock_operation):
            state = self.read_state()
            current = make_plan(
                self.loaded,
                state,
                self.target,
                self.refresh(state),
                variables=self.variables,
                destroy=plan.destroy,
                lineage=plan.lineage,
                expiring_within_s=plan.expiring_within_s,
                renew=plan.renew,
            )
            check_plan_matches(plan, current)
            if not current.has_changes:
                return ApplyReport()
            if confirm is not None and not confirm(current):
                raise ApplyError("apply cancelled: the plan was not approved")
            if state is None:
                state = State(
                    stack=self.loaded.name,
                    target=self.target.kind,
                    lineage=plan.lineage,
                )
            applier = Applier(
                current,
                self.loaded,
                self.backend,
                state,
                self.target,
                options,
                interrupted,
            )
            report = applier.run()
            if applier.state.serial == 0:
                self.backend.write(applier.state)
        if report.failed:
            raise ApplyError(
                f"{len(report.failed)} of {len(report.results)} resources failed:\n"
                + report.describe_failures()
                + f"\nWhole logs: ubench logs SERVICE -s {self.loaded.path}"
            )
        return report


def check_plan_matches(saved: Plan, current: Plan) -> None:
    """Raise StalePlanError unless ``current`` does exactly what ``saved`` planned."""
    if saved.state_exists and saved.lineage != current.lineage:
        raise StalePlanError(
            f"the saved plan is for state lineage {saved.lineage}, but the state "
            f"file now has lineage {current.lineage}: make a new plan"
        )
    if saved.serial != current.serial:
        raise StalePlanError(
            f"the state changed since the plan was made (serial {saved.serial} -> "
            f"{current.serial}): run ubench plan again"
        )
    expected = _plan_signature(saved)
    found = _plan_signature(current)
    if expected != found:
        changed = sorted(set(expected.items()) ^ set(found.items()))
        raise StalePlanError(
            "the stack or the running services changed since the plan was made "
            f"(first difference: {changed[0][0]}): run ubench plan again"
        )


def _plan_signature(plan: Plan) -> dict[str, str]:
    return {
        change.address: f"{change.action.value} {change.spec_hash or '-'}"
        for change in plan.changes
    }


def save_plan(plan: Plan, path: Path) -> None:
    """Write a plan file for ``ubench apply FILE`` (mode 0600, no secret values)."""
    data = {
        "format": PLAN_FILE_FORMAT,
        "stack_path": str(Path(plan.stack_path).absolute()),
        "variables": plan.variables,
        "expiring_within_s": plan.expiring_within_s,
        "renew": plan.renew,
        "plan": plan_json(plan),
        "signature": _plan_signature(plan),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    logger.debug("saved plan to {}", path)


def read_plan_file(path: Path) -> dict[str, Any] | None:
    """Return a saved plan's data, or None when ``path`` is not a plan file."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != PLAN_FILE_FORMAT:
        return None
    return data


def plan_from_file(data: Mapping[str, Any]) -> Plan:
    """Rebuild the parts of a saved plan that apply checks against."""
    from ubench_iac.plan import ResourceChange

    body = data["plan"]
    changes = []
    for entry in body["resource_changes"]:
        action, _, spec_hash = data["signature"][entry["address"]].partition(" ")
        changes.append(
            ResourceChange(
                address=entry["address"],
                service=entry["name"],
                index=entry["index"],
                action=Action(action),
                planned_hash=None if spec_hash == "-" else spec_hash,
            )
        )
    plan = Plan(
        stack=body["stack"],
        stack_path=data["stack_path"],
        target=body["target"],
        lineage=body["lineage"],
        serial=body["serial"],
        state_exists=body["serial"] > 0,
        changes=changes,
        output_changes={},
        variables=dict(data.get("variables", {})),
        destroy=bool(body.get("destroy")),
        expiring_within_s=data.get("expiring_within_s"),
        renew=bool(data.get("renew")),
    )
    return plan
