"""Does MAE pre-training help? Largest arch fine-tuned from MAE weights vs from scratch.

Same epochs, seed and split; prints test top-1 of both and MAE pre-training images/s.

    python bench/mae_gain.py                                   # the digits, the demo's sizes
    python bench/mae_gain.py --data ../shared/datasets/hymenoptera --img-size 128 --patch 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import bench_root, manifest_copy

from pipeline.finetune.train import finetune
from pipeline.models.supernet import SearchSpace, Supernet
from pipeline.nas.space_fit import resolve_space
from pipeline.ssl.train import pretrain
from pipeline.weights import load_weights, save_weights


def supernet_file(path: Path, params: dict, classes: list[str], backbone: Path | None) -> Path:
    space = SearchSpace.from_params(params["space"], num_classes=len(classes))
    net = Supernet(space)
    if backbone is not None:
        state, _ = load_weights(backbone)
        net.vit.load_state_dict(state, strict=False)
    meta = {"space": params["space"], "num_classes": len(classes), "classes": classes}
    return save_weights(path, net.vit.state_dict(), meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=None, help="ImageFolder (default: the digits)")
    ap.add_argument("--img-size", type=int, default=None, help="largest image size (default: params)")
    ap.add_argument("--patch", type=int, default=None)
    ap.add_argument("--pretrain-epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        overrides = {}
        if args.img_size:
            overrides["space.img_sizes"] = [args.img_size]
        if args.patch:
            overrides["space.patch_size"] = args.patch
        if args.pretrain_epochs:
            overrides["pretrain.epochs"] = args.pretrain_epochs
        if args.finetune_epochs:
            overrides["finetune.epochs"] = args.finetune_epochs
        params = bench_root(root, overrides)
        data = manifest_copy(args.data.resolve() if args.data else None, root / "data")
        from pipeline.data import load_manifest

        classes = load_manifest(data).classes
        params = {**params, "space": resolve_space(params, root, data).space}  # `auto`: fitted to the data
        space = SearchSpace.from_params(params["space"], num_classes=len(classes))
        largest = space.largest()

        t0 = time.perf_counter()
        pre = pretrain(data, root / "pretrain", params)
        t_pre = time.perf_counter() - t0
        results = {}
        for name, backbone in (("MAE", pre.weights), ("scratch", None)):
            sn = supernet_file(root / f"sn-{name}.safetensors", params, classes, backbone)
            t0 = time.perf_counter()
            ft = finetune(data, root / f"ft-{name}", params, sn, largest)
            results[name] = (ft.test.top1, time.perf_counter() - t0)
    print(f"data {args.data or 'digits'}; largest arch {largest.short()}; "
          f"{params['finetune']['epochs']} fine-tune epochs, seed {params['seed']}")
    print(f"MAE pre-training: {pre.train.steps} steps in {t_pre:.0f} s, {pre.train.images_per_s:.0f} images/s, "
          f"final loss {pre.train.history[-1]:.4f}")
    print(f"{'init':<10} {'test top-1':>10} {'fine-tune s':>12}")
    for name, (top1, secs) in results.items():
        print(f"{name:<10} {top1:>10.4f} {secs:>12.0f}")
    print(f"gain from MAE: {100 * (results['MAE'][0] - results['scratch'][0]):+.1f} points")


if __name__ == "__main__":
    main()
