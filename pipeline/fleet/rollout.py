"""Staged rollout of a registered version to a fleet, from the MLflow registry.

State lives in the registry, where devices read it: the aliases ``fleet-<name>`` (what the fleet runs)
and ``fleet-<name>-next`` (the version being rolled out), and the registered model's tag
``fleet.<name>.rollout`` (``{"version", "from", "stage", "stage_id", "percent", "started_at",
"stage_started_at", "rules"}``). A device in the current stage
(``vitforge_edge.agent.bucket(fleet, id) < percent``) follows ``-next``; the others keep ``fleet-<name>``.
Devices report every poll as a run in the experiment ``fleet-<name>``; ``evaluate`` reads those reports
and advances, finishes or aborts. A report counts for a stage when it carries that stage's ``stage_id``
(the agent copies it from the tag it acted on), never by its time: a device clock that runs behind or
ahead of the server's neither delays nor fakes a stage.

Every move (start, advance, abort, finish, rollback) is also a run in that experiment, tagged ``move``,
with from, to, why and the figures behind it: MLflow keeps no alias history, so we do. The run opens
before the registry changes and is marked FINISHED after them; a move a crash interrupted stays visible
as an unfinished run. Each move orders its registry writes so that every intermediate state is one a
device may safely act on (promote sets ``-next`` before the tag that makes devices follow it; finish
moves ``fleet-<name>`` before it removes the tag and ``-next``; abort removes the tag first).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.errors import InputError
from pipeline.fleet.schema import Fleet
from pipeline.registry.mlflow_registry import alias

HEALTHY = ("active", "serving")


class RolloutError(InputError, ValueError):
    """A move that cannot be made now (no candidate, a rollout already under way, nothing to roll back)."""


def bucket(fleet: str, device_id: str) -> int:
    """The same stable hash as the edge agent (vitforge_edge.agent.bucket), without importing it."""
    import hashlib

    return int(hashlib.sha256(f"{fleet}/{device_id}".encode()).hexdigest()[:8], 16) % 100


def stage_id(version: str, started_at: float, stage: int) -> str:
    """Names one stage of one rollout; devices echo it in their reports (tag ``rollout_stage``)."""
    return f"v{version}@{started_at:.3f}/{stage}"


def _tag(fleet: Fleet) -> str:
    return f"fleet.{fleet.name}.rollout"


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _version_of(client, model: str, name: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model, name).version)
    except MlflowException:
        return None


def rollout_state(fleet: Fleet) -> dict[str, Any] | None:
    """The rollout under way, or None (also when the registered model does not exist yet)."""
    from mlflow.exceptions import MlflowException

    try:
        raw = _client().get_registered_model(fleet.model).tags.get(_tag(fleet))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return json.loads(raw) if raw else None


def _experiment(fleet: Fleet) -> str:
    import mlflow

    name = f"fleet-{fleet.name}"
    exp = mlflow.get_experiment_by_name(name)
    return exp.experiment_id if exp else mlflow.create_experiment(name)


class _Move:
    """An MLflow run around one move: opened first, FINISHED only once the registry writes are done."""

    def __init__(self, fleet: Fleet, move: str, frm: str | None, to: str | None, why: str,
                 figures: dict[str, float] | None = None):
        self.client = _client()
        run = self.client.create_run(_experiment(fleet), run_name=f"{move} v{frm or '-'} -> v{to or '-'}", tags={
            "move": move, "fleet": fleet.name, "target": fleet.target, "from": frm or "", "to": to or "", "why": why})
        self.run_id = run.info.run_id
        for k, v in (figures or {}).items():
            self.client.log_metric(self.run_id, k, float(v))

    def __enter__(self) -> _Move:
        return self

    def __exit__(self, exc_type, *_: Any) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if exc_type else "FINISHED")


def promote(fleet: Fleet) -> dict[str, Any]:
    """Start rolling out the target's newest passing candidate."""
    client = _client()
    if rollout_state(fleet):
        raise RolloutError(f"fleet {fleet.name}: a rollout is under way (`vitforge fleet status {fleet.name}`)")
    candidate = _version_of(client, fleet.model, alias("candidate", fleet.target))
    if candidate is None:
        raise RolloutError(f"fleet {fleet.name}: {fleet.model} has no {alias('candidate', fleet.target)} to promote")
    current = _version_of(client, fleet.model, f"fleet-{fleet.name}")
    if candidate == current:
        raise RolloutError(f"fleet {fleet.name}: version {candidate} already runs on the fleet")
    now = time.time()
    state = {"version": candidate, "from": current, "stage": 0, "stage_id": stage_id(candidate, now, 0),
             "percent": fleet.stages[0].percent, "started_at": now, "stage_started_at": now,
             "rules": fleet.agent_rules()}
    with _Move(fleet, "start", current, candidate, f"promote {alias('candidate', fleet.target)}"):
        client.set_registered_model_alias(fleet.model, f"fleet-{fleet.name}-next", candidate)
        client.set_registered_model_tag(fleet.model, _tag(fleet), json.dumps(state))
    return state


def candidate_to_roll_out(fleet: Fleet) -> str | None:
    """The target's candidate when the fleet should start rolling it out: no rollout under way, the fleet
    does not run it, and no earlier rollout tried it (an aborted version is not retried by itself)."""
    client = _client()
    if rollout_state(fleet):
        return None
    candidate = _version_of(client, fleet.model, alias("candidate", fleet.target))
    if candidate is None or candidate == _version_of(client, fleet.model, f"fleet-{fleet.name}"):
        return None
    if any(m["move"] == "start" and m["to"] == candidate for m in history(fleet)):
        return None
    return candidate


@dataclass
class StageHealth:
    devices: list[str]  # the fleet's known devices in the current stage
    healthy: list[str]  # on the new version, serving
    failed: list[str]  # rejected it (integrity, latency, agreement)
    waiting: list[str]  # no report on it yet
    figures: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_reports(fleet: Fleet) -> dict[str, dict[str, Any]]:
    """The newest report of every device that has reported to the fleet (by the device's own clock, which
    orders one device's reports; ``time`` is only shown, never compared with the server's)."""
    client = _client()
    exp = _experiment(fleet)
    runs = client.search_runs([exp], filter_string="tags.device_id LIKE '%'", order_by=["attribute.start_time DESC"],
                              max_results=5000)
    latest: dict[str, dict[str, Any]] = {}
    for r in runs:
        dev = r.data.tags["device_id"]
        if dev not in latest:
            latest[dev] = {**r.data.tags, **r.data.metrics, "time": r.info.start_time / 1000}
    return latest


def stage_health(fleet: Fleet, state: dict[str, Any]) -> StageHealth:
    latest = device_reports(fleet)
    known = sorted(latest)
    recent = {d: r for d, r in latest.items() if r.get("rollout_stage") == state["stage_id"]}
    devices = [d for d in known if bucket(fleet.name, d) < state["percent"]]
    healthy, failed, waiting = [], [], []
    for d in devices:
        rep = recent.get(d)
        if rep and rep.get("version") == state["version"] and rep["state"] in HEALTHY \
                and rep.get("serving") == state["version"]:
            healthy.append(d)
        elif rep and rep.get("version") == state["version"] and rep["state"] == "rejected":
            failed.append(d)
        else:
            waiting.append(d)
    p99 = [recent[d]["p99_ms"] for d in healthy if "p99_ms" in recent[d]]
    figures = {"stage_devices": len(devices), "healthy": len(healthy), "failed": len(failed),
               "failure_share": len(failed) / max(len(devices), 1)} | ({"max_p99_ms": max(p99)} if p99 else {})
    return StageHealth(devices, healthy, failed, waiting, figures)


def evaluate(fleet: Fleet, now: float | None = None) -> tuple[str, dict[str, Any]]:
    """One look at the rollout: ``("idle"|"wait"|"advance"|"finish"|"abort", details)``, acted on. ``details``:
    the rollout's state, the stage's health and ``why``, a line saying what decided."""
    state = rollout_state(fleet)
    if state is None:
        return "idle", {"why": "no rollout under way (`vitforge fleet promote` starts one)"}
    now = time.time() if now is None else now
    health = stage_health(fleet, state)
    stage = fleet.stages[state["stage"]]
    details = {"state": state, "health": health.to_dict()}
    if health.figures["failure_share"] > fleet.abort.max_failure_share:
        details["why"] = (f"{len(health.failed)} of {len(health.devices)} stage devices rejected "
                          f"v{state['version']}: {', '.join(health.failed)}")
        abort(fleet, details["why"], health.figures)
        return "abort", details
    soak_left = stage.soak_s - (now - state["stage_started_at"])
    enough = len(health.healthy) >= stage.min_devices and not health.waiting
    if soak_left > 0 or not enough:
        details["why"] = "; ".join(
            ([f"{len(health.waiting)} stage devices not serving v{state['version']} yet: "
              f"{', '.join(health.waiting[:5])}{' ...' if len(health.waiting) > 5 else ''}"] if health.waiting else [])
            + ([f"{len(health.healthy)} healthy of the {stage.min_devices} the stage needs"]
               if len(health.healthy) < stage.min_devices else [])
            + ([f"soaking {soak_left:.0f} s more"] if soak_left > 0 else []))
        return "wait", details
    client = _client()
    if state["stage"] + 1 == len(fleet.stages):
        with _Move(fleet, "finish", state["from"], state["version"], "every stage healthy", health.figures):
            client.set_registered_model_alias(fleet.model, f"fleet-{fleet.name}", state["version"])
            client.set_registered_model_alias(fleet.model, alias("champion", fleet.target), state["version"])
            client.delete_registered_model_tag(fleet.model, _tag(fleet))
            client.delete_registered_model_alias(fleet.model, f"fleet-{fleet.name}-next")
        details["why"] = (f"every stage healthy: fleet-{fleet.name} and {alias('champion', fleet.target)} "
                          f"are v{state['version']}")
        return "finish", details
    nxt = {**state, "stage": state["stage"] + 1, "percent": fleet.stages[state["stage"] + 1].percent,
           "stage_id": stage_id(state["version"], state["started_at"], state["stage"] + 1), "stage_started_at": now}
    with _Move(fleet, "advance", state["from"], state["version"],
               f"stage {state['stage'] + 1} healthy; to {nxt['percent']} %", health.figures):
        client.set_registered_model_tag(fleet.model, _tag(fleet), json.dumps(nxt))
    details["state"] = nxt
    details["why"] = f"stage {state['stage'] + 1} healthy; stage {state['stage'] + 2}: {nxt['percent']} % of devices"
    return "advance", details


def abort(fleet: Fleet, why: str, figures: dict[str, float] | None = None) -> None:
    """Stop the rollout: every device returns to ``fleet-<name>``."""
    state = rollout_state(fleet)
    if state is None:
        raise RolloutError(f"fleet {fleet.name}: no rollout under way")
    client = _client()
    with _Move(fleet, "abort", state["version"], state["from"], why, figures):
        client.delete_registered_model_tag(fleet.model, _tag(fleet))
        client.delete_registered_model_alias(fleet.model, f"fleet-{fleet.name}-next")


def history(fleet: Fleet) -> list[dict[str, Any]]:
    """Every move, oldest first: time, move, from, to, why, status."""
    runs = _client().search_runs([_experiment(fleet)], filter_string="tags.move LIKE '%'",
                                 order_by=["attribute.start_time ASC"], max_results=5000)
    return [{"time": r.info.start_time / 1000, "move": r.data.tags["move"], "from": r.data.tags["from"],
             "to": r.data.tags["to"], "why": r.data.tags["why"], "status": r.info.status, **r.data.metrics}
            for r in runs]


def rollback(fleet: Fleet) -> str:
    """Return the fleet to the version it ran before its last finished rollout (or rollback)."""
    if rollout_state(fleet):
        raise RolloutError(f"fleet {fleet.name}: a rollout is under way; abort it instead")
    done = [m for m in history(fleet) if m["move"] in ("finish", "rollback") and m["status"] == "FINISHED"]
    if not done or not done[-1]["from"]:
        raise RolloutError(f"fleet {fleet.name}: no earlier version to roll back to")
    last = done[-1]
    client = _client()
    with _Move(fleet, "rollback", last["to"], last["from"], f"rollback of {last['move']} to v{last['from']}"):
        client.set_registered_model_alias(fleet.model, alias("champion", fleet.target), last["from"])
        client.set_registered_model_alias(fleet.model, f"fleet-{fleet.name}", last["from"])
    return last["from"]
