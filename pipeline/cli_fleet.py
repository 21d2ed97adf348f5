"""``vitforge fleet promote|evaluate|status|abort|rollback NAME``: staged rollouts (pipeline.fleet.rollout)."""

from __future__ import annotations

import argparse
import time

from pipeline.errors import MissingStageError
from pipeline.params import load_params


def add_fleet_commands(sub) -> None:
    fleet = sub.add_parser("fleet", help="staged rollout of registered versions to edge devices (infra/fleets)")
    fsub = fleet.add_subparsers(dest="fleet_cmd", required=True)
    for name, func, text in (("promote", cmd_fleet_promote, "start rolling out the target's newest candidate"),
                             ("evaluate", cmd_fleet_evaluate, "read device reports; advance, finish or abort"),
                             ("status", cmd_fleet_status, "the rollout, each stage device and the history"),
                             ("abort", cmd_fleet_abort, "stop the rollout; every device returns"),
                             ("rollback", cmd_fleet_rollback, "return the fleet to its previous version")):
        p = fsub.add_parser(name, help=text)
        p.add_argument("fleet", help="a file name in fleets_dir, without .yaml")
        p.set_defaults(func=func)


def _fleet(args: argparse.Namespace):
    from pipeline.fleet import list_fleets, load_fleet
    from pipeline.params import resolve
    from pipeline.tracking import Tracker

    params = load_params(args.root)
    folder = resolve(params["fleets_dir"], args.root)
    files = list_fleets(folder)
    if args.fleet not in files:
        raise MissingStageError(f"unknown fleet {args.fleet!r}: no {folder / (args.fleet + '.yaml')} "
                                f"(known: {sorted(files)})")
    Tracker.from_params(params, args.root).connect()
    return load_fleet(files[args.fleet])


def _before(state: dict) -> str:
    return f"from v{state['from']}" if state.get("from") else "the fleet's first version"


def cmd_fleet_promote(args: argparse.Namespace) -> int:
    from pipeline.fleet.rollout import promote

    fleet = _fleet(args)
    state = promote(fleet)
    print(f"fleet {fleet.name}: rolling out v{state['version']} ({_before(state)}); stage 1 of "
          f"{len(fleet.stages)}: {state['percent']} % of devices follow fleet-{fleet.name}-next")
    return 0


def cmd_fleet_evaluate(args: argparse.Namespace) -> int:
    from pipeline.fleet.rollout import evaluate

    fleet = _fleet(args)
    action, details = evaluate(fleet)
    health = details.get("health", {})
    figures = ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                        for k, v in health.get("figures", {}).items())
    print(f"fleet {fleet.name}: {action}" + (f": {details['why']}" if details.get("why") else "")
          + (f" ({figures})" if figures else ""))
    return 0


def cmd_fleet_status(args: argparse.Namespace) -> int:
    from pipeline.fleet.rollout import bucket, device_reports, history, rollout_state

    fleet = _fleet(args)
    state = rollout_state(fleet)
    print(f"fleet {fleet.name} ({fleet.model}, target {fleet.target}): " + (
        f"rolling out v{state['version']} ({_before(state)}), stage {state['stage'] + 1} of {len(fleet.stages)} "
        f"({state['percent']} %)" if state else "no rollout under way"))
    print(f"{'device':<20} {'bucket':>6} {'serving':>8} {'state':<10} {'p50_ms':>7} {'p99_ms':>7}  reasons")
    for dev, rep in sorted(device_reports(fleet).items()):
        print(f"{dev:<20} {bucket(fleet.name, dev):>6} {rep.get('serving') or '-':>8} {rep['state']:<10} "
              f"{rep.get('p50_ms', float('nan')):>7.3f} {rep.get('p99_ms', float('nan')):>7.3f}  "
              f"{rep.get('reasons', '')}")
    for m in history(fleet):
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(m['time']))}  {m['move']:<8} v{m['from'] or '-'} -> "
              f"v{m['to'] or '-'}  {m['why']}  [{m['status']}]")
    return 0


def cmd_fleet_abort(args: argparse.Namespace) -> int:
    from pipeline.fleet.rollout import abort

    fleet = _fleet(args)
    abort(fleet, "aborted by hand")
    print(f"fleet {fleet.name}: rollout aborted; every device returns to fleet-{fleet.name}")
    return 0


def cmd_fleet_rollback(args: argparse.Namespace) -> int:
    from pipeline.fleet.rollout import rollback

    fleet = _fleet(args)
    print(f"fleet {fleet.name}: back to v{rollback(fleet)}")
    return 0
