"""Build the edge package for a target: export, optimize, quantize, parity, latency, manifest.

The package folder is self-describing: ``model.onnx`` (uint8 NHWC in, logits out),
``label_map.json`` (checked against the dataset's classes), ``weights.safetensors``,
``probe.npz`` (test images with PyTorch's logits, which the edge agent checks on the device)
and ``package.json`` with the target, the arch, the parity and latency reports
(how each was measured) and the sha256 of every file. For TensorRT targets the
ONNX is the artifact; the engine built here to prove it is kept in ``export.engine_cache_dir``
(keyed by TensorRT version, GPU and ONNX sha256) so an unchanged model is not rebuilt; the device
builds and caches its own.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import replay
from pipeline.data.manifest import load_manifest
from pipeline.data.tensors import load_split
from pipeline.errors import StaleStageError
from pipeline.export.onnx import INPUT_NAME, OUTPUT_NAME, EdgeModel, export_onnx
from pipeline.export.quantize import quantize_int8
from pipeline.finetune.train import load_model
from pipeline.models.supernet import Arch
from pipeline.params import resolve
from pipeline.targets.latency import LatencyReport, measure_latency
from pipeline.targets.runners import make_runner
from pipeline.targets.schema import Target
from pipeline.weights import sha256_file

log = logging.getLogger(__name__)


@dataclass
class Parity:
    images: int
    max_abs_diff: float
    top1_agreement: float
    engine_test_top1: float
    torch_test_top1: float
    precision: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EdgePackage:
    folder: Path
    onnx: Path
    target: str
    arch: dict[str, Any]
    classes: list[str]
    parity: Parity
    latency: LatencyReport
    optimizer: str
    files_sha256: dict[str, str]

    def to_dict(self, rel: Callable[[Path], str] = str) -> dict[str, Any]:
        """``rel``: how paths are written (the stage records them relative to the project root)."""
        d = {k: v for k, v in asdict(self).items() if k not in ("parity", "latency")}
        return {**d, "folder": rel(self.folder), "onnx": rel(self.onnx), "parity": self.parity.to_dict(),
                "latency": self.latency.to_dict(samples=False)}


def run_engine(onnx_path: Path, target: Target, images: np.ndarray, input_size: int,
               **runner_kwargs: Any) -> np.ndarray:
    """Logits of ``images`` (uint8 NHWC) through the target's runner, in target-sized batches."""
    batch = 64 if target.runtime == "onnxruntime" else target.batch_size
    outs = []
    with make_runner(onnx_path, target, input_size=input_size, **runner_kwargs) as runner:
        for i in range(0, len(images), batch):
            outs.append(runner.infer({INPUT_NAME: np.ascontiguousarray(images[i:i + batch])})[OUTPUT_NAME])
    return np.concatenate(outs)


def check_parity(onnx_path: Path, edge: EdgeModel, target: Target, images: np.ndarray, labels: np.ndarray,
                 n_compare: int, input_size: int, **runner_kwargs: Any) -> Parity:
    """Engine vs PyTorch on ``n_compare`` test images, and the engine's own top-1 on all of them."""
    with torch.no_grad():
        ref = edge(torch.from_numpy(images)).numpy()
    out = run_engine(onnx_path, target, images, input_size, **runner_kwargs)
    k = min(n_compare, len(images))
    return Parity(
        images=k,
        max_abs_diff=float(np.abs(out[:k] - ref[:k]).max()),
        top1_agreement=float((out[:k].argmax(-1) == ref[:k].argmax(-1)).mean()),
        engine_test_top1=float((out.argmax(-1) == labels).mean()),
        torch_test_top1=float((ref.argmax(-1) == labels).mean()),
        precision=target.precision,
    )


def _optimize(fp32: Path, model: torch.nn.Module, out: Path) -> Path:
    from onnxruntime.transformers.optimizer import optimize_model

    attn = model.blocks[0].attn
    optimized = optimize_model(str(fp32), model_type="vit", num_heads=attn.num_heads, hidden_size=model.embed_dim)
    optimized.save_model_to_file(str(out))
    return out


def build_package(weights: Path, data_dir: Path, out_dir: Path, target: Target, params: dict[str, Any], *,
                  root: Path | None = None) -> EdgePackage:
    """``root``: the project root that relative paths in ``params`` are taken from (default: project_root())."""
    p = params["export"]
    model, meta = load_model(weights)
    arch = Arch(**meta["arch"])
    classes = load_manifest(data_dir).classes
    if meta["classes"] != classes:
        raise StaleStageError(f"{weights}: label map {meta['classes']} does not match the dataset's classes {classes}; "
                              "run `vitforge stage finetune` again")
    size = arch.img_size
    edge = EdgeModel(model, meta["mean"], meta["std"]).eval()

    test_x, test_y = load_split(data_dir, "test", size)
    test_images = test_x.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3) uint8
    labels = test_y.numpy()

    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    work = out_dir / "build"
    work.mkdir()
    fp32 = export_onnx(model, work / "model.fp32.onnx", input_size=size, mean=meta["mean"], std=meta["std"],
                       opset=p["opset"])
    artifact, optimizer = fp32, "off"
    runner_kwargs: dict[str, Any] = {}
    if target.precision == "int8":
        train_x, _ = load_split(data_dir, "train", size)
        g = torch.Generator().manual_seed(params["seed"])
        pick = torch.randperm(len(train_x), generator=g)[: p["calibration_images"]]
        calib = train_x[pick].permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3) uint8
    if target.runtime == "tensorrt":
        # The ONNX ships; the engine here only proves parity and latency (the device builds its own). It is
        # cached outside the package folder, which is rebuilt from scratch, so an unchanged ONNX is not rebuilt.
        runner_kwargs["engine_cache_dir"] = resolve(p["engine_cache_dir"], root)
        if target.precision == "int8":  # polygraphy's Calibrator reads the same calibration images
            b = target.batch_size
            runner_kwargs["calibration"] = [{INPUT_NAME: calib[i:i + b]} for i in range(0, len(calib) - b + 1, b)]
            optimizer = "TensorRT int8, calibrated on train images"
    elif target.precision == "int8":
        artifact = quantize_int8(fp32, work / "model.int8.onnx", calib)
        optimizer = "static int8 (QDQ), calibrated on train images"
    elif p["optimize"] and target.runtime == "onnxruntime":
        artifact, optimizer = _pick_optimized(fp32, model, work, edge, target, test_images, labels, p, size)

    parity = check_parity(artifact, edge, target, test_images, labels, p["parity_images"], size, **runner_kwargs)
    latency = measure_latency(artifact, target, input_size=size, warmup=p["warmup"], runs=p["runs"],
                              images=test_images, **runner_kwargs)

    final = out_dir / "model.onnx"
    shutil.copyfile(artifact, final)
    shutil.copyfile(weights, out_dir / "weights.safetensors")
    (out_dir / "label_map.json").write_text(json.dumps({str(i): c for i, c in enumerate(classes)}, indent=1))
    (out_dir / "latency_report.json").write_text(json.dumps(latency.to_dict(), indent=1))
    (out_dir / "parity_report.json").write_text(json.dumps(parity.to_dict(), indent=1))
    # The probe set the edge agent checks the model with on the device: test images and PyTorch's logits.
    k = min(p["probe_images"], len(test_images))
    with torch.no_grad():
        expected = edge(torch.from_numpy(test_images[:k])).numpy()
    np.savez(out_dir / "probe.npz", images=test_images[:k], expected=expected, labels=labels[:k])
    shutil.rmtree(work)
    files = {f.name: sha256_file(f) for f in sorted(out_dir.iterdir()) if f.is_file()}
    pkg = EdgePackage(out_dir, final, target.name, arch.to_dict(), classes, parity, latency, optimizer, files)
    (out_dir / "package.json").write_text(json.dumps(
        {**pkg.to_dict(), "target_spec": target.model_dump(), "input": {"name": INPUT_NAME, "dtype": "uint8",
         "layout": "NHWC", "shape": ["batch", size, size, 3], "resize": "PIL bilinear, RGB, to size x size"},
         "output": OUTPUT_NAME,
         "provenance": {k: meta.get(k) for k in ("dataset_version", "git_sha", "dagster_run_id")}}, indent=1))
    return pkg


def _pick_optimized(fp32: Path, model: torch.nn.Module, work: Path, edge: EdgeModel, target: Target, images: np.ndarray,
                    labels: np.ndarray, p: dict[str, Any], size: int) -> tuple[Path, str]:
    """Keep the transformer-optimized graph only if it still matches PyTorch and is measured faster."""
    try:
        opt = _optimize(fp32, model, work / "model.opt.onnx")
    except Exception as err:  # the optimizer is best-effort by design: it may not apply to a graph
        log.warning("ONNX Runtime transformer optimizer did not apply: %s", err)
        return fp32, f"not applied: {type(err).__name__}"
    parity = check_parity(opt, edge, target, images, labels, p["parity_images"], size)
    if parity.max_abs_diff > p["fp32_max_abs_diff"]:
        return fp32, f"rejected: max abs diff {parity.max_abs_diff:.2e}"

    def timed() -> list[float]:
        return [measure_latency(f, target, input_size=size, warmup=p["warmup"] // 2, runs=p["runs"] // 3).p50_ms
                for f in (fp32, opt)]

    # which graph ships is decided by the clock: recorded, and read back by a rebuild (pipeline/replay.py)
    base, fast = replay.decide(f"optimizer:{target.name}", timed)
    if fast >= base:
        return fp32, f"rejected: not faster (p50 {fast:.3f} vs {base:.3f} ms)"
    return opt, f"onnxruntime transformer optimizer (p50 {fast:.3f} vs {base:.3f} ms unoptimized)"
