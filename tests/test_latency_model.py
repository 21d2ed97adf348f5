"""The measured latency model: fit, held-out error beside the measurement noise, the gate, reuse by cache key."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import numpy as np
import pytest

from pipeline.models.supernet import Arch, SearchSpace
from pipeline.nas import latency_model as lm
from pipeline.targets import latency as tl
from pipeline.targets import load_target

SPACE = {"patch_size": 4, "img_sizes": [8, 16], "depths": [1, 2, 3], "embed_dims": [16, 32, 64],
         "head_dim": 8, "stem": "patch", "stem_width": 8, "mlp_ratios": [1.0, 2.0]}
TARGET = "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch_size: 1\nlatency_budget_ms: 5\n"
ROBUST = {"rounds": 5, "max_drift": 0.25, "remeasure": 5, "outlier_mad": 3.0, "max_mape": 0.10, "confirm": 1}
KW = {"n_fit": 10, "n_holdout": 5, "warmup": 3, "runs": 15, "seed": 0, "mean": [0.5] * 3, "std": [0.5] * 3, **ROBUST}
# The tiny space's subnets run in 0.05-0.5 ms, where a busy machine's jitter is largest. Measured robustly,
# their held-out MAPE was 2-10 % over 12 fits on this 2-core machine, with others' tests running beside it
# and with the burner below (the naive sequential loop gave 14-34 % there). 0.25 leaves room for a worse day
# and still fails a model that does not follow its subnets' latency.
TINY_MAX_MAPE = 0.25


def fit_here(tmp_path, kw=KW, target_text=TARGET, space=SPACE):
    target_path = tmp_path / "cpu.yaml"
    target_path.write_text(target_text)
    space_ = SearchSpace.from_params(space, num_classes=10)
    return lm.load_or_fit(tmp_path / "cpu.json", space_, load_target(target_path), target_path, **kw)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lat")
    model = fit_here(folder)
    return folder, folder / "cpu.yaml", SearchSpace.from_params(SPACE, num_classes=10), model


def test_fit_reports_error_on_held_out_subnets(fitted):
    _, target_path, space, model = fitted
    assert len(model.fit) == 10 and len(model.holdout) == 5
    fit_archs = {tuple(m.arch.values()) for m in model.fit}
    assert not fit_archs & {tuple(m.arch.values()) for m in model.holdout}
    assert math.isfinite(model.mape) and 0 <= model.mape <= model.max_error
    assert model.mape <= TINY_MAX_MAPE, (model.mape, model.noise, model.measurement)
    errors = [abs(p - m) / m for m, p in model.holdout_pairs(space)]
    assert model.mape == pytest.approx(sum(errors) / len(errors))
    big, small = space.largest(), space.smallest()
    assert model.predict(big, space) > model.predict(small, space) > 0
    assert model.fingerprint == lm.machine_fingerprint(load_target(target_path))
    assert model.measured_ms(big) == model.fit[0].p50_ms  # the extremes are measured into the fit set
    measured = {tuple(m.arch.values()) for m in model.fit + model.holdout}
    unmeasured = next(a for a in space.all_archs() if tuple(a.to_dict().values()) not in measured)
    assert model.measured_ms(unmeasured) is None
    # the noise is reported beside the error, and the verdict is the gate's for the threshold asked
    assert 0 <= model.noise <= model.noise_max < 1 and all(len(m.round_ms) >= 5 for m in model.fit)
    assert model.measurement[0]["rounds_kept"] == 5 and model.max_mape == 0.10
    assert (model.passed, model.verdict) == model.gate(0.10)


def test_reused_while_unchanged_refit_when_target_changes(fitted, monkeypatch):
    folder, target_path, space, model = fitted

    def no_measuring(*a, **k):
        raise AssertionError("measured again although nothing changed")

    monkeypatch.setattr(lm, "measure_archs", no_measuring)
    again = fit_here(folder)
    assert again.coef == model.coef

    target_path.write_text(TARGET.replace("latency_budget_ms: 5", "latency_budget_ms: 4"))
    with pytest.raises(AssertionError, match="measured again"):
        lm.load_or_fit(folder / "cpu.json", space, load_target(target_path), target_path, **KW)


def burn(seconds: float, procs: int) -> list[subprocess.Popen]:
    """``procs`` processes that keep the CPU busy in bursts (0.3 s on, 0.3 s off) for ``seconds`` at most."""
    code = (f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n"
            "    t = time.time() + 0.3\n    while time.time() < t: pass\n    time.sleep(0.3)\n")
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(procs)]


def test_fit_on_a_busy_machine_stays_within_bound_and_reports_noise(tmp_path):
    burners = burn(40.0, 2)
    try:
        t0 = time.monotonic()
        model = fit_here(tmp_path)
        took = time.monotonic() - t0
    finally:
        for p in burners:
            p.kill()
            p.wait(timeout=10)
    assert took < 120
    assert model.mape <= TINY_MAX_MAPE, (model.mape, model.noise, model.measurement)
    assert math.isfinite(model.noise) and model.noise >= 0
    assert (model.passed, model.verdict) == model.gate(0.10)
    assert model.passed == (model.mape <= 0.10 or (model.mape <= 0.10 + model.noise and model.confirmations > 0))


# ---- the robust timing's logic, on injected timings -------------------------------------------------------

class Clock:
    """Virtual time in ms; ``factor(now)`` slows every run started then (a busy machine)."""

    def __init__(self, factor=lambda now: 1.0):
        self.now, self.factor = 0.0, factor


class FakeRunner:
    def __init__(self, base_ms: float, clock: Clock):
        self.base_ms, self.clock, self.last = base_ms, clock, 0.0

    def infer(self, feed):
        self.last = self.base_ms * self.clock.factor(self.clock.now)
        self.clock.now += self.last
        return {}

    def last_inference_time(self):
        return self.last / 1e3

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


BASE = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0}
TIMING = {"warmup": 2, "runs": 20, "rounds": 4, "max_drift": 0.25, "remeasure": 6, "outlier_mad": 3.0}


def test_robust_stat_rejects_outliers_and_reports_spread():
    med, spread, rejected = tl.robust_stat([1.0, 1.02, 0.98, 1.01, 0.99, 10.0], 3.0)
    assert med == pytest.approx(1.0) and rejected == 1 and 0 < spread < 0.03
    assert tl.robust_stat([2.0], 3.0) == (2.0, 0.0, 0)
    assert tl.robust_stat([1.0, 1.0, 1.0, 5.0], 3.0)[:2] == (1.0, 0.0)  # MAD 0: nothing to judge by, median


def test_burst_of_load_misleads_the_sequential_loop_not_the_interleaved_rounds(monkeypatch):
    def burst(now):  # the machine is 3x slower for 100 ms, once
        return 3.0 if 30 <= now < 130 else 1.0

    clock = Clock(burst)
    monkeypatch.setattr(tl, "make_runner", lambda path, target, **kw: FakeRunner(BASE[path], clock))
    target = load_target_text(TARGET)
    naive = {k: tl.measure_latency(k, target, input_size=8, warmup=2, runs=20).p50_ms for k in BASE}
    assert max(abs(naive[k] / BASE[k] - 1) for k in BASE) > 0.5  # one arch timed inside the burst

    clock = Clock(lambda now: burst(now - clock.start))
    clock.start = clock.now
    items = {k: (FakeRunner(v, clock), {}) for k, v in BASE.items()}
    report = tl.time_rounds(items, (FakeRunner(0.5, clock), {}), **TIMING)
    assert max(report.drift) > 0.25 and report.remeasured >= 1  # the burst was seen on the reference
    assert all(report.drift[i] <= 0.25 for i in report.kept_rounds) and len(report.kept_rounds) == 4
    assert {k: t.p50_ms for k, t in report.timings.items()} == pytest.approx(BASE, rel=1e-9)
    assert report.noise == 0 and report.summary()["remeasured"] == report.remeasured


def test_outlier_round_of_one_model_is_left_out():
    clock = Clock()
    timing = {**TIMING, "rounds": 5}  # 2 warm-up runs, then per round 1 re-warm and 4 timed runs
    slow = {"calls": 0}

    class Hiccup(FakeRunner):  # the 3rd round of "b" (its calls 13-17) is 5x slower; the reference does not see it
        def infer(self, feed):
            slow["calls"] += 1
            self.base_ms = 10.0 if 13 <= slow["calls"] <= 17 else 2.0
            return super().infer(feed)

    items = {"a": (FakeRunner(1.0, clock), {}), "b": (Hiccup(2.0, clock), {}), "c": (FakeRunner(3.0, clock), {})}
    report = tl.time_rounds(items, (FakeRunner(0.5, clock), {}), **timing)
    b = report.timings["b"]
    assert sorted(b.round_ms) == pytest.approx([2.0, 2.0, 2.0, 2.0, 10.0]) and b.rejected == 1
    assert b.p50_ms == pytest.approx(2.0) and report.remeasured == 0


def test_re_measuring_drifted_rounds_is_bounded():
    clock = Clock(lambda now: 1.0 + now / 50)  # ever busier: every later round drifts
    items = {k: (FakeRunner(v, clock), {}) for k, v in BASE.items()}
    t0 = time.monotonic()
    report = tl.time_rounds(items, (FakeRunner(0.5, clock), {}), **{**TIMING, "remeasure": 3})
    assert time.monotonic() - t0 < 5
    assert len(report.drift) == 4 + 3 and report.remeasured == 3  # rounds + remeasure, then it stops
    assert len(report.kept_rounds) == 4 and max(report.drift) > 0.25


def load_target_text(text):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cpu.yaml"
        path.write_text(text)
        return load_target(path)


# ---- the gate: error beyond noise --------------------------------------------------------------------------

TRUE_COEF = np.array([0.02, 0.05, 0.01, 0.1, 0.02, 0.01, 0.03])
SPREAD = [0.9, 1.0, 1.1, 0.95, 1.05]  # round medians of one arch about its figure: noise 1.4826 x 0.05


def fake_measurements(monkeypatch, holdout_factors: list[float]):
    """Measure by formula: exact on the features (fit archs), the held-out archs x ``holdout_factors[pass]``."""
    calls = []

    def measure_archs(archs, space, target, workdir, **kw):
        factor = holdout_factors[min(len(calls), len(holdout_factors) - 1)]
        calls.append(len(archs))
        fit_dicts = {tuple(a.to_dict().items()) for a in lm.sample_archs(space, KW["n_fit"], KW["seed"])}
        timings = {}
        for a in archs:
            t = float(lm.features(a, space) @ TRUE_COEF) * (1 if tuple(a.to_dict().items()) in fit_dicts else factor)
            timings[a] = tl.RobustTiming(t, [t * s for s in SPREAD], 0, 0.0)
        return tl.RoundsReport(timings, [[0.5, 0.5]] * 5, [0.0] * 5, list(range(5)), 0, {"fake": True})

    monkeypatch.setattr(lm, "measure_archs", measure_archs)
    monkeypatch.setattr(lm, "measure_arch", lambda *a, **k: pytest.fail("the old sequential path"), raising=False)
    return calls


def test_mape_within_noise_is_confirmed_by_a_re_measurement(tmp_path, monkeypatch):
    calls = fake_measurements(monkeypatch, [1.15, 1.0])  # first pass 13 % off, then exact
    model = fit_here(tmp_path)
    assert len(calls) == 2 and model.confirmations == 1
    assert model.noise == pytest.approx(1.4826 * 0.05, rel=0.05)
    assert model.mape <= 0.10 and model.passed and len(model.measurement) == 2
    assert all(len(m.round_ms) == 10 for m in model.holdout)  # both passes pooled


def test_mape_within_noise_without_confirmation_fails(tmp_path, monkeypatch):
    calls = fake_measurements(monkeypatch, [1.15])
    model = fit_here(tmp_path, {**KW, "confirm": 0})
    assert len(calls) == 1 and 0.10 < model.mape <= 0.10 + model.noise
    assert model.passed is False and "not confirmed" in model.verdict
    calls = fake_measurements(monkeypatch, [1.15])  # the same model now allowed to confirm: measured, confirmed
    again = fit_here(tmp_path)
    assert len(calls) == 1 and again.confirmations == 1 and again.passed and "confirmed" in again.verdict


def test_error_beyond_noise_fails_without_re_measuring(tmp_path, monkeypatch):
    calls = fake_measurements(monkeypatch, [2.0])
    model = fit_here(tmp_path)
    assert len(calls) == 1 and model.mape > 0.10 + model.noise
    assert model.passed is False and "beyond" in model.verdict
    assert model.gate(0.6) == (True, model.gate(0.6)[1])  # a looser gate passes the same model


# ---- the cache key: whatever changes a timing refits ---------------------------------------------------

TRT = TARGET.replace("onnxruntime", "tensorrt").replace("device: cpu", "device: cuda").replace("fp32", "fp16")


@pytest.mark.parametrize("change", [
    "space", "mean", "std", "warmup", "runs", "rounds", "max_drift", "threads", "batch_size", "precision",
    "onnxruntime", "torch", "cpu_model", "gpu", "tensorrt", "board",
])
def test_each_key_field_refits_and_the_same_key_reuses(tmp_path, monkeypatch, change):
    import onnxruntime
    import torch

    gpu = {"name": "Tesla T4", "trt": "10.0.1", "board": None}
    monkeypatch.setattr(lm, "cuda_device_name", lambda: gpu["name"])
    monkeypatch.setattr(lm, "tensorrt_version", lambda: gpu["trt"])
    monkeypatch.setattr(lm, "board_model", lambda: gpu["board"])
    on_gpu = change in ("gpu", "tensorrt", "board")
    text = TRT if on_gpu else TARGET
    calls = fake_measurements(monkeypatch, [1.0])
    fit_here(tmp_path, target_text=text)
    fit_here(tmp_path, target_text=text)
    assert len(calls) == 1, "the same key measured again"

    kw, space = dict(KW), dict(SPACE)
    if change == "space":
        space["embed_dims"] = [16, 32, 48]
    elif change in ("mean", "std"):
        kw[change] = [0.4] * 3
    elif change in ("warmup", "runs", "rounds"):
        kw[change] += 1
    elif change == "max_drift":
        kw[change] = 0.5
    elif change == "threads":
        text = text.replace("threads: 1", "threads: 2")
    elif change == "batch_size":
        text = text.replace("batch_size: 1", "batch_size: 4")
    elif change == "precision":
        text = text.replace("fp32", "int8")
    elif change == "onnxruntime":
        monkeypatch.setattr(onnxruntime, "__version__", "0.0.1")
    elif change == "torch":
        monkeypatch.setattr(torch, "__version__", "0.0.1")
    elif change == "cpu_model":
        monkeypatch.setattr(lm, "cpu_model", lambda: "another CPU")
    elif change == "gpu":
        gpu["name"] = "NVIDIA A10"
    elif change == "tensorrt":
        gpu["trt"] = "10.1.0"
    elif change == "board":
        gpu["board"] = "NVIDIA Jetson AGX Orin Developer Kit"
    refit = fit_here(tmp_path, kw, text, space)
    assert len(calls) == 2, f"{change} changed but the saved model was reused"
    fit_here(tmp_path, kw, text, space)
    assert len(calls) == 2 and refit.key == lm.LatencyModel.load(tmp_path / "cpu.json").key


def test_measure_arch_keeps_its_signature_for_single_archs(tmp_path):
    space = SearchSpace.from_params(SPACE, num_classes=10)
    target = load_target_text(TARGET)
    ms = lm.measure_arch(Arch(1, 16, 1.0, 8), space, target, tmp_path, warmup=2, runs=6, mean=[0.5] * 3,
                         std=[0.5] * 3)
    assert 0 < ms < 50
