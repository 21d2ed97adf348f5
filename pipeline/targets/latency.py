"""Measure an exported model on its target: warm-up, then timed runs; p50/p90/p99 and raw samples."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.export.onnx import INPUT_NAME
from pipeline.targets.runners import engine_description, make_runner
from pipeline.targets.schema import Target

log = logging.getLogger(__name__)


@dataclass
class LatencyReport:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    warmup: int
    runs: int
    input_shape: list[int]
    how: dict[str, Any] = field(default_factory=dict)  # engine, precision, threads, batch, CPU model
    samples_ms: list[float] = field(default_factory=list)

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not samples:
            d.pop("samples_ms")
        return d


def measure_latency(onnx_path: Path, target: Target, *, input_size: int, warmup: int, runs: int,
                    images: np.ndarray | None = None, **runner_kwargs: Any) -> LatencyReport:
    """Time ``runner.infer`` at the target's batch size; polygraphy times the engine call alone."""
    shape = (target.batch_size, input_size, input_size, 3)
    if images is None:
        images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    feed = {INPUT_NAME: np.ascontiguousarray(images[: target.batch_size])}
    runner = make_runner(onnx_path, target, input_size=input_size, **runner_kwargs)
    samples = []
    with runner:
        for _ in range(warmup):
            runner.infer(feed)
        for _ in range(runs):
            runner.infer(feed)
            samples.append(runner.last_inference_time() * 1e3)
    arr = np.array(samples)
    return LatencyReport(float(np.percentile(arr, 50)), float(np.percentile(arr, 90)), float(np.percentile(arr, 99)),
                         float(arr.mean()), warmup, runs, list(shape), engine_description(target), samples)


# ---- robust timing of many models at once: interleaved rounds, a reference, drift and outliers ------------

MAD_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal noise
REFERENCE_MIN_RUNS = 10  # timed runs of each reference block at least, so that its median is steady
REFERENCE_CHECKS = 4  # the reference is timed before each round and after each quarter of it
SCALE_FLOOR = 0.01  # outliers are judged on at least 1 % of the median (identical values have no MAD)


def robust_stat(values: list[float], outlier_mad: float) -> tuple[float, float, int]:
    """(median of the values kept, their relative spread, how many were rejected).

    A value further than ``outlier_mad`` robust standard deviations (1.4826 x MAD, at least 1 % of the
    median) from the median is an outlier and dropped. The spread is 1.4826 x MAD / median of the values
    kept: the relative noise of one value (0 with fewer than two).
    """
    arr = np.asarray(values, dtype=float)
    med = float(np.median(arr))
    mad = float(np.median(np.abs(arr - med)))
    kept = arr[np.abs(arr - med) <= outlier_mad * max(MAD_SIGMA * mad, SCALE_FLOOR * abs(med))]
    kept_med = float(np.median(kept))
    spread = MAD_SIGMA * float(np.median(np.abs(kept - kept_med))) / kept_med if len(kept) > 1 and kept_med else 0.0
    return kept_med, spread, len(arr) - len(kept)


@dataclass
class RobustTiming:
    p50_ms: float  # median of the round medians kept
    round_ms: list[float]  # the median of each kept round (outliers included; p50 leaves them out)
    rejected: int  # round medians rejected as outliers
    noise: float  # relative spread of the round medians (1.4826 x MAD / median)


@dataclass
class RoundsReport:
    timings: dict[Any, RobustTiming]
    reference_ms: list[list[float]]  # the reference's medians in each round timed (before it, each quarter)
    drift: list[float]  # each round's reference slowdown against the quiet reference (lower quartile of blocks)
    kept_rounds: list[int]  # indices of the rounds the figures come from
    remeasured: int  # extra rounds timed in place of drifted ones
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def noise(self) -> float:
        """The median item's relative spread of repeated rounds: how far apart two timings of one model fall."""
        return float(np.median([t.noise for t in self.timings.values()])) if self.timings else 0.0

    @property
    def noise_max(self) -> float:
        return float(max((t.noise for t in self.timings.values()), default=0.0))

    def summary(self) -> dict[str, Any]:
        return {**self.settings, "rounds_timed": len(self.drift), "rounds_kept": len(self.kept_rounds),
                "remeasured": self.remeasured, "max_drift_seen": float(max(self.drift, default=0.0)),
                "noise": self.noise, "noise_max": self.noise_max}


def time_rounds(items: dict[Any, tuple[Any, dict[str, np.ndarray]]], reference: tuple[Any, dict[str, np.ndarray]], *,
                warmup: int, runs: int, rounds: int, max_drift: float, remeasure: int,
                outlier_mad: float) -> RoundsReport:
    """Time every ``(runner, feed)`` of ``items`` robustly against a busy machine; runners are active.

    After ``warmup`` runs each, ``rounds`` rounds time every item for ``ceil(runs / rounds)`` runs (after a
    short re-warm), in alternating order (forward, then backward), with the ``reference`` timed before the
    round and after each quarter of it. A load that comes and goes then hits every item alike, not one
    item's whole measurement. A round with a reference block slower than the reference's quiet time by
    more than ``max_drift`` (relative) drifted: it is timed again, at most ``remeasure`` extra rounds in
    all, and the ``rounds`` least drifted rounds are kept. The quiet time is the lower quartile of the
    reference's blocks (contention only slows), so a load present throughout counts as no drift: it slows
    every item alike. Per item, the figure is the median of the kept rounds' medians, round medians beyond
    ``outlier_mad`` robust standard deviations left out; their spread is the item's noise.
    """
    if rounds < 1 or runs < 1 or remeasure < 0 or max_drift <= 0:
        raise ValueError("time_rounds needs rounds >= 1, runs >= 1, remeasure >= 0 and max_drift > 0")
    per_round = max(1, -(-runs // rounds))
    rewarm = max(1, warmup // rounds)
    keys = list(items)
    segment = max(1, -(-len(keys) // REFERENCE_CHECKS))
    ref_runs = max(per_round, REFERENCE_MIN_RUNS)

    def block(runner: Any, feed: dict[str, np.ndarray], n: int = per_round) -> float:
        for _ in range(rewarm):
            runner.infer(feed)
        samples = []
        for _ in range(n):
            runner.infer(feed)
            samples.append(runner.last_inference_time() * 1e3)
        return robust_stat(samples, outlier_mad)[0]

    for runner, feed in [reference, *items.values()]:
        for _ in range(warmup):
            runner.infer(feed)
    medians: list[dict[Any, float]] = []
    refs: list[list[float]] = []

    def one_round() -> None:
        order = keys if len(medians) % 2 == 0 else keys[::-1]
        checks = [block(*reference, ref_runs)]
        row = {}
        for start in range(0, len(order), segment):
            for k in order[start:start + segment]:
                row[k] = block(*items[k])
            checks.append(block(*reference, ref_runs))
        refs.append(checks)
        medians.append(row)

    def drifts() -> list[float]:
        base = float(np.percentile([v for r in refs for v in r], 25))
        return [max(0.0, max(r) / base - 1) for r in refs]

    for _ in range(rounds):
        one_round()
    extra = 0
    while sum(d <= max_drift for d in drifts()) < rounds and extra < remeasure:
        one_round()
        extra += 1
    drift = drifts()
    kept = sorted(sorted(range(len(drift)), key=drift.__getitem__)[:rounds])
    timings = {}
    for k in keys:
        values = [medians[i][k] for i in kept]
        p50, noise, rejected = robust_stat(values, outlier_mad)
        timings[k] = RobustTiming(p50, values, rejected, noise)
    if drift and max(drift[i] for i in kept) > max_drift:
        log.warning("latency: rounds drifted over %.0f %% after %d re-measured (worst kept %.0f %%); the figures "
                    "are from the %d least drifted", 100 * max_drift, extra, 100 * max(drift[i] for i in kept),
                    len(kept))
    return RoundsReport(timings, refs, drift, kept, extra,
                        {"warmup": warmup, "runs": runs, "rounds": rounds, "runs_per_round": per_round,
                         "max_drift": max_drift, "remeasure": remeasure, "outlier_mad": outlier_mad})
