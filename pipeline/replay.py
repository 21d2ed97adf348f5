"""What a run decided by the clock, recorded so that a rebuild decides the same.

Two kinds of decision in the chain depend on the machine's pace, not on the code, data and params:

* a step count fitted to a time budget (``training.train`` re-fits its total every few steps; the learning-
  rate schedule follows each re-fit), and
* a latency measurement (the space fit, the latency model, the search's measured picks), which feeds the
  search space and the search.

Each training stage records its decisions in a ``Journal`` while it runs (``recording``). The journals travel
with the chain: each stage writes a sidecar next to its weights (``<weights>.replay.json``, bound to the
weights' tensor digest), holding its own journal and those of the stages before it; the search result holds
them too; the package stage logs the whole chain's as ``replay.json`` in its MLflow run, so every registered
version carries them.

``vitforge rebuild`` sets ``$VITFORGE_REPLAY`` to that file. Every such decision is then read back, in the
order it was made, instead of being timed again, and a time budget is replaced by the recorded step totals.
A decision the file does not hold is a ``ReplayError``: the rebuild took another path than the original run,
which is a determinism bug to fix, not something to paper over.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ENV = "VITFORGE_REPLAY"
FORMAT = 1
SIDECAR_SUFFIX = ".replay.json"

T = TypeVar("T")


class ReplayError(RuntimeError):
    """A rebuild asked for a decision its recording does not hold (or holds fewer times): it diverged."""


@dataclass
class Journal:
    """One stage's clock-dependent decisions: key -> the values decided, in order."""

    stage: str
    entries: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, key: str, value: Any) -> None:
        self.entries.setdefault(key, []).append(value)


_recording: Journal | None = None
_replay: dict[str, dict[str, list[Any]]] | None = None  # stage -> key -> values, loaded from $VITFORGE_REPLAY
_taken: dict[tuple[str, str], int] = {}


def replaying() -> bool:
    return bool(os.environ.get(ENV))


def _recorded() -> dict[str, dict[str, list[Any]]]:
    global _replay
    path = os.environ[ENV]
    if _replay is None or _replay.get("__path__") != path:  # type: ignore[comparison-overlap]
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ReplayError(f"{path}: replay format {data.get('format')!r}, expected {FORMAT}")
        _replay = {**data["stages"], "__path__": path}  # type: ignore[dict-item]
        _taken.clear()
    return _replay


@contextmanager
def recording(stage: str) -> Iterator[Journal]:
    """The journal of ``stage`` while it runs; under replay, decisions are read from that stage's record."""
    global _recording
    previous, _recording = _recording, Journal(stage)
    try:
        yield _recording
    finally:
        _recording = previous


def decide(key: str, compute: Callable[[], T], *, encode: Callable[[T], Any] = lambda v: v,
           decode: Callable[[Any], T] = lambda v: v) -> T:
    """The value of a clock-dependent decision ``key`` of the current stage: ``compute()``d and recorded, or,
    under replay, the recorded value (the n-th call with ``key`` gets the n-th value). Outside any stage
    (benchmarks, tests of the parts) it is just ``compute()``."""
    journal = _recording
    if journal is None:
        return compute()
    if replaying():
        stages = _recorded()
        values = stages.get(journal.stage, {}).get(key, [])
        n = _taken.get((journal.stage, key), 0)
        if n >= len(values):
            raise ReplayError(f"replay ({os.environ[ENV]}): stage {journal.stage} asked for {key!r} "
                              f"{n + 1} time(s), the original run decided it {len(values)} time(s): the rebuild "
                              "diverged from the run it replays")
        _taken[(journal.stage, key)] = n + 1
        value = values[n]
        journal.add(key, value)
        return decode(value)
    value = compute()
    journal.add(key, encode(value))
    return value


def steps_override(key: str, overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """A training run's overrides; under replay, with the step totals the original run fitted (``schedule``),
    so a time budget is replayed step for step instead of timed again."""
    journal = _recording
    if journal is None or not replaying():
        return overrides
    schedule = decide(f"steps:{key}", lambda: None)
    return {**(overrides or {}), "time_budget_s": None, "max_steps": None, "schedule": schedule}


def record_steps(key: str, totals: list[list[int]]) -> None:
    """After a training run (not under replay, where ``steps_override`` read it): the totals it ran to."""
    if _recording is not None and not replaying():
        _recording.add(f"steps:{key}", [list(t) for t in totals])


# -- the chain's journals, as they travel between stages ----------------------------------------------------

def chain(upstream: dict[str, Any] | None, journal: Journal) -> dict[str, Any]:
    """``upstream``'s stages plus ``journal``'s: what the next stage carries on."""
    stages = dict((upstream or {}).get("stages", {}))
    stages[journal.stage] = journal.entries
    return {"format": FORMAT, "stages": stages}


def sidecar(weights: Path) -> Path:
    return weights.with_name(weights.name + SIDECAR_SUFFIX)


def write_sidecar(weights: Path, record: dict[str, Any]) -> Path:
    """``record`` next to ``weights``, bound to their tensor digest (tmp + rename)."""
    from pipeline.weights import load_weights, weights_sha256

    state, _ = load_weights(weights)
    path = sidecar(weights)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({**record, "weights_sha256": weights_sha256(state)}, indent=1, sort_keys=True))
    os.replace(tmp, path)
    return path


def read_sidecar(weights: Path | None) -> dict[str, Any] | None:
    """The chain record of ``weights``; None when there is none or it belongs to other weights (a stale file
    from an earlier run): a version built from those then has no replay record, and a rebuild says so."""
    if weights is None:
        return None
    path = sidecar(Path(weights))
    if not path.is_file():
        return None
    from pipeline.weights import load_weights, weights_sha256

    record = json.loads(path.read_text())
    state, _ = load_weights(Path(weights))
    if record.get("weights_sha256") != weights_sha256(state):
        return None
    return record
