"""The ``vitforge`` command: demo data, the DVC stages, the demo.

``dvc.yaml`` calls ``vitforge stage <name>``; each stage calls the same function
its Dagster asset calls. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from pipeline.errors import InputError, MissingStageError
from pipeline.params import ENV_SET, checkout_note, load_params, parse_sets, project_root
from pipeline.paths import paths

INPUT_ERRORS: tuple[type[Exception], ...] = (InputError,)  # bad input, told in one line


def _tracker(root: Path, params: dict):
    from pipeline.tracking import Tracker

    tracker = Tracker.from_params(params, root)
    # where the metadata the CLI records links to: the MLflow UI of `vitforge serve`
    tracker.ui_url = os.environ.get("VITFORGE_MLFLOW_UI_URL") or params["mlflow"].get("ui_url")
    return tracker


def _record(root: Path, asset: str, events, partition: str | None = None) -> None:
    """The stage's result in the project's Dagster instance, as a run of ``asset`` would leave it
    (assets/recording.py): ``events`` an Output, or (Output or None, checks)."""
    from assets.recording import record

    output, checks = events if isinstance(events, tuple) else (events, [])
    record(root, asset, output, checks, partition)


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
    tracker = _tracker(args.root, params)
    res = run_dataset(
        args.root, params, tracker,
        data=_data_arg(args.data) or p["data"], fmt=args.format or p["format"],
        skip_invalid=args.skip_invalid or p["skip_invalid"], unlabeled=_data_arg(getattr(args, "unlabeled", None)),
        resplit=True if getattr(args, "resplit", False) else None,
    )
    from assets.checks import dataset_check
    from assets.dataset import dataset_output

    _record(args.root, "dataset", (dataset_output(res, tracker), [dataset_check(res.to_dict(), args.root)]))
    print(f"dataset version {res.version}")
    print(f"{res.num_images} images, {len(res.classes)} classes, format {res.format}")
    print("split   " + "  ".join(f"{s}={n}" for s, n in res.counts.items()))
    if res.given_splits:
        drawn = [s for s in ("val", "test") if s not in res.given_splits]
        print(f"        kept as shipped: {', '.join(s + '/' for s in res.given_splits)}"
              + (f"; {' and '.join(drawn)} drawn from train/" if drawn else "") + " (--resplit: split all by hash)")
    if res.format == "coco":
        print(f"COCO to classes: an image's label is the category of its largest box; {res.without_box} image(s) "
              "without a box are versioned but not trained or tested on")
    if res.unlabeled:
        print(f"unlabeled {res.unlabeled} images (MAE pre-training only)")
    if res.native_size:
        print(f"native size {res.native_size[0]}x{res.native_size[1]} (median)")
    for name, per_split in res.class_histogram.items():
        print(f"  {name:>16}: " + "  ".join(f"{s}={n}" for s, n in per_split.items()))
    for s in res.skipped:
        print(f"skipped {s['path']}: {s['error']}")
    print(f"MLflow run {res.mlflow_run_id}")
    return 0


def _data_arg(data: str | None) -> str | None:
    """``--data`` as the user typed it: a folder from the current directory (params.yaml's, from the root)."""
    if not data or data.startswith("builtin:"):
        return data
    return str(Path(data).resolve())


def cmd_stage_pretrain(args: argparse.Namespace) -> int:
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.pretrain import run_pretrain

    params = load_params(args.root)
    tracker = _tracker(args.root, params)
    res = run_pretrain(args.root, params, tracker, dataset_ref(args.root, params),
                       resume=args.resume, overrides=_budget_override(args))
    from assets.training import pretrain_output

    _record(args.root, "pretrained_backbone", pretrain_output(res, tracker))
    fit = res.space_fit
    if fit["target"]:
        print(f"space fitted to {fit['target']} ({fit['budget_ms']:g} ms) and the images' native {fit['native_size']} "
              f"px: patch_size {res.space['patch_size']}, img_sizes {res.space['img_sizes']}; fastest subnet "
              f"{fit['fastest_ms']:.3f} ms, largest {fit['largest_ms']:.3f} ms"
              + ("" if fit["fits"] else f"; short of the aim (fastest within a quarter of the budget, largest "
                                        f"over it): {fit['why']}"))
    print(f"MAE pre-training: {res.steps} steps, final loss {res.final_loss:.4f}, {res.images_per_s:.0f} images/s")
    print(f"weights {res.weights}  (MLflow run {res.mlflow_run_id})")
    return 0


def cmd_stage_supernet(args: argparse.Namespace) -> int:
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.supernet import run_supernet

    params = load_params(args.root)
    backbone = paths(args.root, params).backbone()
    tracker = _tracker(args.root, params)
    res = run_supernet(args.root, params, tracker, dataset_ref(args.root, params),
                       str(backbone) if backbone.exists() else None, resume=args.resume,
                       overrides=_budget_override(args))
    from assets.training import supernet_output

    _record(args.root, "supernet", supernet_output(res, tracker))
    print(f"supernet: {res.steps} steps; val top-1 per arch:")
    for name, acc in res.val_top1.items():
        print(f"  {name:<28} {acc:.4f}")
    print(f"weights {res.weights}  (MLflow run {res.mlflow_run_id})")
    return 0


def cmd_stage_search(args: argparse.Namespace) -> int:
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.search import resolve_target, run_search

    params = load_params(args.root)
    resolve_target(args.root, params, args.target)  # unknown or not measurable here: before any work
    weights = paths(args.root, params).supernet()
    if not weights.is_file():
        raise MissingStageError(f"{weights}: no supernet yet; run `vitforge stage supernet` first")
    tracker = _tracker(args.root, params)
    res = run_search(args.root, params, tracker, dataset_ref(args.root, params), str(weights),
                     args.target, time_budget_s=getattr(args, "time_budget_s", None))
    from assets.architecture import architecture_events

    _record(args.root, "architecture", architecture_events(res, tracker, params), partition=args.target)
    print(f"target {res.target}: budget {res.budget_ms:g} ms, latency model MAPE {100 * res.latency_mape:.1f} % "
          f"(max {100 * res.latency_max_error:.1f} %, timing noise {100 * res.latency_noise:.1f} %): "
          f"{'passed' if res.latency_passed else 'FAILED'}, {res.latency_verdict}")
    print(f"chosen   {res.arch}  val top-1 {res.val_top1:.4f} ± {res.val_top1_se:.4f} ({res.val_images} images, "
          f"inherited)  p50 {res.measured_p50_ms:.3f} ms (measured)")
    if res.finetuned_val_top1 is not None:
        tau = "n/a" if res.kendall_tau is None else f"{res.kendall_tau:.2f}"
        print(f"         briefly fine-tuned val top-1 {res.finetuned_val_top1:.4f} ({res.rerank_steps} steps each); "
              f"Kendall tau inherited vs fine-tuned {tau} over {sum('finetuned_top1' in r for r in res.tried)} archs")
        if res.separated is False:
            print(f"         note: {res.val_images} val images do not separate the top archs (pick minus best other "
                  f"{res.runner_up_gap:+.4f}, within two standard errors): the pick is the slowest within budget of "
                  "those tied with the best. A larger val split (dataset.min_val_images) sharpens it; with "
                  "finetune.train_on_val: true the shipped model still trains on those images")
    print(f"largest  {res.largest_arch}  val top-1 {res.largest_val_top1:.4f}  p50 {res.largest_p50_ms:.3f} ms")
    print(f"speedup  {res.largest_p50_ms / res.measured_p50_ms:.1f}x; {res.evaluated} archs evaluated; "
          f"MLflow run {res.mlflow_run_id}")
    if not res.passed:  # as the blocking Dagster checks do: nothing downstream runs on this arch
        print(f"a gate failed ({', '.join(res.failed_gates)}): no search result written, the MLflow run is marked "
              "FAILED", file=sys.stderr)
        return 1
    return 0


def _read_json(path: Path, hint: str) -> dict:
    import json

    if not path.is_file():
        raise MissingStageError(f"{path}: missing; run `{hint}` first")
    return json.loads(path.read_text())


def cmd_stage_finetune(args: argparse.Namespace) -> int:
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.finetune import run_finetune
    from pipeline.stages.search import target_file

    params = load_params(args.root)
    target_file(args.root, params, args.target)  # an unknown target is named as one, not as a missing stage
    arch = _read_json(paths(args.root, params).search_result(args.target),
                      f"vitforge stage search --target {args.target}")
    tracker = _tracker(args.root, params)
    res = run_finetune(args.root, params, tracker, dataset_ref(args.root, params), arch,
                       resume=args.resume, overrides=_budget_override(args))
    from assets.shipping import model_output

    _record(args.root, "model", model_output(res, tracker), partition=args.target)
    print(f"fine-tuned {res.arch} for {args.target}: test top-1 {res.test_top1:.4f} ({res.steps} steps, "
          f"{res.train_seconds:.0f} s); weights {res.weights}")
    return 0


def cmd_stage_package(args: argparse.Namespace) -> int:
    from pipeline.stages.common import dataset_ref
    from pipeline.stages.package import run_package
    from pipeline.stages.search import target_file

    params = load_params(args.root)
    target_file(args.root, params, args.target)  # an unknown target is named as one, not as a missing stage
    arch = _read_json(paths(args.root, params).search_result(args.target),
                      f"vitforge stage search --target {args.target}")
    model = _read_json(paths(args.root, params).finetune_result(args.target),
                       f"vitforge stage finetune --target {args.target}")
    tracker = _tracker(args.root, params)
    res = run_package(args.root, params, tracker, dataset_ref(args.root, params), model, arch,
                      args.target, allow_dirty=args.allow_dirty)
    from assets.shipping import edge_package_events

    _record(args.root, "edge_package", edge_package_events(res, tracker), partition=args.target)
    for gate in res.gates:
        print(f"{'PASS' if gate['passed'] else 'FAIL'}  {gate['name']}")
    lat = res.package["latency"]
    print(f"{args.target}: p50 {res.p50_ms:.3f} ms, p99 {res.p99_ms:.3f} ms ({lat['how']['engine_version']}, "
          f"{lat['how']['threads']} thread(s), batch {lat['how']['batch_size']}, {lat['runs']} runs)")
    if res.registered_version is None:
        print("a gate failed: nothing registered, no alias moved", file=sys.stderr)
        return 1
    print(f"registered {res.registered_model} version {res.registered_version} as {res.candidate_alias}")
    return 0


def _budget_override(args: argparse.Namespace) -> dict | None:
    budget = getattr(args, "time_budget_s", None)
    return {"time_budget_s": budget} if budget is not None else None


def _seconds(text: str) -> float:
    from pipeline.budget import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitforge", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="project root (default: $VITFORGE_ROOT or checkout)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress; show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    sets = argparse.ArgumentParser(add_help=False)
    sets.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", default=[],
                      help="override params.yaml for this run (repeatable; validated; recorded in the runs)")

    p = sub.add_parser("demo-data", help="write scikit-learn's digits as an ImageFolder of PNGs")
    p.add_argument("dest")
    p.set_defaults(func=cmd_demo_data)

    unlabeled_help = "a folder of images without labels (any tree): versioned with the data, seen only by MAE"
    allow_dirty_help = "register even when the project root is not a git checkout (the version records why)"
    budget_help = "wall clock for the training stages, e.g. 10m (split by params.yaml budget.shares)"
    from pipeline.cli_chain import cmd_demo, cmd_run

    p = sub.add_parser("demo", parents=[sets], help="run the whole chain on the packaged digits")
    p.add_argument("--time-budget", metavar="DURATION", help=budget_help + " (default: params.yaml demo.time_budget)")
    p.add_argument("--allow-dirty", action="store_true", help=allow_dirty_help)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("run", parents=[sets], help="run the whole chain on a dataset for one target")
    p.add_argument("--data", required=True, help="an ImageFolder tree or a COCO set")
    p.add_argument("--format", choices=["imagefolder", "coco"])
    p.add_argument("--skip-invalid", action="store_true", help="drop bad files instead of failing, listing each")
    p.add_argument("--resplit", action="store_true", help="a train/val(/test) folder: merge and split by hash "
                   "instead of keeping its split")
    p.add_argument("--unlabeled", metavar="DIR", help=unlabeled_help)
    p.add_argument("--target", required=True, help="a file name (without .yaml) in infra/targets/")
    p.add_argument("--time-budget", metavar="DURATION", help=budget_help)
    p.add_argument("--allow-dirty", action="store_true", help=allow_dirty_help)
    p.set_defaults(func=cmd_run)

    stage_budget = "wall clock for this stage, e.g. 90s or 5m (steps are fitted to it; default: the epochs)"
    stage = sub.add_parser("stage", help="run one pipeline stage (what dvc.yaml calls)")
    stages = stage.add_subparsers(dest="stage", required=True)
    p = stages.add_parser("dataset", parents=[sets], help="validate, split and version a dataset")
    p.add_argument("--data", help="dataset folder or builtin:digits (default from params.yaml)")
    p.add_argument("--format", choices=["imagefolder", "coco"])
    p.add_argument("--skip-invalid", action="store_true", help="drop bad files instead of failing, listing each")
    p.add_argument("--resplit", action="store_true", help="a train/val(/test) folder: merge and split by hash "
                   "instead of keeping its split")
    p.add_argument("--unlabeled", metavar="DIR", help=unlabeled_help)
    p.set_defaults(func=cmd_stage_dataset)
    p = stages.add_parser("pretrain", parents=[sets], help="MAE pre-training of the largest ViT")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--time-budget", dest="time_budget_s", type=_seconds, help=stage_budget)
    p.set_defaults(func=cmd_stage_pretrain)
    p = stages.add_parser("supernet", parents=[sets], help="weight-sharing supernet training from the MAE weights")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--time-budget", dest="time_budget_s", type=_seconds, help=stage_budget)
    p.set_defaults(func=cmd_stage_supernet)
    p = stages.add_parser("search", parents=[sets], help="latency model + hardware-aware search for one target")
    p.add_argument("--target", required=True, help="a file name (without .yaml) in infra/targets/")
    p.add_argument("--time-budget", dest="time_budget_s", type=_seconds, help=stage_budget)
    p.set_defaults(func=cmd_stage_search)
    p = stages.add_parser("finetune", parents=[sets], help="fine-tune the arch the search chose for a target")
    p.add_argument("--target", required=True)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    p.add_argument("--time-budget", dest="time_budget_s", type=_seconds, help=stage_budget)
    p.set_defaults(func=cmd_stage_finetune)
    p = stages.add_parser("package", parents=[sets], help="export, check parity and latency on the target, register")
    p.add_argument("--target", required=True)
    p.add_argument("--allow-dirty", action="store_true", help=allow_dirty_help)
    p.set_defaults(func=cmd_stage_package)

    targets = sub.add_parser("targets", help="hardware targets")
    tsub = targets.add_subparsers(dest="targets_cmd", required=True)
    p = tsub.add_parser("list", help="each target with its budget and whether it can be measured here")
    from pipeline.cli_targets import cmd_targets_list

    p.set_defaults(func=cmd_targets_list)
    from pipeline.cli_serve import add_serve_commands

    add_serve_commands(sub, tsub)

    from pipeline.cli_fleet import add_fleet_commands
    from pipeline.cli_init import add_init_command
    from pipeline.cli_predict import add_predict_command
    from pipeline.cli_rebuild import add_rebuild_command

    add_fleet_commands(sub)
    add_rebuild_command(sub)
    add_predict_command(sub)
    add_init_command(sub)
    return parser


def _interrupt(signum: int, _frame) -> None:
    """SIGTERM (dvc, a process manager) ends a stage as Ctrl-C does."""
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    """Input errors (``pipeline.errors.InputError`` and dvc's) are one line and exit 2; Ctrl-C or SIGTERM is
    one line and exit 130, with the stage's MLflow run marked KILLED; a closed stdout (a pipe's reader gone) is
    exit 141, quietly; anything else is a bug: traceback, exit 1."""
    args = build_parser().parse_args(argv)
    # vitforge's lines only: no artifact progress bars, no "View run ... at:" URLs, MLflow's INFO lines with -v
    for key, value in {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_LOGGING_LEVEL": "INFO" if
                       args.verbose else "WARNING", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}.items():
        os.environ.setdefault(key, value)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from dvc.exceptions import DvcException

    previous = signal.signal(signal.SIGTERM, _interrupt)
    previous_set = os.environ.get(ENV_SET)
    try:
        if not getattr(args, "needs_root", True):  # `vitforge init`: makes the root
            return args.func(args)
        if args.root is None and (note := checkout_note(project_root().resolve())):
            print(note, file=sys.stderr)  # outside any project: the checkout, said
        args.root = (args.root or project_root()).resolve()
        if not (args.root / "params.yaml").is_file():  # a mistyped --root must not grow a DVC repo and a store
            from pipeline.errors import ParamsError

            raise ParamsError(f"{args.root}: no params.yaml, so not a vitforge project root (check --root or "
                              "$VITFORGE_ROOT)")
        if getattr(args, "set", None):  # for this command and every process it starts (torchrun workers, dvc)
            import json

            os.environ[ENV_SET] = json.dumps(parse_sets(args.set))
            load_params(args.root)  # validated now: a bad --set is one line before any work
        return args.func(args)
    except KeyboardInterrupt as err:
        why = f" ({err.args[0]})" if err.args else ""
        print(f"interrupted{why}: the stage stopped; its MLflow run is marked KILLED, and what it had "
              "committed (checkpoints, versions, registered models) is kept as it was", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout's reader ended (`vitforge ... | head`): stop as a Unix tool does on SIGPIPE
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush at exit
        return 128 + signal.SIGPIPE
    except (DvcException, *INPUT_ERRORS) as err:
        if args.verbose:  # the full traceback, for whoever debugs vitforge itself; still an input error
            traceback.print_exc()
        prefix = "dvc: " if isinstance(err, DvcException) else ""
        print(f"error: {prefix}{err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_set is None:
            os.environ.pop(ENV_SET, None)
        else:
            os.environ[ENV_SET] = previous_set


if __name__ == "__main__":
    sys.exit(main())
