"""Human and machine-readable renderings of plans and status."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ubench_iac import __version__
from ubench_iac.plan import Action, FieldDiff, Plan, ResourceChange, terraform_actions
from ubench_iac.resolve import UNKNOWN

_SYMBOL = {
    Action.CREATE: "+",
    Action.UPDATE: "~",
    Action.REPLACE: "-/+",
    Action.DELETE: "-",
    Action.NO_OP: " ",
}

_HEADLINE = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in place",
    Action.REPLACE: "must be replaced",
    Action.DELETE: "will be destroyed",
}


def format_plan(plan: Plan, *, show_scripts: bool = False) -> str:
    """Render a plan for people: one block per change, then a summary."""
    lines: list[str] = []
    drift = [c for c in plan.changes if c.action_reason == "replace_because_ended"]
    if drift:
        lines.append("Changes outside ubench since the last apply:")
        for change in drift:
            lines.append(f"  # {change.address} {change.reason}")
        lines.append("")

    acted = [c for c in plan.changes if c.action is not Action.NO_OP]
    if not acted and not plan.output_changes:
        count = len(plan.changes)
        lines.append(
            "No changes. The deployed services match the stack file "
            f"({count} resource{'' if count == 1 else 's'})."
        )
        return "\n".join(lines) + "\n"

    if acted:
        lines.append("ubench will perform the following actions:")
        lines.append("")

    for change in acted:
        lines.extend(_format_change(change, show_scripts))
        lines.append("")

    if plan.output_changes:
        lines.append("Changes to outputs:")
        for name, (before, after) in plan.output_changes.items():
            if before is None:
                lines.append(f"  + {name} = {after}")
            elif after is None:
                lines.append(f"  - {name} = {before}")
            else:
                lines.append(f"  ~ {name} = {before} -> {after}")
        lines.append("")

    lines.append(plan.summary())
    node_hours, gpu_hours, unlimited = plan.requested_hours()
    if node_hours or gpu_hours or unlimited:
        cost = f"Requested: {node_hours:.2f} node-hours, {gpu_hours:.2f} GPU-hours"
        if unlimited:
            cost += f" ({unlimited} services without a time limit not counted)"
        lines.append(cost + ".")

    return "\n".join(lines) + "\n"


def format_expiring(plan: Plan, within_s: int) -> str:
    """List running services that reach their time limit within ``within_s``."""
    if not plan.expiring:
        return ""
    lines = [f"Services reaching their time limit within {within_s // 60} min:"]
    for address, left_s in sorted(plan.expiring.items()):
        lines.append(f"  {address}: {left_s // 60} min {left_s % 60} s left")
    if not any(c.action_reason == "replace_by_request" for c in plan.changes):
        lines.append("Run 'ubench plan --renew' to plan their replacement.")
    return "\n".join(lines) + "\n\n"


def _format_change(change: ResourceChange, show_scripts: bool) -> list[str]:
    symbol = _SYMBOL[change.action]
    headline = _HEADLINE[change.action]
    if change.action is Action.CREATE and change.prior is not None:
        headline = "will be recreated"
    if change.adopted:
        headline = "will be adopted"
    if change.deposed:
        headline = f"orphan {change.deposed} will be stopped"
    reason = f" ({change.reason})" if change.reason else ""
    lines = [f"  # {change.address} {headline}{reason}"]
    if change.action is Action.CREATE and change.after is not None:
        lines.append(f"  {symbol} {change.address}")
        lines.extend(_format_spec(change.after, "      + "))
    elif change.action is Action.DELETE:
        lines.append(f"  {symbol} {change.address}")
    else:
        lines.append(f"  {symbol} {change.address}")
        lines.extend(_format_diffs(change.diffs))
    if change.unknown:
        lines.append(f"      (known after apply: {', '.join(change.unknown)})")
    if show_scripts and change.script and change.action is not Action.DELETE:
        lines.append("      rendered script:")
        lines.extend("        | " + line for line in change.script.splitlines())
    return lines


def _format_spec(spec: Mapping[str, Any], prefix: str) -> list[str]:
    lines = []
    for key, value in spec.items():
        if value in (None, {}, []):
            continue
        lines.append(f"{prefix}{key} = {_short(value)}")
    return lines


def _format_diffs(diffs: Iterable[FieldDiff]) -> list[str]:
    lines = []
    for diff in diffs:
        marker = "  # forces replacement" if diff.forces_replacement else ""
        if diff.before is None:
            lines.append(f"      + {diff.path} = {_short(diff.after)}{marker}")
        elif diff.after is None:
            lines.append(f"      - {diff.path} = {_short(diff.before)}{marker}")
        else:
            lines.append(
                f"      ~ {diff.path} = {_short(diff.before)} -> "
                f"{_short(diff.after)}{marker}"
            )
    return lines


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def plan_json(plan: Plan) -> dict[str, Any]:
    """Return the plan in the shape of ``terraform show -json``.

    Field names follow Terraform's JSON output format 1.2, so tools that read
    Terraform plans (policy checks, CI summaries) read ubench plans too.
    """
    changes = []
    drift = []
    for change in plan.changes:
        entry = {
            "address": change.address,
            "mode": "managed",
            "type": "ubench_service",
            "name": change.service,
            "index": change.index,
            "provider_name": f"ubench/{plan.target}",
            "change": {
                "actions": terraform_actions(change.action),
                "before": change.before,
                "after": change.after,
                "after_unknown": {path: True for path in change.unknown},
                "before_sensitive": _sensitive(change.before),
                "after_sensitive": _sensitive(change.after),
                "replace_paths": [[field] for field in change.replace_fields],
            },
        }
        if change.action_reason:
            entry["action_reason"] = change.action_reason
        if change.deposed:
            entry["deposed"] = change.deposed
        if change.reason:
            entry["ubench_reason"] = change.reason
        changes.append(entry)
        if change.observation is not None and change.observation.status.is_terminal:
            drift.append(
                {
                    "address": change.address,
                    "mode": "managed",
                    "type": "ubench_service",
                    "name": change.service,
                    "index": change.index,
                    "change": {
                        "actions": ["delete"],
                        "before": {"status": "running"},
                        "after": {
                            "status": change.observation.status.value,
                            "reason": change.observation.reason,
                        },
                    },
                }
            )
    return {
        "format_version": "1.2",
        "ubench_version": __version__,
        "stack": plan.stack,
        "target": plan.target,
        "lineage": plan.lineage,
        "serial": plan.serial,
        "destroy": plan.destroy,
        "resource_changes": changes,
        "resource_drift": drift,
        "output_changes": {
            name: {
                "actions": _output_actions(before, after),
                "before": before,
                "after": None if after and UNKNOWN in after else after,
                "after_unknown": bool(after and UNKNOWN in after),
                "before_sensitive": False,
                "after_sensitive": False,
            }
            for name, (before, after) in plan.output_changes.items()
        },
        "ubench_expiring": dict(plan.expiring),
        "errored": False,
    }


def _output_actions(before: str | None, after: str | None) -> list[str]:
    if before is None:
        return ["create"]
    if after is None:
        return ["delete"]
    return ["update"]


def _sensitive(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """Mark secret environment values, which the spec holds only as hashes."""
    if not spec:
        return {}
    secret = {
        name: True
        for name, value in spec.get("environment", {}).items()
        if isinstance(value, str) and value.startswith("(secret ")
    }
    return {"environment": secret} if secret else {}
