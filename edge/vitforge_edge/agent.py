"""The device agent: follow the fleet's alias, and let a new version serve only once it is proven here.

One poll (``poll_once``):

1. Which alias this device follows: ``fleet-<name>``, or ``fleet-<name>-next`` while a rollout is under
   way and this device's stable bucket (sha256 of fleet and device id, 0-99) is below the rollout's
   current percentage. The rollout state is the registered model's tag ``fleet.<name>.rollout``
   (written by ``vitforge fleet promote``): ``{"version", "percent", "stage_id", "rules"}``.
2. Nothing to do when that version already serves, or was rejected here (a failed check of the model,
   or a local rollback away from it). A failed integrity check is not remembered: the next poll
   downloads again.
3. Otherwise: download the package files into the state dir's ``tmp/``, verify every sha256 against the
   version's registry tags, and run the self-check (latency against the budget and, during a rollout,
   against the serving version's p99 timed beside it; probe agreement).
4. Passed: install and switch ``current`` atomically (the old version stays as ``previous``). Failed:
   the old version keeps serving, and the version is remembered as rejected.
5. Report device id, version, state, reasons, p50/p99 and agreement as an MLflow run in ``fleet-<name>``,
   tagged with the ``stage_id`` of the rollout stage the poll acted on: the controller counts a report for a
   stage by that id, not by its time, so this device's clock need not agree with the server's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from vitforge_edge.checks import CheckResult, Rules, self_check
from vitforge_edge.registry import MlflowRest, RegistryError
from vitforge_edge.store import Store

log = logging.getLogger(__name__)

EDGE_FILES = ["model.onnx", "label_map.json", "package.json", "probe.npz"]  # what a device downloads
ONBOARD = "onboard.json"  # the self-check figures of a version, measured on this device, kept beside it


def bucket(fleet: str, device_id: str) -> int:
    """A device's stable place (0-99) in the fleet's rollout order."""
    return int(hashlib.sha256(f"{fleet}/{device_id}".encode()).hexdigest()[:8], 16) % 100


def rollout_state(tags: dict[str, str], fleet: str) -> dict | None:
    raw = tags.get(f"fleet.{fleet}.rollout")
    return json.loads(raw) if raw else None


@dataclass
class PollReport:
    device_id: str
    fleet: str
    alias: str
    version: str | None  # the version this poll was about
    serving: str | None  # the version serving after the poll
    state: str  # serving | active | rejected | no-version | unreachable | error
    check: CheckResult | None = None
    reasons: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0
    rollout_stage: str = ""  # the rollout stage (its stage_id) this poll acted on; "" outside a rollout

    def tags(self) -> dict[str, str]:
        return {"device_id": self.device_id, "fleet": self.fleet, "alias": self.alias, "version": self.version or "",
                "serving": self.serving or "", "state": self.state, "rollout_stage": self.rollout_stage,
                "reasons": "; ".join(self.reasons)[:4000],
                "engine": json.dumps(self.check.engine) if self.check and self.check.engine else ""}

    def metrics(self) -> dict[str, float]:
        c = self.check
        figures = {"bytes_downloaded": float(self.bytes_downloaded)}
        if c is None:
            return figures
        return figures | {k: v for k, v in (("p50_ms", c.p50_ms), ("p99_ms", c.p99_ms), ("agreement", c.agreement))
                          if v is not None}


class Agent:
    def __init__(self, client: MlflowRest, model_name: str, fleet: str, device_id: str, state_dir: Path):
        self.client, self.model_name, self.fleet, self.device_id = client, model_name, fleet, device_id
        self.store = Store(state_dir)

    def poll_once(self) -> PollReport:
        with self.store.lock():  # one writer at a time: a local rollback waits for the poll
            return self._locked_poll()

    def _locked_poll(self) -> PollReport:
        serving = self.store.current()
        before = self.client.bytes_downloaded
        try:
            rollout = rollout_state(self.client.model_tags(self.model_name), self.fleet)
            report = self._poll(serving, rollout)
            report.rollout_stage = str((rollout or {}).get("stage_id", ""))
            report.bytes_downloaded = self.client.bytes_downloaded - before
        except RegistryError as err:  # the server is away: keep serving, try again next poll
            report = PollReport(self.device_id, self.fleet, "", None, serving, "unreachable", reasons=[str(err)])
            log.warning("%s: %s", self.device_id, err)
            return report
        except Exception as err:  # noqa: BLE001  (anything else: keep serving and keep polling, but say so)
            log.exception("%s: poll failed", self.device_id)
            report = PollReport(self.device_id, self.fleet, "", None, serving, "error",
                                reasons=[f"{type(err).__name__}: {err}"])
        try:
            self.client.report(f"fleet-{self.fleet}", f"{self.device_id} {report.state} v{report.version}",
                               report.tags(), report.metrics())
        except RegistryError as err:
            log.warning("%s: report not delivered: %s", self.device_id, err)
        return report

    def _poll(self, serving: str | None, rollout: dict | None) -> PollReport:
        in_stage = rollout is not None and bucket(self.fleet, self.device_id) < int(rollout.get("percent", 0))
        alias = f"fleet-{self.fleet}-next" if in_stage else f"fleet-{self.fleet}"
        mv = self.client.version_by_alias(self.model_name, alias)
        if mv is None and in_stage:  # a rollout tag without its alias (an abort half seen): the fleet's version
            alias = f"fleet-{self.fleet}"
            mv = self.client.version_by_alias(self.model_name, alias)
        if mv is None:
            return PollReport(self.device_id, self.fleet, alias, None, serving, "no-version",
                              reasons=[f"alias {alias} is not set"])
        if mv.version == serving:
            return PollReport(self.device_id, self.fleet, alias, mv.version, serving, "serving")
        if mv.version in self.store.rejected():
            return PollReport(self.device_id, self.fleet, alias, mv.version, serving, "rejected",
                              reasons=["rejected here before"])
        # the fleet's rules while it rolls out; otherwise integrity, budget and agreement only
        known = set(Rules.__dataclass_fields__)  # rules a newer controller adds are ignored, not fatal
        rules = (Rules(**{k: v for k, v in rollout["rules"].items() if k in known}) if rollout and "rules" in rollout
                 else Rules(max_p99_regression=None))
        staging = self.store.staging()
        self.client.download(mv, EDGE_FILES, staging)
        expected = {k: v for k, v in mv.sha256().items() if k in EDGE_FILES}
        missing = [f for f in EDGE_FILES if f not in expected]
        check = (CheckResult(False, [f"the registry has no sha256 for {', '.join(missing)}"]) if missing else
                 self_check(staging, mv.version, expected, rules, serving=self.store.current_dir(),
                            engine_cache=self.store.engines))
        if not check.ok:
            shutil.rmtree(staging, ignore_errors=True)
            if not check.integrity_failed:  # a bad download is fetched again next poll; a bad model is not
                self.store.reject(mv.version)
            log.warning("%s: v%s rejected: %s", self.device_id, mv.version, "; ".join(check.reasons))
            return PollReport(self.device_id, self.fleet, alias, mv.version, serving, "rejected", check,
                              check.reasons)
        (staging / ONBOARD).write_text(json.dumps({**check.to_dict(), "checked_at": time.time()}))
        self.store.install(mv.version, staging)
        self.store.activate(mv.version)
        self.store.prune()
        log.info("%s: v%s active (p50 %.3f ms, p99 %.3f ms, agreement %.3f, %s)", self.device_id, mv.version,
                 check.p50_ms, check.p99_ms, check.agreement, check.engine.get("runtime"))
        return PollReport(self.device_id, self.fleet, alias, mv.version, mv.version, "active", check)

    def run(self, interval_s: float, max_polls: int | None = None) -> None:
        n = 0
        while max_polls is None or n < max_polls:
            self.poll_once()
            n += 1
            time.sleep(interval_s)
