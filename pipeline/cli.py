"""The ``vitforge`` command: demo data, the DVC stages, the demo.

``dvc.yaml`` calls ``vitforge stage <name>``; each stage calls the same function
its Dagster asset calls. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pipeline.data.errors import DatasetError
from pipeline.params import load_params, project_root
from pipeline.targets.schema import TargetError


def _tracker(root: Path, params: dict):
    from pipeline.tracking import Tracker

    return Tracker.from_params(params, root)


def cmd_demo_data(args: argparse.Namespace) -> int:
    from pipeline.data.demo import write_digits

    params = load_params(args.root)
    n = write_digits(Path(args.dest), params["dataset"]["demo_image_size"])
    print(f"wrote {n} digit images to {args.dest}")
    return 0


def cmd_stage_dataset(args: argparse.Namespace) -> int:
    from pipeline.stages.dataset import run_dataset

    params = load_params(args.root)
    p = params["dataset"]
    res = run_dataset(
        args.root, params, _tracker(args.root, params),
        data=args.data or p["data"], fmt=args.format or p["format"],
        skip_invalid=args.skip_invalid or p["skip_invalid"],
    )
    print(f"dataset version {res.version}")
    print(f"{res.num_images} images, {len(res.classes)} classes, format {res.format}")
    print("split   " + "  ".join(f"{s}={n}" for s, n in res.counts.items()))
    hist = {}
    from pipeline.data import load_manifest

    hist = load_manifest(Path(res.tracked_dir)).class_histogram()
    for name, per_split in hist.items():
        print(f"  {name:>16}: " + "  ".join(f"{s}={n}" for s, n in per_split.items()))
    for s in res.skipped:
        print(f"skipped {s['path']}: {s['error']}")
    print(f"MLflow run {res.mlflow_run_id}")
    return 0


def cmd_stage_pretrain(args: argparse.Namespace) -> int:
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.pretrain import run_pretrain

    params = load_params(args.root)
    res = run_pretrain(args.root, params, _tracker(args.root, params), dataset_ref(args.root, params),
                       resume=args.resume)
    print(f"MAE pre-training: {res.steps} steps, final loss {res.final_loss:.4f}, {res.images_per_s:.0f} images/s")
    print(f"weights {res.weights}  (MLflow run {res.mlflow_run_id})")
    return 0


def cmd_stage_supernet(args: argparse.Namespace) -> int:
    from pipeline.params import resolve
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.supernet import run_supernet

    params = load_params(args.root)
    backbone = resolve(params["pretrain"]["out_dir"], args.root) / "backbone.safetensors"
    res = run_supernet(args.root, params, _tracker(args.root, params), dataset_ref(args.root, params),
                       str(backbone) if backbone.exists() else None, resume=args.resume)
    print(f"supernet: {res.steps} steps; val top-1 per arch:")
    for name, acc in res.val_top1.items():
        print(f"  {name:<28} {acc:.4f}")
    print(f"weights {res.weights}  (MLflow run {res.mlflow_run_id})")
    return 0


def cmd_stage_search(args: argparse.Namespace) -> int:
    from pipeline.params import resolve
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.search import run_search

    params = load_params(args.root)
    weights = resolve(params["supernet"]["out_dir"], args.root) / "supernet.safetensors"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no supernet yet; run `vitforge stage supernet` first")
    res = run_search(args.root, params, _tracker(args.root, params), dataset_ref(args.root, params), str(weights),
                     args.target)
    _write_json(resolve(params["search"]["out_dir"], args.root) / f"{args.target}.json", res.to_dict())
    print(f"target {res.target}: budget {res.budget_ms:g} ms, latency model MAPE {100 * res.latency_mape:.1f} % "
          f"(max {100 * res.latency_max_error:.1f} %)")
    print(f"chosen   {res.arch}  val top-1 {res.val_top1:.4f}  p50 {res.measured_p50_ms:.3f} ms (measured)")
    print(f"largest  {res.largest_arch}  val top-1 {res.largest_val_top1:.4f}  p50 {res.largest_p50_ms:.3f} ms")
    print(f"speedup  {res.largest_p50_ms / res.measured_p50_ms:.1f}x; {res.evaluated} archs evaluated; "
          f"MLflow run {res.mlflow_run_id}")
    return 0


def cmd_targets_list(args: argparse.Namespace) -> int:
    from pipeline.params import resolve
    from pipeline.targets import TargetError, list_targets, load_target

    params = load_params(args.root)
    print(f"{'target':<16} {'runtime':<12} {'device':<12} {'precision':<9} {'batch':>5} {'budget_ms':>9}  measurable here")
    for name, path in list_targets(resolve(params["targets_dir"], args.root)).items():
        try:
            t = load_target(path)
        except TargetError as err:
            print(f"{name:<16} invalid: {err}")
            continue
        ok, why = t.measurable_here()
        print(f"{name:<16} {t.runtime:<12} {t.device:<12} {t.precision:<9} {t.batch_size:>5} "
              f"{t.latency_budget_ms:>9g}  {'yes' if ok else 'no'} ({why})")
    return 0


def _write_json(path: Path, obj: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=str))


def cmd_demo(args: argparse.Namespace) -> int:
    """The whole chain, as far as it is built, on the packaged digits."""
    start = time.perf_counter()
    args.data, args.format, args.skip_invalid, args.resume = None, None, False, False
    args.target = load_params(args.root)["demo"]["target"]
    for name, step in [("dataset", cmd_stage_dataset), ("pretrain", cmd_stage_pretrain),
                       ("supernet", cmd_stage_supernet), (f"search {args.target}", cmd_stage_search)]:
        print(f"== {name}", flush=True)
        rc = step(args)
        if rc:
            return rc
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitforge", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="project root (default: $VITFORGE_ROOT or checkout)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write scikit-learn's digits as an ImageFolder of PNGs")
    p.add_argument("dest")
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("demo", help="run the whole chain on the packaged digits")
    p.set_defaults(func=cmd_demo)

    stage = sub.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    stages = stage.add_subparsers(dest="stage", required=True)
    p = stages.add_parser("dataset", help="validate, split and version a dataset")
    p.add_argument("--data", help="dataset folder or builtin:digits (default from params.yaml)")
    p.add_argument("--format", choices=["imagefolder", "coco"])
    p.add_argument("--skip-invalid", action="store_true", help="drop bad files instead of failing, listing each")
    p.set_defaults(func=cmd_stage_dataset)
    p = stages.add_parser("pretrain", help="MAE pre-training of the largest ViT")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_stage_pretrain)
    p = stages.add_parser("supernet", help="weight-sharing supernet training from the MAE weights")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.set_defaults(func=cmd_stage_supernet)
    p = stages.add_parser("search", help="latency model + hardware-aware search for one target")
    p.add_argument("--target", required=True, help="a file name (without .yaml) in infra/targets/")
    p.set_defaults(func=cmd_stage_search)

    targets = sub.add_parser("targets", help="hardware targets")
    tsub = targets.add_subparsers(dest="targets_cmd", required=True)
    p = tsub.add_parser("list", help="each target with its budget and whether it can be measured here")
    p.set_defaults(func=cmd_targets_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.root = (args.root or project_root()).resolve()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (DatasetError, TargetError, ValueError, KeyError, FileNotFoundError) as err:
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
