"""Our chosen ViT vs MobileNetV3-Small from random init: same data, split and wall-clock budget.

MobileNetV3-Small (torchvision, random init) is trained on the train split for as
long as our model's fine-tuning took (or --budget-s), exported the same way
(uint8 NHWC in, normalization in the graph) and timed with ONNX Runtime on the
target. Our model's figures come from the project root's package stage.

    python bench/peer.py --target cpu-ort-fp32 [--root .] [--img-size 32] [--budget-s 240]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import pipeline  # noqa: F401
from pipeline.data.tensors import load_split, normalize
from pipeline.export.onnx import export_onnx
from pipeline.finetune.train import predict, random_shift
from pipeline.params import load_params, project_root, resolve
from pipeline.stages.search import resolve_target
from pipeline.targets.latency import measure_latency


def train_mobilenet(data: Path, img_size: int, budget_s: float, params: dict, seed: int):
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(seed)
    torch.set_num_threads(params["finetune"]["threads"])
    mean, std = params["model"]["mean"], params["model"]["std"]
    images, y = load_split(data, "train", img_size)
    x = normalize(images, mean, std)
    n_classes = int(y.max()) + 1
    model = mobilenet_v3_small(num_classes=n_classes)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    bs, steps, t0 = 64, 0, time.perf_counter()
    model.train()
    while time.perf_counter() - t0 < budget_s:
        perm = torch.randperm(len(x))
        for i in range(0, len(x) - bs + 1, bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(model(random_shift(x[idx], params["finetune"]["max_shift"])), y[idx],
                                   label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            steps += 1
            if time.perf_counter() - t0 >= budget_s:
                break
    test_images, y_test = load_split(data, "test", img_size)
    top1 = float((predict(model, normalize(test_images, mean, std)).argmax(-1) == y_test).float().mean())
    return model.eval(), top1, steps, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--target", default="cpu-ort-fp32")
    ap.add_argument("--root", type=Path, default=None)
    ap.add_argument("--img-size", type=int, default=None, help="MobileNet input size (default: the dataset's "
                    "largest image size in params)")
    ap.add_argument("--budget-s", type=float, default=None, help="default: our fine-tuning's wall time")
    args = ap.parse_args()
    root = (args.root or project_root()).resolve()
    params = load_params(root)
    target, _ = resolve_target(root, params, args.target)
    ours_ft = json.loads((resolve(params["finetune"]["out_dir"], root) / args.target / "result.json").read_text())
    ours_pkg = json.loads((resolve(params["export"]["out_dir"], root) / args.target / "result.json").read_text())
    budget = args.budget_s or ours_ft["train_seconds"]
    size = args.img_size or max(params["space"]["img_sizes"])
    data = resolve(params["dataset"]["tracked_dir"], root)

    model, top1, steps, secs = train_mobilenet(data, size, budget, params, params["seed"])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "mnv3.onnx", input_size=size, mean=params["model"]["mean"],
                                std=params["model"]["std"])
        lat = measure_latency(onnx_path, target, input_size=size, warmup=params["export"]["warmup"],
                              runs=params["export"]["runs"])
    arch = ours_ft["arch"]
    print(f"data {data} (test split {ours_ft['test']['n']} images); target {target.name}: "
          f"{lat.how['engine_version']}, {target.threads} thread(s), batch {target.batch_size}")
    print(f"training wall-clock: ours fine-tuned {ours_ft['train_seconds']:.0f} s; MobileNetV3-Small {budget:.0f} s")
    print(f"{'model':<36} {'input':>6} {'test top-1':>10} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'vitforge ViT ' + '-'.join(f'{k[0]}{v}' for k, v in arch.items()):<36} {arch['img_size']:>6} "
          f"{ours_pkg['test_top1']:>10.4f} {ours_pkg['p50_ms']:>8.3f} {ours_pkg['p99_ms']:>8.3f}")
    print(f"{'MobileNetV3-Small (random init)':<36} {size:>6} {top1:>10.4f} {lat.p50_ms:>8.3f} {lat.p99_ms:>8.3f}"
          f"   ({steps} steps in {secs:.0f} s)")


if __name__ == "__main__":
    main()
