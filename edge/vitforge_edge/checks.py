"""What the agent proves on the device before a package serves: integrity, latency, agreement.

- **Integrity:** every file's sha256 equals the registry's ``sha256.<file>`` tag for the version, and no
  expected file is missing. The tags were written when the version was registered; the package's own
  ``package.json`` is not trusted for this, since it travels with the files it would vouch for.
- **Latency:** p50 and p99 of the model here, at the target's threads and batch, against the target's
  budget (p50) and, when a version is serving, against that version's p99 times (1 + max regression).
  The two are timed side by side, in alternating rounds, so both see the same device load.
- **Engine:** for a TensorRT target the engine is built here from the ONNX (or taken from the state dir's
  cache, keyed by ONNX, precision, TensorRT version and GPU) and loaded; latency and agreement are then
  measured through it, so what is proven is what will serve. How it was obtained is in ``engine``.
- **Agreement:** the shipped probe images (test images) through this device's runtime, top-1 compared with
  the logits PyTorch gave for them at packaging time. A wrong normalization or a corrupted export shows
  here even when every hash matches.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vitforge_edge.engines import file_sha256 as sha256
from vitforge_edge.model import EdgeModel

log = logging.getLogger(__name__)


@dataclass
class Rules:
    max_p99_regression: float | None = 0.2  # against the serving version's p99, timed beside it; None: off
    min_agreement: float = 0.99  # top-1 agreement with PyTorch on the probe set
    warmup: int = 20
    runs: int = 200


@dataclass
class CheckResult:
    ok: bool
    reasons: list[str] = field(default_factory=list)
    p50_ms: float | None = None
    p99_ms: float | None = None
    agreement: float | None = None
    max_abs_diff: float | None = None
    integrity_failed: bool = False  # a file missing or not matching its sha256 (a download may fix it)
    engine: dict = field(default_factory=dict)  # runtime and version; for TensorRT the cache key and hit/build

    def to_dict(self) -> dict:
        return asdict(self)


def verify_files(folder: Path, expected: dict[str, str]) -> list[str]:
    """Problems with ``folder`` against ``{file name: sha256}``; empty when every file matches."""
    if not expected:
        return ["the registry lists no sha256 for this version"]
    problems = []
    for name, digest in sorted(expected.items()):
        f = folder / name
        if not f.is_file():
            problems.append(f"{name}: missing")
        elif sha256(f) != digest:
            problems.append(f"{name}: sha256 {sha256(f)[:12]}… does not match the registry's {digest[:12]}…")
    return problems


def latency_ms(models: list[EdgeModel], batch: int, warmup: int, runs: int,
               rounds: int = 4) -> list[tuple[float, float]]:
    """(p50, p99) in ms of one inference of ``batch`` images, for each model, timed in alternating rounds."""
    times: list[list[float]] = [[] for _ in models]
    xs = [np.random.default_rng(0).integers(0, 256, (batch, m.size, m.size, 3), dtype=np.uint8) for m in models]
    for m, x in zip(models, xs, strict=True):
        for _ in range(warmup):
            m.logits(x)
    for _ in range(rounds):
        for i, (m, x) in enumerate(zip(models, xs, strict=True)):
            for _ in range(max(runs // rounds, 1)):
                t0 = time.perf_counter()
                m.logits(x)
                times[i].append((time.perf_counter() - t0) * 1e3)
    return [(float(np.percentile(t, 50)), float(np.percentile(t, 99))) for t in times]


def probe_agreement(model: EdgeModel) -> tuple[float, float]:
    """(top-1 agreement, max abs logit difference) with the logits recorded at packaging time."""
    probe = np.load(model.folder / "probe.npz")
    out = model.logits(probe["images"])
    expected = probe["expected"]
    return float((out.argmax(-1) == expected.argmax(-1)).mean()), float(np.abs(out - expected).max())


def self_check(folder: Path, version: str, expected_sha256: dict[str, str], rules: Rules,
               serving: Path | None = None, engine_cache: Path | None = None) -> CheckResult:
    """Every check on a downloaded package; ``ok`` only when all pass. Never raises for a bad package.

    ``serving`` is the folder of the version serving now: the p99 rule compares against it, timed here.
    ``engine_cache``: where TensorRT engines built on this device are kept.
    """
    problems = verify_files(folder, expected_sha256)
    if problems:
        return CheckResult(False, problems, integrity_failed=True)
    try:
        model = EdgeModel(folder, version, engine_cache=engine_cache)
        agreement, diff = probe_agreement(model)
        target = model.spec.get("target_spec", {})
    except Exception as err:  # a package that does not load is a failed check, reported, not a crash
        return CheckResult(False, [f"the package does not load or run here: {type(err).__name__}: {err}"])
    timed = [model]
    if serving is not None and rules.max_p99_regression is not None:
        try:
            timed.append(EdgeModel(serving, serving.name, engine_cache=engine_cache))
        except Exception as err:  # noqa: BLE001  (a broken serving version must not block the one replacing it)
            log.warning("serving version %s does not load (%s): no p99 comparison", serving.name, err)
    figures = latency_ms(timed, int(target.get("batch_size", 1)), rules.warmup, rules.runs)
    (p50, p99) = figures[0]
    res = CheckResult(True, [], p50, p99, agreement, diff, engine=model.engine.description)
    budget = target.get("latency_budget_ms")
    if budget is not None and p50 > float(budget):
        res.reasons.append(f"p50 {p50:.3f} ms over the target's budget {float(budget):g} ms")
    if len(figures) > 1 and p99 > figures[1][1] * (1 + rules.max_p99_regression):
        res.reasons.append(f"p99 {p99:.3f} ms regresses more than {100 * rules.max_p99_regression:.0f} % on the "
                           f"serving version's {figures[1][1]:.3f} ms (timed beside it)")
    if agreement < rules.min_agreement:
        res.reasons.append(f"probe agreement {agreement:.3f} under {rules.min_agreement:g} "
                           f"(max logit difference {diff:.3g})")
    res.ok = not res.reasons
    return res
