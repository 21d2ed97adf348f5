"""The measured latency model: fit, held-out error, reuse while machine and target are unchanged."""

from __future__ import annotations

import math

import pytest

from pipeline.models.supernet import SearchSpace
from pipeline.nas import latency_model as lm
from pipeline.targets import load_target

SPACE = {"patch_size": 4, "img_sizes": [8, 16], "depths": [1, 2, 3], "embed_dims": [16, 32, 64],
         "head_dim": 8, "stem": "patch", "stem_width": 8, "mlp_ratios": [1.0, 2.0]}
TARGET = "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch_size: 1\nlatency_budget_ms: 5\n"
KW = {"n_fit": 10, "n_holdout": 5, "warmup": 3, "runs": 15, "seed": 0, "mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lat")
    target_path = folder / "cpu.yaml"
    target_path.write_text(TARGET)
    space = SearchSpace.from_params(SPACE, num_classes=10)
    model = lm.load_or_fit(folder / "cpu.json", space, load_target(target_path), target_path, **KW)
    return folder, target_path, space, model


def test_fit_reports_error_on_held_out_subnets(fitted):
    _, _, space, model = fitted
    assert len(model.fit) == 10 and len(model.holdout) == 5
    fit_archs = {tuple(m.arch.values()) for m in model.fit}
    assert not fit_archs & {tuple(m.arch.values()) for m in model.holdout}
    assert math.isfinite(model.mape) and 0 <= model.mape <= model.max_error
    errors = [abs(p - m) / m for m, p in model.holdout_pairs(space)]
    assert model.mape == pytest.approx(sum(errors) / len(errors))
    big, small = space.largest(), space.smallest()
    assert model.predict(big, space) > model.predict(small, space) > 0
    assert model.fingerprint == lm.machine_fingerprint()
    assert model.measured_ms(big) == model.fit[0].p50_ms  # the extremes are measured into the fit set
    measured = {tuple(m.arch.values()) for m in model.fit + model.holdout}
    unmeasured = next(a for a in space.all_archs() if tuple(a.to_dict().values()) not in measured)
    assert model.measured_ms(unmeasured) is None


def test_reused_while_unchanged_refit_when_target_changes(fitted, monkeypatch):
    folder, target_path, space, model = fitted

    def no_measuring(*a, **k):
        raise AssertionError("measured again although nothing changed")

    monkeypatch.setattr(lm, "measure_arch", no_measuring)
    again = lm.load_or_fit(folder / "cpu.json", space, load_target(target_path), target_path, **KW)
    assert again.coef == model.coef

    target_path.write_text(TARGET.replace("latency_budget_ms: 5", "latency_budget_ms: 4"))
    with pytest.raises(AssertionError, match="measured again"):
        lm.load_or_fit(folder / "cpu.json", space, load_target(target_path), target_path, **KW)
