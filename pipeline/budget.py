"""Time budgets: users think in minutes, the training loops in steps.

``vitforge demo --time-budget 10m`` gives the chain one wall-clock budget; each
stage that trains gets a share of what is left when it starts (shares in
params.yaml, ``budget.shares``), so a stage that finishes early leaves its time
to the ones after it and one that overruns takes it from them. Inside a stage
the training loop turns its seconds into a step count (``pipeline.training``),
never fewer than the stage's ``min_steps``; the step count is recorded, so a
rebuild replays steps, not the clock.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from pipeline.errors import ParamsError

_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """``"90s"``, ``"10m"``, ``"1.5h"`` or plain seconds -> seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ParamsError(f"time budget {text!r}: expected a positive number with an optional unit s, m or h "
                         "(e.g. 600, 90s, 10m, 1.5h)")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


@dataclass
class ChainBudget:
    """One wall-clock budget split across the chain's stages by their shares of what remains."""

    total_s: float
    shares: dict[str, float]
    started: float = field(default_factory=time.perf_counter)
    spent: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.shares.items() if not isinstance(v, (int, float)) or v <= 0}
        if bad:
            raise ParamsError(f"params.yaml budget.shares: every share must be a positive number, got {bad}")

    def remaining_s(self) -> float:
        return max(0.0, self.total_s - (time.perf_counter() - self.started))

    def for_stage(self, name: str) -> float:
        """Seconds for ``name``: its share of the time left, among the stages not yet run."""
        if name not in self.shares:
            raise ParamsError(f"params.yaml budget.shares has no stage {name!r} (has {sorted(self.shares)})")
        todo = [s for s in self.shares if s not in self.spent]
        share = self.shares[name] / sum(self.shares[s] for s in todo)
        return self.remaining_s() * share

    def nominal_s(self, name: str) -> float:
        """``name``'s share of the whole budget: what it gets when no stage before it overruns."""
        return self.total_s * self.shares[name] / sum(self.shares.values())

    def done(self, name: str, seconds: float) -> None:
        self.spent[name] = seconds
