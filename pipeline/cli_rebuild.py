"""``vitforge rebuild MODEL@VERSION``: the registered version built again from its commit, data and replay."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_rebuild(args: argparse.Namespace) -> int:
    from pipeline.rebuild import rebuild

    res = rebuild(args.root, args.ref, workdir=args.workdir, keep=args.keep,
                  echo=lambda line: print(line, flush=True))
    print(f"\n== rebuild of {res.model} version {res.version} ({res.target}), commit {res.git_sha[:12]}, "
          f"dataset {res.dataset_version}: {res.seconds:.0f} s")
    print(res.table())
    failed = {s: c for s, c in res.stage_codes.items() if c}
    if failed:
        print("stages that exited non-zero: " + ", ".join(f"{s} ({c})" for s, c in failed.items()))
    if args.keep or args.workdir:
        print(f"worktree and its MLflow store kept in {res.workdir}")
    print("identical: every sha256 matches" if res.matched else "MISMATCH: the rebuild differs from the registered "
          "version")
    return 0 if res.matched else 1


def add_rebuild_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rebuild", help="rebuild a registered version from its commit, data version and replay, "
                                       "and compare sha256s")
    p.add_argument("ref", metavar="MODEL@VERSION", help="a registered version or alias, e.g. vitforge-digits@3 "
                                                       "or vitforge-digits@champion-cpu-ort-fp32")
    p.add_argument("--workdir", type=Path, help="where the worktree goes (kept); default: a temporary folder")
    p.add_argument("--keep", action="store_true", help="keep the worktree and its MLflow store")
    p.set_defaults(func=cmd_rebuild)
