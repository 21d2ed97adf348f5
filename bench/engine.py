"""Engines for the chosen model: PyTorch eager, ORT fp32, ORT int8 (p50, same threads), GFLOP/s.

    python bench/engine.py --target cpu-ort-fp32 [--root .]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from common import eager_p50_ms, gemm_gflops

import pipeline  # noqa: F401
from pipeline.data.tensors import load_split
from pipeline.export.onnx import EdgeModel, export_onnx
from pipeline.export.package import check_parity
from pipeline.export.quantize import quantize_int8
from pipeline.finetune.train import load_model
from pipeline.models.supernet import Arch, SearchSpace, arch_flops
from pipeline.params import load_params, project_root
from pipeline.paths import paths
from pipeline.stages.search import resolve_target
from pipeline.targets.latency import measure_latency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="cpu-ort-fp32")
    ap.add_argument("--root", type=Path, default=None)
    args = ap.parse_args()
    root = (args.root or project_root()).resolve()
    params = load_params(root)
    target, _ = resolve_target(root, params, args.target)
    ft = json.loads(paths(root, params).finetune_result(args.target).read_text())
    model, meta = load_model(root / ft["weights"])  # recorded relative to the root
    arch = Arch(**meta["arch"])
    space = SearchSpace.from_params(meta["space"], num_classes=len(meta["classes"]))
    flops = arch_flops(arch, space)
    size, p = arch.img_size, params["export"]
    data = paths(root, params).dataset()
    test_x, test_y = load_split(data, "test", size)
    images = test_x.permute(0, 2, 3, 1).contiguous().numpy()
    edge = EdgeModel(model, meta["mean"], meta["std"]).eval()

    torch.set_num_threads(target.threads)
    eager = eager_p50_ms(edge, torch.from_numpy(images[:1]))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", input_size=size, mean=meta["mean"], std=meta["std"])
        train_x, _ = load_split(data, "train", size)
        calib = train_x[torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:128]]
        int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx", calib.permute(0, 2, 3, 1).contiguous().numpy())
        rows = {}
        for name, path in (("ORT fp32", fp32), ("ORT int8", int8)):
            lat = measure_latency(path, target, input_size=size, warmup=p["warmup"], runs=p["runs"], images=images)
            par = check_parity(path, edge, target, images, test_y.numpy(), p["parity_images"], size)
            rows[name] = (lat.p50_ms, par.engine_test_top1)
    torch_top1 = float((edge(torch.from_numpy(images)).argmax(-1).numpy() == test_y.numpy()).mean())
    peak = gemm_gflops()
    print(f"model {arch.short()} ({flops / 1e6:.1f} MFLOPs/image), target {target.name}, "
          f"{target.threads} thread(s), batch 1; machine fp32 GEMM {peak:.1f} GFLOP/s (1 thread, 512^3)")
    print(f"{'engine':<14} {'p50 ms':>8} {'vs eager':>9} {'GFLOP/s':>8} {'% of GEMM':>10} {'test top-1':>10}")
    print(f"{'PyTorch eager':<14} {eager:>8.3f} {1.0:>8.2f}x {flops / eager / 1e6:>8.2f} "
          f"{100 * flops / eager / 1e6 / peak:>9.1f}% {torch_top1:>10.4f}")
    for name, (ms, top1) in rows.items():
        print(f"{name:<14} {ms:>8.3f} {eager / ms:>8.2f}x {flops / ms / 1e6:>8.2f} "
              f"{100 * flops / ms / 1e6 / peak:>9.1f}% {top1:>10.4f}")
    fp32_ms, int8_ms = rows["ORT fp32"][0], rows["ORT int8"][0]
    print(f"ORT fp32 vs eager {eager / fp32_ms:.2f}x (goal >= 2x); int8 vs fp32 {fp32_ms / int8_ms:.2f}x "
          f"(goal >= 1.5x) at {100 * (rows['ORT fp32'][1] - rows['ORT int8'][1]):+.1f} points top-1")


if __name__ == "__main__":
    main()
