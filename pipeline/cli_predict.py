"""``vitforge predict IMAGE|DIR ... [--model NAME@ALIAS | --package DIR] [--top-k N] [--csv OUT]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.data.errors import DatasetError


def default_model(root: Path, params: dict) -> str:
    """The registered model ``--model`` defaults to: params.yaml's, else the one named for this project's dataset
    version (a clone that never pulled the data has none to name it by)."""
    from pipeline.errors import InputError
    from pipeline.stages.common import model_name

    try:
        return model_name(root, params)
    except DatasetError:
        raise InputError("no --model given, and no dataset version in this project to name the registered model "
                         "by: give --model NAME@ALIAS (or --package DIR), or set registry.model_name") from None


def cmd_predict(args: argparse.Namespace) -> int:
    from pipeline.params import load_params
    from pipeline.predict import collect, open_package, predict, registered_package, write_csv

    params = load_params(args.root)
    if args.package:
        pkg = open_package(args.package.resolve(), str(args.package))
    else:
        from pipeline.rebuild import parse_ref
        from pipeline.tracking import Tracker

        ref = args.model or f"{default_model(args.root, params)}@candidate-{params['demo']['target']}"
        Tracker.from_params(params, args.root).connect()
        pkg = registered_package(*parse_ref(ref))
    files = collect([Path(p).resolve() for p in args.images], args.split)
    skipped: list[DatasetError] | None = [] if args.skip_invalid else None
    preds = predict(pkg, files, top_k=args.top_k, skipped=skipped)
    for err in skipped or []:
        print(f"skipped {err}", file=sys.stderr)
    if not preds:
        raise DatasetError(Path(args.images[0]), f"none of the {len(files)} images can be read")
    folder_given = any(Path(p).is_dir() for p in args.images)
    if not folder_given or args.show:
        for p in preds:
            shown = "  ".join(f"{label} {prob:.3f}" for label, prob in p.top)
            print(f"{p.path}  {shown}" + (f"  (truth {p.truth})" if p.truth is not None else ""))
    if folder_given or args.csv:
        out = write_csv(preds, (args.csv or Path("predictions.csv")).resolve(), pkg.source)
        print(f"{len(preds)} predictions written to {out}")
    known = [p for p in preds if p.truth is not None]
    if known:
        right = sum(p.top[0][0] == p.truth for p in known)
        print(f"top-1 {right / len(known):.4f} ({right}/{len(known)} images with a known label)")
    print(f"model: {pkg.source} ({pkg.size}x{pkg.size}, {len(pkg.labels)} classes)"
          + (f"; {len(skipped)} unreadable images skipped" if skipped else ""))
    return 0


def _at_least_one(text: str) -> int:
    k = int(text)
    if k < 1:
        raise argparse.ArgumentTypeError("at least 1")
    return k


def add_predict_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="labels and probabilities for images, from a registered or packaged model")
    p.add_argument("images", nargs="+", metavar="IMAGE|DIR", help="image files or folders (a folder: a CSV; a "
                   "dataset version or ImageFolder tree gives the true labels, and the top-1 is printed)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="NAME@ALIAS", help="a registered version or alias (default: "
                     "<registered model>@candidate-<demo.target>; the model: registry.model_name, else "
                     "vitforge-<dataset name>)")
    src.add_argument("--package", type=Path, metavar="DIR", help="an edge package folder (runs/package/<target>)")
    p.add_argument("--top-k", type=_at_least_one, default=1, help="how many labels per image (default 1)")
    p.add_argument("--split", choices=["train", "val", "test"], help="of a dataset version folder: only that split")
    p.add_argument("--csv", type=Path, help="where the CSV goes (default for folders: predictions.csv)")
    p.add_argument("--show", action="store_true", help="print every prediction even for folders")
    p.add_argument("--skip-invalid", action="store_true", help="leave out images that cannot be read, listing "
                   "each (default: the first one stops the command)")
    p.set_defaults(func=cmd_predict)
