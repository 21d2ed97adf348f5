"""The gates between a package and the registry. Pure functions: figures in, verdicts out."""

from __future__ import annotations

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
    """fp32: outputs within fp32_max_abs_diff and top-1 agreement; int8: agreement and accuracy, never export alone."""
    if parity.precision == "int8":
        drop = parity.torch_test_top1 - parity.engine_test_top1
        passed = parity.top1_agreement >= p["int8_min_agreement"] and drop <= p["int8_max_top1_drop"]
        limits = {"min_agreement": p["int8_min_agreement"], "max_top1_drop": p["int8_max_top1_drop"],
                  "top1_drop": drop}
    else:
        passed = parity.max_abs_diff <= p["fp32_max_abs_diff"] and parity.top1_agreement >= p["fp32_min_agreement"]
        limits = {"max_abs_diff_limit": p["fp32_max_abs_diff"], "min_agreement": p["fp32_min_agreement"]}
    return Gate("check_edge_package_parity", passed, {**parity.to_dict(), **limits})


def latency_gate(p50_ms: float, p99_ms: float, budget_ms: float) -> Gate:
    return Gate("check_edge_package_latency_budget", p50_ms <= budget_ms,
                {"p50_ms": p50_ms, "p99_ms": p99_ms, "budget_ms": budget_ms})


def champion_gate(top1: float, champion: dict[str, Any] | None, tolerance: float) -> Gate:
    if champion is None:
        return Gate("check_edge_package_accuracy_vs_champion", True,
                    {"test_top1": top1, "note": "no champion for this target yet"})
    return Gate("check_edge_package_accuracy_vs_champion", top1 >= champion["test_top1"] - tolerance,
                {"test_top1": top1, "champion_top1": champion["test_top1"], "champion_version": champion["version"],
                 "tolerance": tolerance})
