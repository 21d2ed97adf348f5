"""The gates between a package and the registry, on hand-made figures (pure functions)."""

from __future__ import annotations

from pipeline.export.package import Parity
from pipeline.params import PACKAGE_ROOT, load_params
from pipeline.registry.gates import champion_gate, latency_gate, parity_gate


def test_gates_on_hand_made_figures():
    p = load_params(PACKAGE_ROOT)["export"]
    ok = Parity(64, 2e-6, 1.0, 0.95, 0.95, "fp32")
    assert parity_gate(ok, p).passed
    assert not parity_gate(Parity(64, 3e-3, 1.0, 0.95, 0.95, "fp32"), p).passed
    assert not parity_gate(Parity(64, 2e-6, 0.98, 0.95, 0.95, "fp32"), p).passed
    assert parity_gate(Parity(64, 0.3, 1.0, 0.945, 0.95, "int8"), p).passed  # judged on accuracy
    assert not parity_gate(Parity(64, 0.01, 1.0, 0.90, 0.95, "int8"), p).passed
    assert champion_gate(0.9, None, 0.005).passed
    assert champion_gate(0.9, {"version": "3", "test_top1": 0.904, "images": 180}, 0.005).passed
    assert not champion_gate(0.9, {"version": "3", "test_top1": 0.91, "images": 180}, 0.005).passed


def test_a_p50_over_budget_once_is_judged_on_the_median_of_its_remeasurements():
    assert not latency_gate(0.25, 0.3, 0.2).passed  # measured once: over budget fails
    spell = latency_gate(0.25, 0.3, 0.2, [0.18, 0.19, 0.17, 0.26])  # one slow spell among five
    assert spell.passed and spell.details["judged_p50_ms"] == 0.19 and spell.details["measurements"] == 5
    assert not latency_gate(0.25, 0.3, 0.2, [0.21, 0.24, 0.19, 0.22]).passed  # over budget beyond the noise
