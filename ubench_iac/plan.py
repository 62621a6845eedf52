"""Compare the desired resources with the recorded and live ones.

The plan is made in named stages: refresh every recorded handle with one target
query, resolve the stack in dependency order, diff each resource, render every
script (so apply never meets a template error), and summarise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from deepdiff import DeepDiff
from loguru import logger

from ubench_iac.loader import LoadedStack
from ubench_iac.resolve import (
    IN_PLACE_FIELDS,
    UNKNOWN,
    DependencyView,
    DesiredResource,
    Resolver,
    render_outputs,
)
from ubench_iac.state import ResourceState, State
from ubench_iac.status import Observation
from ubench_iac.targets.base import Handle, Target


class Action(StrEnum):
    """Action that apply takes on one resource."""

    NO_OP = "no-op"
    """Desired and recorded agree, and the service still runs."""
    CREATE = "create"
    """Start a service that is not running: new, or ended since the last apply."""
    UPDATE = "update"
    """Record new health-check or output settings; the service keeps running."""
    REPLACE = "replace"
    """Stop the service and start it again with the new spec."""
    DELETE = "delete"
    """Stop the service and forget it."""


_TERRAFORM_ACTIONS = {
    Action.NO_OP: ["no-op"],
    Action.CREATE: ["create"],
    Action.UPDATE: ["update"],
    Action.REPLACE: ["delete", "create"],
    Action.DELETE: ["delete"],
}


@dataclasses.dataclass(frozen=True)
class FieldDiff:
    """One changed value between the recorded and the desired spec."""

    path: str
    before: Any
    after: Any
    forces_replacement: bool


@dataclasses.dataclass
class ResourceChange:
    """The planned action for one resource, with why."""

    address: str
    service: str
    index: int
    action: Action
    reason: str = ""
    action_reason: str | None = None
    """Terraform-style reason code for the JSON plan, e.g. replace_because_ended."""
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    diffs: list[FieldDiff] = dataclasses.field(default_factory=list)
    unknown: tuple[str, ...] = ()
    desired: DesiredResource | None = None
    prior: ResourceState | None = None
    observation: Observation | None = None
    script: str | None = None
    planned_hash: str | None = None
    """Spec hash read back from a saved plan file, which has no DesiredResource."""
    adopted: bool = False
    """The job or process was found by its token and is taken into the state."""
    deposed: str | None = None
    """Token of an orphan to stop: it is not the resource the state records."""

    @property
    def replace_fields(self) -> list[str]:
        return sorted(
            {d.path.split(".")[0] for d in self.diffs if d.forces_replacement}
        )

    @property
    def spec_hash(self) -> str | None:
        return self.desired.spec_hash if self.desired else self.planned_hash


@dataclasses.dataclass
class Plan:
    """Every planned change of one stack, and the state it was planned against."""

    stack: str
    stack_path: str
    target: str
    lineage: str
    serial: int
    state_exists: bool
    changes: list[ResourceChange]
    output_changes: dict[str, tuple[str | None, str | None]]
    variables: dict[str, str]
    destroy: bool = False
    expiring: dict[str, int] = dataclasses.field(default_factory=dict)
    """Running resources that reach their time limit soon: seconds left."""
    expiring_within_s: int | None = None
    renew: bool = False

    @property
    def has_changes(self) -> bool:
        return any(c.action is not Action.NO_OP for c in self.changes) or bool(
            self.output_changes
        )

    def count(self, action: Action) -> int:
        return sum(1 for change in self.changes if change.action is action)

    def summary(self) -> str:
        return (
            f"Plan: {self.count(Action.CREATE)} to add, "
            f"{self.count(Action.UPDATE)} to change, "
            f"{self.count(Action.REPLACE)} to replace, "
            f"{self.count(Action.DELETE)} to destroy."
        )

    def requested_hours(self) -> tuple[float, float, int]:
        """Return node-hours and GPU-hours the creations and replacements ask for.

        The third value counts the started services that have no time limit,
        which cannot be costed.
        """
        node_hours = gpu_hours = 0.0
        unlimited = 0
        for change in self.changes:
            if change.action not in (Action.CREATE, Action.REPLACE) or not change.after:
                continue
            resources = change.after["resources"]
            if resources["time_limit_s"] is None:
                unlimited += 1
                continue
            hours = resources["time_limit_s"] / 3600
            node_hours += resources["nodes"] * hours
            gpu_hours += resources["nodes"] * resources["gpus"] * hours
        return node_hours, gpu_hours, unlimited

    def get(self, address: str) -> ResourceChange | None:
        return next((c for c in self.changes if c.address == address), None)


def token_for(lineage: str, address: str, spec_hash: str) -> str:
    """Return the idempotency token a job or process carries."""
    return f"ubench:{lineage}:{address}:{spec_hash.removeprefix('sha256:')[:12]}"


@dataclasses.dataclass
class Refresh:
    """Result of one refresh: recorded resources, adopted ones and orphans."""

    observations: dict[str, Observation]
    """By address, for every recorded resource with a handle (adopted included)."""
    adopted: dict[str, Handle]
    """Pending operations whose job or process was found by its token."""
    orphans: dict[str, tuple[Handle, Observation]]
    """Live jobs or processes with this stack's token that the state lacks."""


def refresh_state(state: State | None, target: Target) -> Refresh:
    """Observe the stack with one target query, and find what the state lacks.

    A resource recorded without a handle is a pending operation: an apply died
    between recording it and recording the handle. If a job or process carries
    its token, the handle is adopted into ``state`` (in memory).
    """
    result = Refresh({}, {}, {})
    if state is None:
        return result
    recorded = [r for r in state.resources if r.handle is not None]
    logger.debug("refreshing {} resources", len(recorded))
    scan = target.scan(
        [r.handle for r in recorded if r.handle], f"ubench:{state.lineage}:"
    )
    for resource, observation in zip(recorded, scan.observations, strict=True):
        result.observations[resource.address] = observation
    known = {r.token for r in recorded}
    pending = {r.token: r for r in state.resources if r.handle is None}
    for token, (handle, observation) in scan.found.items():
        if token in known:
            continue
        if token in pending:
            resource = pending[token]
            resource.handle = dict(handle)
            result.adopted[resource.address] = dict(handle)
            result.observations[resource.address] = observation
        else:
            result.orphans[token] = (dict(handle), observation)
    return result


def make_plan(
    loaded: LoadedStack,
    state: State | None,
    target: Target,
    refresh: Refresh | None = None,
    *,
    variables: Mapping[str, str] | None = None,
    destroy: bool = False,
    lineage: str | None = None,
    expiring_within_s: int | None = None,
    renew: bool = False,
) -> Plan:
    """Diff the stack against the refreshed state.

    ``lineage`` fixes the lineage of a state that does not exist yet, so that a
    plan made again under the lock hashes secrets the same way. Running
    resources with less than ``expiring_within_s`` seconds left are listed in
    ``Plan.expiring``; with ``renew`` they are planned for replacement.
    """
    if state is not None:
        lineage = state.lineage
    elif lineage is None:
        lineage = State(stack=loaded.name).lineage
    refresh = refresh or Refresh({}, {}, {})
    observations = refresh.observations
    resolver = Resolver(
        loaded,
        target.workdir,
        secret_key=lineage,
        recorded_ports=_recorded_ports(state),
    )
    changes: list[ResourceChange] = []
    expiring = _expiring(observations, expiring_within_s)
    if not destroy:
        changes = _plan_desired(loaded, state, target, resolver, observations, lineage)
        _adopt(changes, refresh)
        if renew:
            _renew(changes, expiring)
    desired = {c.address for c in changes}
    for prior in _reverse_dependency_order(state):
        if prior.address not in desired:
            changes.append(
                ResourceChange(
                    address=prior.address,
                    service=prior.service,
                    index=prior.index,
                    action=Action.DELETE,
                    reason="destroy requested"
                    if destroy
                    else "no longer in the stack file",
                    action_reason=None
                    if destroy
                    else "delete_because_no_resource_config",
                    before=prior.spec,
                    prior=prior,
                    observation=observations.get(prior.address),
                )
            )
    changes.extend(_orphan_deletions(changes, refresh, target))
    return Plan(
        stack=loaded.name,
        stack_path=str(loaded.path),
        target=target.kind,
        lineage=lineage,
        serial=state.serial if state else 0,
        state_exists=state is not None,
        changes=changes,
        output_changes=_output_changes(state, changes, loaded, target),
        variables={k: str(v) for k, v in (variables or {}).items()},
        destroy=destroy,
        expiring=expiring,
        expiring_within_s=expiring_within_s,
        renew=renew,
    )


def _adopt(changes: Sequence[ResourceChange], refresh: Refresh) -> None:
    """Take over jobs that an interrupted apply started but did not record.

    A pending operation found by its token is adopted as it is. An orphan is
    adopted when its token names the spec the stack now wants, for an address
    with nothing running. Other orphans are stopped.
    """
    by_address = {c.address: c for c in changes}
    for address in refresh.adopted:
        change = by_address.get(address)
        if change is not None and change.action is Action.NO_OP:
            change.action = Action.UPDATE
            change.adopted = True
            change.reason = "adopts the job an interrupted apply started"
    for token, (handle, observation) in list(refresh.orphans.items()):
        address, token_hash = _parse_token(token)
        change = by_address.get(address)
        if change is None or change.desired is None:
            continue
        if change.action is not Action.CREATE or not observation.status.is_active:
            continue
        expected_hash = change.desired.spec_hash.removeprefix("sha256:")[:12]
        if token_hash != expected_hash:
            continue
        change.prior = ResourceState(
            address=address,
            service=change.service,
            index=change.index,
            target=refresh_target_kind(handle),
            spec=change.desired.spec,
            spec_hash=change.desired.spec_hash,
            token=token,
            handle=handle,
            status=observation.status.value,
        )
        change.observation = observation
        change.action = Action.UPDATE
        change.adopted = True
        change.reason = "adopts an orphan that carries its token"
        del refresh.orphans[token]


def refresh_target_kind(handle: Handle) -> str:
    return "slurm" if "job_id" in handle else "local"


def _parse_token(token: str) -> tuple[str, str]:
    """Split ``ubench:<lineage>:<address>:<hash>`` into address and hash."""
    body = token.split(":", 2)[-1]
    address, _, token_hash = body.rpartition(":")
    return address, token_hash


def _orphan_deletions(
    changes: Sequence[ResourceChange], refresh: Refresh, target: Target
) -> list[ResourceChange]:
    deletions = []
    for token, (handle, observation) in refresh.orphans.items():
        if not observation.status.is_active:
            continue
        address, _ = _parse_token(token)
        service, _, rest = address.removeprefix("service.").partition("[")
        index = int(rest.rstrip("]") or 0) if rest.rstrip("]").isdigit() else 0
        prior = ResourceState(
            address=address,
            service=service,
            index=index,
            target=target.kind,
            spec={},
            spec_hash="",
            token=token,
            handle=handle,
            status=observation.status.value,
        )
        deletions.append(
            ResourceChange(
                address=address,
                service=service,
                index=index,
                action=Action.DELETE,
                reason="orphan: carries this stack's token but the state does "
                "not record it",
                action_reason="delete_because_orphan",
                prior=prior,
                observation=observation,
                deposed=token,
            )
        )
    return deletions


def _expiring(
    observations: Mapping[str, Observation], within_s: int | None
) -> dict[str, int]:
    if within_s is None:
        return {}
    return {
        address: observed.time_left_s
        for address, observed in observations.items()
        if observed.status.is_active
        and observed.time_left_s is not None
        and observed.time_left_s <= within_s
    }


def _renew(changes: Sequence[ResourceChange], expiring: Mapping[str, int]) -> None:
    """Plan the replacement of running resources close to their time limit."""
    for change in changes:
        if change.address in expiring and change.action in (
            Action.NO_OP,
            Action.UPDATE,
        ):
            minutes = expiring[change.address] // 60
            change.action = Action.REPLACE
            change.action_reason = "replace_by_request"
            change.reason = f"renewal: {minutes} min left before its time limit"


def _plan_desired(
    loaded: LoadedStack,
    state: State | None,
    target: Target,
    resolver: Resolver,
    observations: Mapping[str, Observation],
    lineage: str,
) -> list[ResourceChange]:
    changes: dict[str, ResourceChange] = {}
    views: dict[str, DependencyView | None] = {}
    for service in loaded.order:
        dependencies = {
            name: views[name]
            for name in loaded.services[service].service.depends_on or []
        }
        for index in range(resolver.replicas(service)):
            desired = resolver.resolve(service, index, dependencies)
            prior = state.get(desired.address) if state else None
            change = diff_resource(desired, prior, observations.get(desired.address))
            change.script = target.render(
                desired, token_for(lineage, desired.address, desired.spec_hash)
            )
            changes[desired.address] = change
        views[service] = _dependency_view(
            changes[f"service.{service}[0]"], target, loaded
        )
    return list(changes.values())


def _dependency_view(
    change: ResourceChange, target: Target, loaded: LoadedStack
) -> DependencyView | None:
    """Return what dependents will see of replica 0, or None if unknown yet."""
    desired = change.desired
    assert desired is not None
    prior = change.prior
    if change.action in (Action.NO_OP, Action.UPDATE) and prior and prior.endpoint:
        host = prior.endpoint.host
    else:
        predicted = target.predict_host(desired)
        if predicted is None:
            return None
        host = predicted
    outputs = render_outputs(desired, host, loaded.stack.variables)
    return DependencyView(
        host=host, port=desired.primary_port, ports=desired.ports, outputs=outputs
    )


def diff_resource(
    desired: DesiredResource, prior: ResourceState | None, observed: Observation | None
) -> ResourceChange:
    """Decide the action for one desired resource."""
    change = ResourceChange(
        address=desired.address,
        service=desired.service,
        index=desired.index,
        action=Action.NO_OP,
        after=desired.spec,
        unknown=desired.unknown,
        desired=desired,
        prior=prior,
        observation=observed,
    )
    if prior is None:
        change.action = Action.CREATE
        change.reason = "not yet deployed"
        return change
    change.before = prior.spec
    change.diffs = field_diffs(prior.spec, desired.spec)
    if prior.handle is None:
        change.action = Action.CREATE
        change.reason = "a previous apply did not record its handle"
        return change
    if observed is not None and observed.status.is_terminal:
        change.action = Action.CREATE
        change.action_reason = "replace_because_ended"
        change.reason = _ended_reason(observed)
        return change
    if prior.spec_hash == desired.spec_hash:
        if not prior.healthy:
            # An apply died or failed while waiting: finish what it started.
            change.action = Action.UPDATE
            change.adopted = True
            change.reason = "running but never seen healthy; apply waits for it"
        return change
    if not change.diffs:
        # Equal specs with different hashes: a hash from an older ubench.
        change.action = Action.UPDATE
        change.reason = "the recorded spec hash is outdated"
    elif any(d.forces_replacement for d in change.diffs):
        change.action = Action.REPLACE
        change.action_reason = "replace_because_cannot_update"
        change.reason = "changed: " + ", ".join(change.replace_fields)
        if desired.unknown:
            change.reason += " (depends on values known only after apply)"
    else:
        change.action = Action.UPDATE
        change.reason = "changed: " + ", ".join(sorted({d.path for d in change.diffs}))
    return change


def _ended_reason(observed: Observation) -> str:
    detail = f": {observed.reason}" if observed.reason else ""
    return f"ended outside ubench, {observed.status.value}{detail}"


def field_diffs(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[FieldDiff]:
    """List changed leaf values between two specs, with dotted paths."""
    tree = DeepDiff(dict(before), dict(after), view="tree", verbose_level=2)
    diffs: list[FieldDiff] = []
    for items in tree.values():
        for item in items:
            parts = item.path(output_format="list")
            path = ".".join(str(part) for part in parts)
            top = str(parts[0]) if parts else ""
            old = None if _missing(item.t1) else item.t1
            new = None if _missing(item.t2) else item.t2
            diffs.append(FieldDiff(path, old, new, top not in IN_PLACE_FIELDS))
    return sorted(diffs, key=lambda d: d.path)


def _missing(value: Any) -> bool:
    return type(value).__name__ == "NotPresent"


def _recorded_ports(state: State | None) -> dict[str, dict[str, int]]:
    if state is None:
        return {}
    return {r.address: dict(r.spec.get("ports", {})) for r in state.resources}


def _reverse_dependency_order(state: State | None) -> list[ResourceState]:
    """Order recorded resources so that dependents come before dependencies."""
    if state is None:
        return []
    remaining = {r.address: r for r in state.resources}
    ordered: list[ResourceState] = []
    while remaining:
        needed = {d for r in remaining.values() for d in r.dependencies}
        wave = [r for a, r in remaining.items() if a not in needed] or list(
            remaining.values()
        )
        for resource in wave:
            ordered.append(resource)
            del remaining[resource.address]
    return ordered


def _output_changes(
    state: State | None,
    changes: Sequence[ResourceChange],
    loaded: LoadedStack,
    target: Target,
) -> dict[str, tuple[str | None, str | None]]:
    before = state.outputs() if state else {}
    after: dict[str, str] = {}
    for change in changes:
        if change.desired is None:
            continue
        prefix = change.service if change.index == 0 else change.address[8:]
        host = (
            change.prior.endpoint.host
            if change.action is Action.NO_OP and change.prior and change.prior.endpoint
            else target.predict_host(change.desired)
        )
        outputs = render_outputs(
            change.desired, host or UNKNOWN, loaded.stack.variables
        )
        for key, value in outputs.items():
            after[f"{prefix}.{key}"] = value
    return {
        name: (before.get(name), after.get(name))
        for name in sorted({*before, *after})
        if before.get(name) != after.get(name)
    }


def terraform_actions(action: Action) -> list[str]:
    """Return the action list Terraform's JSON plan uses for ``action``."""
    return list(_TERRAFORM_ACTIONS[action])
