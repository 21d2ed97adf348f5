"""The gates between a package and the registry. Pure functions: figures in, verdicts out."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.export.package import Parity


@dataclass
class Gate:
    name: str
    passed: bool
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parity_gate(parity: Parity, p: dict[str, Any]) -> Gate:
    """Each precision by its own limits (``export.<precision>_...``): half precision can never meet fp32's.
    fp32/fp16: outputs within ``<precision>_max_abs_diff`` and top-1 agreement; int8: agreement and accuracy
    drop, never the outputs alone (a quantized graph moves logits far more than it moves decisions)."""
    prec = parity.precision
    if prec == "int8":
        drop = parity.torch_test_top1 - parity.engine_test_top1
        passed = parity.top1_agreement >= p["int8_min_agreement"] and drop <= p["int8_max_top1_drop"]
        limits = {"min_agreement": p["int8_min_agreement"], "max_top1_drop": p["int8_max_top1_drop"],
                  "top1_drop": drop}
    elif prec in ("fp32", "fp16"):
        max_diff, min_agree = p[f"{prec}_max_abs_diff"], p[f"{prec}_min_agreement"]
        passed = parity.max_abs_diff <= max_diff and parity.top1_agreement >= min_agree
        limits = {"max_abs_diff_limit": max_diff, "min_agreement": min_agree}
    else:
        raise ValueError(f"parity: no limits for precision {prec!r} (fp32, fp16 or int8)")
    return Gate("check_edge_package_parity", passed, {**parity.to_dict(), **limits})


def latency_gate(p50_ms: float, p99_ms: float, budget_ms: float, remeasured_p50_ms: list[float] | None = None) -> Gate:
    """p50 within the budget. A first p50 over it is not the verdict when it was measured again: sub-millisecond
    timings move by tens of percent between runs on a shared machine, so the median of every p50 taken decides."""
    taken = [p50_ms, *(remeasured_p50_ms or [])]
    judged = float(statistics.median(taken))
    return Gate("check_edge_package_latency_budget", judged <= budget_ms,
                {"p50_ms": p50_ms, "p99_ms": p99_ms, "budget_ms": budget_ms, "judged_p50_ms": judged,
                 "measurements": len(taken)})


def champion_gate(top1: float, champion: dict[str, Any] | None, tolerance: float) -> Gate:
    """The candidate's test top-1 against the champion's, both measured on the same images (the candidate's
    test split). ``champion``: {"version", "test_top1", "images"}, or None when the target has no champion."""
    if champion is None:
        return Gate("check_edge_package_accuracy_vs_champion", True,
                    {"test_top1": top1, "note": "no champion for this target yet"})
    return Gate("check_edge_package_accuracy_vs_champion", top1 >= champion["test_top1"] - tolerance,
                {"test_top1": top1, "champion_top1": champion["test_top1"], "champion_version": champion["version"],
                 "images": champion["images"], "tolerance": tolerance})
