"""Does distillation pay with the small-data recipe? In-place (supernet) and from a CNN teacher (fine-tune).

Every arm starts from the same MAE weights and gets the same wall clock:

1. In-place distillation: the supernet trains ``--supernet`` seconds with ``supernet.distill`` off and
   on; each is scored by the inherited val top-1 of its largest, smallest and fixed random archs, and
   by ``--arch`` fine-tuned ``--finetune`` seconds from it, on the test images.
2. A CNN teacher (DeiT's soft distillation): MobileNetV3-Small trains ``--teacher`` seconds on the
   train split, then ``--arch`` fine-tunes ``--finetune`` seconds against it (``finetune(teacher=)``);
   the control fine-tunes ``--finetune + --teacher`` seconds without it, so both spend the same time.

    python bench/distill.py --root /tmp/distill-hym --data ../shared/datasets/hymenoptera/train \\
        --test-data ../shared/datasets/hymenoptera/val --budget-ms 0.4 --set space.stem=conv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import bench_root, manifest_copy, parse_sets

from pipeline.data.tensors import normalize
from pipeline.finetune.train import finetune, load_model
from pipeline.models.supernet import Arch
from pipeline.nas.space_fit import resolve_space
from pipeline.nas.supernet_train import train_supernet
from pipeline.params import PACKAGE_ROOT
from pipeline.ssl.train import pretrain

sys.path.insert(0, str(Path(__file__).parent))
from peer import test_images, train_mobilenet, write_peer_target  # noqa: E402


def test_top1(model: torch.nn.Module, data: Path, test_data: Path | None, size: int, params: dict) -> float:
    x, y = test_images(data, test_data, size)
    xt = normalize(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), params["model"]["mean"],
                   params["model"]["std"])
    with torch.inference_mode():
        pred = torch.cat([model.eval()(xt[i:i + 128]) for i in range(0, len(xt), 128)]).argmax(-1).numpy()
    return float((pred == y).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None, help="an ImageFolder; default: the digits")
    ap.add_argument("--test-data", type=Path, default=None)
    ap.add_argument("--pretrain", type=float, default=60)
    ap.add_argument("--supernet", type=float, default=90)
    ap.add_argument("--finetune", type=float, default=90)
    ap.add_argument("--teacher", type=float, default=90)
    ap.add_argument("--arch", default=None, help="depth,embed_dim,mlp_ratio,img_size; default: the space's middle")
    ap.add_argument("--budget-ms", type=float, default=None,
                    help="fit an `auto` space to one cpu-ort-fp32 target of this budget (default: the repo's targets)")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = ap.parse_args()
    root = args.root.resolve()
    sets = parse_sets(args.set)
    if args.budget_ms:
        (root / "targets").mkdir(parents=True, exist_ok=True)
        write_peer_target(root / "targets", PACKAGE_ROOT / "infra" / "targets" / "cpu-ort-fp32.yaml", args.budget_ms)
        sets["targets_dir"] = "targets"
    params = bench_root(root, sets)
    data = manifest_copy(args.data.resolve() if args.data else None, root / "data",
                         params["dataset"]["demo_image_size"])
    test_data = args.test_data.resolve() if args.test_data else None
    params = {**params, "space": resolve_space(params, root, data).space}
    sp = params["space"]
    if args.arch:
        d, e, m, i = args.arch.split(",")
        arch = Arch(int(d), int(e), float(m), int(i))
    else:
        mid = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
        arch = Arch(mid(sp["depths"]), mid(sp["embed_dims"]), mid(sp["mlp_ratios"]), mid(sp["img_sizes"]))
    print(f"space: patch {sp['patch_size']}, img_sizes {sp['img_sizes']}, stem {sp['stem']}; arch {arch.short()}")

    pre = pretrain(data, root / "pretrain", params, overrides={"time_budget_s": args.pretrain})
    rows = []
    supernets = {}
    for distill in (False, True):
        p = {**params, "supernet": {**params["supernet"], "distill": distill}}
        res = train_supernet(data, root / f"supernet-distill-{distill}", p, backbone=pre.weights,
                             overrides={"time_budget_s": args.supernet})
        supernets[distill] = res.weights
        ft = finetune(data, root / f"ft-distill-{distill}", params, res.weights, arch,
                      overrides={"time_budget_s": args.finetune})
        model, _ = load_model(ft.weights)
        top1 = test_top1(model, data, test_data, arch.img_size, params)
        inherited = np.mean(list(res.val_top1.values()))
        rows.append((f"supernet distill={'on' if distill else 'off'}", res.train.steps, inherited, res.val_top1, top1))

    # the CNN teacher, trained in the same budget the control spends fine-tuning longer
    t0 = time.perf_counter()
    cnn, cnn_steps, _ = train_mobilenet(data, arch.img_size, args.teacher, params)
    teacher_s = time.perf_counter() - t0
    cnn_top1 = test_top1(cnn, data, test_data, arch.img_size, params)
    ft = finetune(data, root / "ft-teacher", params, supernets[False], arch,
                  overrides={"time_budget_s": args.finetune}, teacher=cnn.eval())
    model, _ = load_model(ft.weights)
    with_teacher = test_top1(model, data, test_data, arch.img_size, params)
    ft = finetune(data, root / "ft-control", params, supernets[False], arch,
                  overrides={"time_budget_s": args.finetune + teacher_s})
    model, _ = load_model(ft.weights)
    control = test_top1(model, data, test_data, arch.img_size, params)

    n = len(test_images(data, test_data, arch.img_size)[1])
    print(f"\n{n} test images; arch {arch.short()}; fine-tunes {args.finetune:.0f} s")
    print(f"{'supernet':<22} {'steps':>6} {'mean inherited val':>18} {'fine-tuned test top-1':>22}")
    for name, steps, inherited, per_arch, top1 in rows:
        print(f"{name:<22} {steps:>6} {inherited:>18.4f} {top1:>22.4f}")
        print("    " + ", ".join(f"{k} {v:.3f}" for k, v in per_arch.items()))
    print(f"CNN teacher: MobileNetV3-Small {teacher_s:.0f} s ({cnn_steps} steps), test top-1 {cnn_top1:.4f}")
    print(f"fine-tune with the teacher ({args.finetune:.0f} s after it):  test top-1 {with_teacher:.4f}")
    print(f"fine-tune without it ({args.finetune + teacher_s:.0f} s, same total): test top-1 {control:.4f}")
    se = np.sqrt(0.25 / n)
    print(f"(one standard error at p=0.5 on {n} images: {se:.3f})")


if __name__ == "__main__":
    main()
