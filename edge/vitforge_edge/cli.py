"""``vitforge-edge``: the device's commands.

    vitforge-edge agent --tracking-uri URL --model NAME --fleet NAME --device-id ID --state-dir DIR [--once]
    vitforge-edge serve --state-dir DIR [--host 127.0.0.1] [--port 8080]
    vitforge-edge status --state-dir DIR
    vitforge-edge rollback --state-dir DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="vitforge-edge", description=__doc__.splitlines()[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("agent", help="follow the fleet's alias; prove each new version here before it serves")
    a.add_argument("--tracking-uri", required=True, help="the MLflow tracking server, e.g. http://mlflow:5000")
    a.add_argument("--model", required=True, help="the registered model")
    a.add_argument("--fleet", required=True)
    a.add_argument("--device-id", required=True)
    a.add_argument("--state-dir", type=Path, required=True)
    a.add_argument("--interval", type=float, default=30.0, help="seconds between polls")
    a.add_argument("--once", action="store_true", help="one poll, then exit (0: serving or active, 1: not)")
    s = sub.add_parser("serve", help="HTTP inference on the active version, hot-swapped")
    s.add_argument("--state-dir", type=Path, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    st = sub.add_parser("status", help="the versions installed here and which serves")
    st.add_argument("--state-dir", type=Path, required=True)
    rb = sub.add_parser("rollback", help="serve the previous version again (local)")
    rb.add_argument("--state-dir", type=Path, required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from vitforge_edge.store import Store

    if args.cmd == "agent":
        from vitforge_edge.agent import Agent
        from vitforge_edge.registry import MlflowRest

        agent = Agent(MlflowRest(args.tracking_uri), args.model, args.fleet, args.device_id, args.state_dir)
        if args.once:
            report = agent.poll_once()
            print(json.dumps({**report.tags(), **report.metrics()}))
            return 0 if report.state in ("serving", "active") else 1
        agent.run(args.interval)
        return 0
    if args.cmd == "serve":
        from vitforge_edge.serve import serve

        serve(args.state_dir, args.host, args.port)
        return 0
    store = Store(args.state_dir)
    if args.cmd == "rollback":
        try:
            with store.lock():  # not while an agent is mid-swap
                print(f"serving v{store.rollback()} (the version left is rejected here)")
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    versions = sorted(d.name for d in store.versions.iterdir())
    print(json.dumps({"current": store.current(), "previous": store.previous(), "installed": versions}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
