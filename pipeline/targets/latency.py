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
