"""``vitforge init DIR``: a new project, ready for ``vitforge run --data ... --target ...``.

It writes the packaged params.yaml (every default, with its comments), a targets folder with one example
target (this machine's CPU through ONNX Runtime), both from ``pipeline/project_template/`` (package data, so a
wheel install has them too), an empty fleets folder, a ``.gitignore`` for what the stages
write, a git repository (the package stage registers only from a commit) and a DVC repository whose default
remote is the local folder params.yaml names. A folder that already holds params.yaml is refused, so nothing
of an existing project is overwritten.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from pipeline.errors import InputError

EXAMPLE_TARGET = "cpu-ort-fp32"  # measurable on any machine the pipeline runs on

GITIGNORE = """\
# written by the vitforge stages; versioned by DVC and MLflow, not git
/mlflow/mlflow.db
/mlflow/artifacts/
/.dagster/
/runs/
/.dvc-storage/
/data/raw/
/data/*.staged/
/data/*.old/
/predictions.csv
"""


class InitError(InputError):
    """The folder cannot become a new project (it is one already, or it is a file)."""


def init_project(dest: Path) -> list[str]:
    """Create the project at ``dest``; return the files and folders written, relative to it."""
    from pipeline.data.versioning import open_repo
    from pipeline.params import DEFAULT_PARAMS, TEMPLATE, load_params, resolve

    if dest.exists() and not dest.is_dir():
        raise InitError(f"{dest}: exists and is not a folder")
    if (dest / "params.yaml").exists():
        raise InitError(f"{dest}: already a vitforge project (params.yaml is there); nothing was changed")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    shutil.copyfile(DEFAULT_PARAMS, dest / "params.yaml")
    written.append("params.yaml")
    params = load_params(dest)
    targets = resolve(params["targets_dir"], dest)
    targets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATE / f"{EXAMPLE_TARGET}.yaml", targets / f"{EXAMPLE_TARGET}.yaml")
    written.append(f"{params['targets_dir']}/{EXAMPLE_TARGET}.yaml")
    fleets = resolve(params["fleets_dir"], dest)
    fleets.mkdir(parents=True, exist_ok=True)
    (fleets / ".gitkeep").touch()
    written.append(f"{params['fleets_dir']}/")
    gitignore = dest / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text(GITIGNORE, encoding="utf-8")
        written.append(".gitignore")
    if shutil.which("git") and not (dest / ".git").exists():
        subprocess.run(["git", "init", "-q", str(dest)], check=True)
        written.append(".git/")
    p = params["dataset"]
    open_repo(dest, p["dvc_remote_name"], resolve(p["dvc_remote_url"], dest))  # .dvc/ with the default remote
    written.append(f".dvc/ (remote {p['dvc_remote_name']}: {p['dvc_remote_url']})")
    return written


def cmd_init(args: argparse.Namespace) -> int:
    dest = Path(args.dir).resolve()
    for item in init_project(dest):
        print(f"wrote {item}")
    print(f"\na new vitforge project in {dest}. Next:\n"
          f"  cd {args.dir} && git add -A && git commit -m 'a vitforge project'\n"
          f"  vitforge run --data PATH/TO/IMAGES --target {EXAMPLE_TARGET}   # an ImageFolder tree or a COCO set\n"
          "Targets: one YAML file each in infra/targets/ (`vitforge targets list`); parameters: params.yaml, or "
          "--set SECTION.KEY=VALUE for one run")
    return 0


def add_init_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="create a new project: params.yaml, a targets folder, git, DVC")
    p.add_argument("dir", help="the new project's folder (created if missing)")
    p.set_defaults(func=cmd_init, needs_root=False)
