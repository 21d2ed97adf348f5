"""Our searched ViT vs MobileNetV3-Small from scratch, at the CNN's own latency and the same wall clock.

The protocol:
1. A fresh project root over the data; the dataset stage versions it (train/val/test split).
2. MobileNetV3-Small (torchvision, random init) trains on the train split for ``--budget`` seconds
   (the shared loop, cosine schedule, RandAugment and label smoothing as ours), is exported the same
   way (uint8 NHWC in, normalization in the graph) and timed with ONNX Runtime on ``--base-target``.
3. Its p50 becomes the latency budget of the one target in the root's target folder (``peer.yaml``,
   else a copy of the base target), so an ``auto`` space is fitted to that budget.
4. Our whole chain runs for that target with the same ``--budget`` as its time budget (MAE +
   supernet + search + fine-tune share it; the dataset and package stages are outside, as the
   CNN's export and timing are).
5. Both are scored through ONNX Runtime on the same test images: the stage's test split, or
   ``--test-data`` (an ImageFolder with the same classes that no stage ever saw).

It prints top-1 and p50/p99 for both and writes ``peer.png`` (the search's front, ours and the CNN).

    python bench/peer.py --root /tmp/peer-digits --budget 240
    python bench/peer.py --root /tmp/peer-hym --data ../shared/datasets/hymenoptera/train \\
        --test-data ../shared/datasets/hymenoptera/val --budget 420 --cnn-size 128 --set space.stem=conv
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from common import bench_root, parse_sets
from PIL import Image

from pipeline.data.manifest import load_manifest
from pipeline.data.tensors import load_split
from pipeline.export.onnx import export_onnx
from pipeline.export.package import run_engine
from pipeline.params import PACKAGE_ROOT
from pipeline.paths import paths
from pipeline.recipe import BatchAugment, Recipe
from pipeline.targets.latency import measure_latency
from pipeline.targets.schema import load_target
from pipeline.training import TrainConfig, seed_everything, train

PEER_TARGET = "peer"


def train_mobilenet(data: Path, size: int, budget_s: float, params: dict) -> tuple[torch.nn.Module, int, float]:
    """MobileNetV3-Small from random init on the train split, for ``budget_s`` seconds."""
    from torchvision.models import mobilenet_v3_small

    p = params["finetune"]
    cfg = TrainConfig(epochs=1, batch_size=p["batch_size"], lr=2e-3, weight_decay=0.01, warmup_steps=p["warmup_steps"],
                      grad_clip=p["grad_clip"], checkpoint_every=10**9, seed=params["seed"], threads=p["threads"],
                      time_budget_s=budget_s, min_steps=p["min_steps"])
    seed_everything(cfg.seed, cfg.threads)
    images, y = load_split(data, "train", size)
    classes = load_manifest(data).classes
    recipe = Recipe(rand_augment=p["rand_augment"], mixup=0.0, cutmix=0.0, mix_prob=0.0,
                    label_smoothing=p["label_smoothing"], random_erasing=0.0, drop_path=0.0, max_shift=0)
    augment = BatchAugment(recipe, len(classes), params["model"]["mean"], params["model"]["std"], cfg.seed)
    model = mobilenet_v3_small(num_classes=len(classes))

    def step_loss(m: torch.nn.Module, idx: torch.Tensor, step: int) -> torch.Tensor:
        xb, target = augment(images[idx], y[idx], step)
        return augment.loss(m(xb), target)

    res = train(model, step_loss, len(images), cfg, desc="mobilenet_v3_small")
    return model.eval(), res.steps, res.seconds


def test_images(data: Path, test_data: Path | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC test images at ``size`` and their labels: the test split, or a held-out ImageFolder."""
    if test_data is None:
        x, y = load_split(data, "test", size)
        return x.permute(0, 2, 3, 1).contiguous().numpy(), y.numpy()
    classes = load_manifest(data).classes
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((test_data / name).iterdir()):
            with Image.open(f) as img:  # resized as the stages resize (pipeline.data.tensors.load_split)
                images.append(np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)))
            labels.append(label)
    return np.stack(images), np.array(labels)


def top1(onnx_path: Path, target, images: np.ndarray, labels: np.ndarray, size: int) -> float:
    return float((run_engine(onnx_path, target, images, size).argmax(-1) == labels).mean())


def write_peer_target(targets: Path, base: Path, budget_ms: float) -> None:
    spec = yaml.safe_load(base.read_text())
    spec["latency_budget_ms"] = round(budget_ms, 4)
    spec["description"] = f"{spec.get('description', base.stem)}; budget = MobileNetV3-Small's p50 (bench/peer.py)"
    (targets / f"{PEER_TARGET}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def pareto_png(path: Path, search: dict, ours: tuple[float, float], cnn: tuple[float, float], title: str) -> None:
    from pipeline import plots

    fig = plots.pareto(search["front"], search["front"], search["budget_ms"], None, title)
    ax = fig.axes[0]
    ax.scatter([ours[0]], [ours[1]], marker="*", s=220, color="C2", zorder=6, label="ours (measured, test)")
    ax.scatter([cnn[0]], [cnn[1]], marker="s", s=90, color="C1", zorder=6, label="MobileNetV3-Small (test)")
    ax.set_xlabel("p50 latency (ms): front predicted, markers measured")
    ax.set_ylabel("top-1: front inherited val, markers test")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True, help="a fresh project root for this comparison")
    ap.add_argument("--data", default="builtin:digits")
    ap.add_argument("--test-data", type=Path, default=None, help="a held-out ImageFolder (default: the test split)")
    ap.add_argument("--unlabeled", type=Path, default=None, help="extra images for our MAE (the CNN cannot use them)")
    ap.add_argument("--budget", type=float, default=240.0, help="training wall clock in seconds, for both")
    ap.add_argument("--base-target", default="cpu-ort-fp32", help="runtime, threads and batch of the comparison")
    ap.add_argument("--cnn-size", type=int, default=32, help="MobileNetV3-Small's input size")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    root = args.root.resolve()
    data = args.data if args.data.startswith("builtin:") else str(Path(args.data).resolve())
    params = bench_root(root, {"dataset.data": data, "targets_dir": "targets"} | parse_sets(args.set))
    targets = root / "targets"  # the peer target alone: an `auto` space is fitted to the tightest target
    targets.mkdir(parents=True, exist_ok=True)
    vitforge = [sys.executable, "-m", "pipeline.cli", "--root", str(root)]
    subprocess.run(vitforge + ["stage", "dataset"], check=True)
    tracked = paths(root, params).dataset()
    base_file = PACKAGE_ROOT / "infra" / "targets" / f"{args.base_target}.yaml"
    base = load_target(base_file)
    p = params["export"]

    # 1-2. the CNN, trained for the budget, exported and timed
    cnn, cnn_steps, cnn_s = train_mobilenet(tracked, args.cnn_size, args.budget, params)
    cnn_onnx = export_onnx(cnn, root / "mobilenet_v3_small.onnx", input_size=args.cnn_size,
                           mean=params["model"]["mean"], std=params["model"]["std"])
    budget_ms = measure_latency(cnn_onnx, base, input_size=args.cnn_size, warmup=p["warmup"], runs=p["runs"]).p50_ms
    x, y = test_images(tracked, args.test_data, args.cnn_size)
    cnn_top1 = top1(cnn_onnx, base, x, y, args.cnn_size)

    # 3-4. our chain, for a target whose budget is the CNN's p50, with the same time budget
    write_peer_target(targets, base_file, budget_ms)
    t0 = time.perf_counter()
    extra = ["--unlabeled", str(args.unlabeled.resolve())] if args.unlabeled else []
    rc = subprocess.run(vitforge + ["run", "--data", data, "--target", PEER_TARGET, "--time-budget", f"{args.budget}s",
                                    *extra]).returncode
    chain_s = time.perf_counter() - t0
    pkg_result = paths(root, params).package_result(PEER_TARGET)
    if rc and not pkg_result.is_file():
        sys.exit(f"the chain exited with {rc} before packaging; MobileNetV3-Small: test top-1 {cnn_top1:.4f}, "
                 f"p50 {budget_ms:.3f} ms")
    if rc:  # a gate failed after packaging: the package is still there to compare
        print(f"the chain exited with {rc} (a gate failed); comparing the package it left", file=sys.stderr)

    # 5. both scored on the same test images through ONNX Runtime
    search = json.loads(paths(root, params).search_result(PEER_TARGET).read_text())
    pkg_dir = paths(root, params).package_dir(PEER_TARGET)
    pkg = json.loads((pkg_dir / "result.json").read_text())
    size = search["arch"]["img_size"]
    x, y = test_images(tracked, args.test_data, size)
    ours_top1 = top1(pkg_dir / "model.onnx", base, x, y, size)
    # timed side by side, one after the other, in the same process
    ours_lat = measure_latency(pkg_dir / "model.onnx", base, input_size=size, warmup=p["warmup"], runs=p["runs"])
    cnn_lat = measure_latency(cnn_onnx, base, input_size=args.cnn_size, warmup=p["warmup"], runs=p["runs"])

    where = args.test_data or "the stage's test split"
    print(f"\ndata {args.data}; test images: {len(y)} from {where}")
    print(f"engine {cnn_lat.how['engine_version']}, {base.threads} thread(s), batch {base.batch_size}; "
          f"target budget = the CNN's p50 {budget_ms:.3f} ms (measured in this run, before the chain)")
    print(f"training wall clock: MobileNetV3-Small {cnn_s:.0f} s ({cnn_steps} steps); ours {chain_s:.0f} s for the "
          f"whole chain incl. dataset and package (time budget {args.budget:.0f} s for MAE + supernet + search + "
          "fine-tune)")
    print(f"{'model':<34} {'input':>5} {'test top-1':>10} {'p50 ms':>8} {'p99 ms':>8}")
    name = "vitforge ViT " + "-".join(f"{k[0]}{v:g}" for k, v in search["arch"].items())
    print(f"{name:<34} {size:>5} {ours_top1:>10.4f} {ours_lat.p50_ms:>8.3f} {ours_lat.p99_ms:>8.3f}")
    print(f"{'MobileNetV3-Small (random init)':<34} {args.cnn_size:>5} {cnn_top1:>10.4f} {cnn_lat.p50_ms:>8.3f} "
          f"{cnn_lat.p99_ms:>8.3f}")
    won = ours_top1 >= cnn_top1 and ours_lat.p50_ms <= cnn_lat.p50_ms
    print(f"goal (ours >= CNN top-1 at <= its p50): {'met' if won else 'NOT met'} "
          f"({100 * (ours_top1 - cnn_top1):+.1f} points, {ours_lat.p50_ms / cnn_lat.p50_ms:.2f}x the CNN's p50; "
          f"package p50 in the chain {pkg['p50_ms']:.3f} ms)")
    png = root / "peer.png"
    pareto_png(png, search, (ours_lat.p50_ms, ours_top1), (cnn_lat.p50_ms, cnn_top1), f"peer: {Path(args.data).name}")
    print(f"Pareto plot {png}")


if __name__ == "__main__":
    main()
