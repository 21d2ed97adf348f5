"""A latency model per target, fitted on subnets measured on that target.

Sampled subnets are exported to the edge graph (int8 targets: quantized on
calibration images), built into the target's engine and timed (p50 after
warm-up). A least-squares fit on computed features (FLOPs, params, tokens, depth,
attention and MLP terms) predicts the p50 of any arch; held-out subnets, never
seen by the fit, give its MAPE and max error. The model is saved with the target
name, the target file's hash and a fingerprint of the machine, and reused while
those are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.export.onnx import export_onnx
from pipeline.export.quantize import quantize_int8
from pipeline.models.supernet import Arch, SearchSpace, arch_flops, arch_params, build_vit, num_tokens
from pipeline.targets.latency import measure_latency
from pipeline.targets.runners import cpu_model
from pipeline.targets.schema import Target, target_file_sha256

log = logging.getLogger(__name__)

FEATURES = ["1", "mflops", "mparams", "depth*tokens", "depth*tokens^2*dim", "depth", "tokens*dim"]


def features(arch: Arch, space: SearchSpace) -> np.ndarray:
    n = num_tokens(arch, space.patch_size)
    return np.array([1.0, arch_flops(arch, space) / 1e6, arch_params(arch, space) / 1e6, arch.depth * n / 100,
                     arch.depth * n * n * arch.embed_dim / 1e7, arch.depth, n * arch.embed_dim / 1e4])


def machine_fingerprint() -> str:
    import onnxruntime

    parts = [cpu_model(), platform.machine(), str(__import__("os").cpu_count()), onnxruntime.__version__]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass
class Measurement:
    arch: dict[str, Any]
    p50_ms: float


@dataclass
class LatencyModel:
    target: str
    target_sha256: str
    fingerprint: str
    feature_names: list[str]
    coef: list[float]
    fit: list[Measurement]
    holdout: list[Measurement]
    mape: float  # on holdout, fraction (0.05 = 5 %)
    max_error: float  # on holdout, fraction
    how: dict[str, Any]

    def predict(self, arch: Arch, space: SearchSpace) -> float:
        return float(max(features(arch, space) @ np.array(self.coef), 1e-3))

    def measured_ms(self, arch: Arch) -> float | None:
        """The p50 measured for ``arch`` while fitting or holding out, if it was among them."""
        return next((m.p50_ms for m in self.fit + self.holdout if m.arch == arch.to_dict()), None)

    def holdout_pairs(self, space: SearchSpace) -> list[tuple[float, float]]:
        """(measured, predicted) p50 in ms for each held-out subnet."""
        return [(m.p50_ms, self.predict(Arch(**m.arch), space)) for m in self.holdout]

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def load(cls, path: Path) -> LatencyModel:
        d = json.loads(Path(path).read_text())
        d["fit"] = [Measurement(**m) for m in d["fit"]]
        d["holdout"] = [Measurement(**m) for m in d["holdout"]]
        return cls(**d)


def sample_archs(space: SearchSpace, n: int, seed: int, allowed_sizes: tuple[int, ...] | None = None) -> list[Arch]:
    """``n`` distinct archs, the largest and smallest first."""
    rng = random.Random(seed)
    pool = [a for a in space.all_archs() if allowed_sizes is None or a.img_size in allowed_sizes]
    if not pool:
        raise ValueError(f"no arch of the space has an img_size in {allowed_sizes}")
    extremes = [a for a in (space.largest(), space.smallest()) if a in pool]
    rest = [a for a in pool if a not in extremes]
    rng.shuffle(rest)
    return (extremes + rest)[: min(n, len(pool))]


def measure_arch(arch: Arch, space: SearchSpace, target: Target, workdir: Path, *, warmup: int, runs: int,
                 mean: list[float], std: list[float]) -> float:
    """p50 (ms) of ``arch`` with random weights, exported and run as it would ship."""
    onnx_path = export_onnx(build_vit(arch, space).eval(), workdir / f"{arch.short()}.onnx", input_size=arch.img_size,
                            mean=mean, std=std, dynamic_batch=False, batch_size=target.batch_size, check=False)
    if target.precision == "int8" and target.runtime == "onnxruntime":
        calib = np.random.default_rng(0).integers(0, 256, (16, arch.img_size, arch.img_size, 3), dtype=np.uint8)
        onnx_path = quantize_int8(onnx_path, onnx_path.with_suffix(".int8.onnx"), calib)
    return measure_latency(onnx_path, target, input_size=arch.img_size, warmup=warmup, runs=runs).p50_ms


def fit_latency_model(space: SearchSpace, target: Target, target_path: Path, *, n_fit: int, n_holdout: int,
                      warmup: int, runs: int, seed: int, mean: list[float], std: list[float]) -> LatencyModel:
    sizes = (target.input_size,) if target.input_size else None
    archs = sample_archs(space, n_fit + n_holdout, seed, sizes)
    if len(archs) < n_fit + n_holdout:
        raise ValueError(f"the space has {len(archs)} archs; the latency model wants {n_fit} + {n_holdout}")
    # Extremes go to the fit (no extrapolation); the held-out set is a random sample of the rest.
    fit_archs, holdout_archs = archs[:n_fit], archs[n_fit:]
    measured: dict[Arch, float] = {}
    with tempfile.TemporaryDirectory(prefix="vitforge-lat-") as tmp:
        for arch in tqdm(archs, desc=f"latency {target.name}", unit="arch", leave=False):
            measured[arch] = measure_arch(arch, space, target, Path(tmp), warmup=warmup, runs=runs, mean=mean,
                                          std=std)
    x = np.stack([features(a, space) for a in fit_archs])
    y = np.array([measured[a] for a in fit_archs])
    # Relative least squares: weight each row by 1/y so small and large archs count alike.
    coef, *_ = np.linalg.lstsq(x / y[:, None], np.ones_like(y), rcond=None)
    model = LatencyModel(target.name, target_file_sha256(target_path), machine_fingerprint(), FEATURES,
                         coef.tolist(), [Measurement(a.to_dict(), measured[a]) for a in fit_archs],
                         [Measurement(a.to_dict(), measured[a]) for a in holdout_archs], 0.0, 0.0,
                         {"warmup": warmup, "runs": runs, "statistic": "p50", "weights": "random",
                          "cpu_model": cpu_model()})
    errors = [abs(p - m) / m for m, p in model.holdout_pairs(space)]
    model.mape, model.max_error = float(np.mean(errors)), float(np.max(errors))
    log.info("latency model %s: MAPE %.1f %%, max %.1f %% on %d held-out subnets", target.name,
             100 * model.mape, 100 * model.max_error, len(errors))
    return model


def load_or_fit(path: Path, space: SearchSpace, target: Target, target_path: Path, **kwargs: Any) -> LatencyModel:
    """Reuse the saved model while the machine fingerprint and the target file are unchanged."""
    if path.is_file():
        old = LatencyModel.load(path)
        if old.fingerprint == machine_fingerprint() and old.target_sha256 == target_file_sha256(target_path) \
                and len(old.fit) == kwargs["n_fit"] and len(old.holdout) == kwargs["n_holdout"]:
            log.info("reusing latency model %s", path)
            return old
    model = fit_latency_model(space, target, target_path, **kwargs)
    model.save(path)
    return model
