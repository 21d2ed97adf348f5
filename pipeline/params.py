"""The project's parameters: one file, params.yaml, read in one place.

DVC tracks params.yaml for every stage; the Dagster ``Config`` classes and the
CLI read their defaults from here, so no default lives twice.
"""

from __future__ import annotations

import os
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import ParamsError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
# What a new project starts from, shipped inside the package (a wheel has no checkout around it): in the
# checkout these are links to the repository's own params.yaml and example target, so no default lives twice.
TEMPLATE = Path(__file__).resolve().parent / "project_template"
DEFAULT_PARAMS = TEMPLATE / "params.yaml"


def project_root() -> Path:
    """The folder that holds params.yaml: $VITFORGE_ROOT, else the nearest project around the current directory
    (a folder with params.yaml and a DVC repo, as ``vitforge init`` makes and as dvc runs the stages in), else the
    checkout this package lives in.

    An installed (not editable) package lives in site-packages, where no params.yaml is: outside a project it
    needs $VITFORGE_ROOT, and a root without params.yaml is a one-line ParamsError."""
    env = os.environ.get("VITFORGE_ROOT")
    if env:
        root = Path(env).resolve()
        if not (root / "params.yaml").is_file():
            raise ParamsError(f"VITFORGE_ROOT={env}: no params.yaml there; point it at the project root")
        return root
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / "params.yaml").is_file() and (folder / ".dvc").is_dir():
            return folder
    if not (PACKAGE_ROOT / "params.yaml").is_file():
        raise ParamsError(f"no params.yaml in {PACKAGE_ROOT} (vitforge is installed as a package): set "
                          "VITFORGE_ROOT to the project root, the folder that holds params.yaml")
    return PACKAGE_ROOT


def checkout_note(root: Path) -> str | None:
    """When ``project_root()`` fell back to the checkout from a folder outside it: a line saying so."""
    if os.environ.get("VITFORGE_ROOT") or Path.cwd().resolve().is_relative_to(root):
        return None
    return (f"note: no vitforge project around {Path.cwd()}; working in the checkout {root} (`vitforge init DIR` "
            "makes a project of your own; --root names one)")


@lru_cache(maxsize=8)
def _load(path: str) -> dict[str, Any]:
    from pipeline.params_schema import validate

    with open(path, encoding="utf-8") as f:
        try:
            params = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ParamsError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    validate(params, path)  # unknown keys, wrong types, missing sections: one line naming the key
    return params


ENV_SET = "VITFORGE_SET"  # JSON {"section.key": value}: the CLI's `--set` overrides, for it and its children


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``["section.key=value", ...]`` (values in YAML syntax) -> ``{"section.key": value}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or "." not in key and key not in ("seed", "targets_dir", "fleets_dir"):
            raise ParamsError(f"--set {item!r}: expected SECTION.KEY=VALUE, e.g. finetune.epochs=20")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ParamsError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def overrides() -> dict[str, Any]:
    """The ``--set`` overrides in force (``$VITFORGE_SET``)."""
    import json

    return json.loads(os.environ.get(ENV_SET) or "{}")


def apply_overrides(params: dict[str, Any], sets: dict[str, Any], source: str, *,
                    validate: bool = True) -> dict[str, Any]:
    """A copy of ``params`` with ``{"section.key": value}`` applied, validated by the schema (``validate``)."""
    import copy

    from pipeline.params_schema import validate as check

    out = copy.deepcopy(params)
    for dotted, value in sets.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {}) if isinstance(node, dict) else {}
        node[leaf] = value
    if validate:
        check(out, f"{source} with --set {', '.join(sets)}")
    return out


def load_params(root: Path | None = None) -> dict[str, Any]:
    """params.yaml of ``root`` (default: the project root), falling back to the packaged defaults; with the
    CLI's ``--set`` overrides applied (validated by the same schema)."""
    path = (root or project_root()) / "params.yaml"
    if not path.exists():
        path = DEFAULT_PARAMS
    params = _load(str(path))
    sets = overrides()
    return apply_overrides(params, sets, str(path)) if sets else params


def section(name: str, root: Path | None = None) -> dict[str, Any]:
    """One stage's parameters; a missing section is an error naming it."""
    params = load_params(root)
    if name not in params:
        raise ParamsError(f"params.yaml has no section {name!r}")
    return params[name]


def write_params(root: Path, overrides: dict[str, Any], base: Path | None = None) -> dict[str, Any]:
    """Write ``root/params.yaml``: ``base`` (default: root's own, else the packaged one) with
    ``{"section.key": value}`` overrides applied. For benchmarks and tests; returns the new params."""
    src = base or (root / "params.yaml" if (root / "params.yaml").exists() else DEFAULT_PARAMS)
    params = yaml.safe_load(src.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        if leaf not in node:
            raise ParamsError(f"params.yaml has no {dotted!r}")
        node[leaf] = value
    root.mkdir(parents=True, exist_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    _load.cache_clear()
    return load_params(root)


def resolve(path: str | Path, root: Path | None = None) -> Path:
    """A path from params.yaml: relative ones are taken from the project root."""
    p = Path(path)
    return p if p.is_absolute() else (root or project_root()) / p


def git_sha() -> str:
    """The commit the code runs from, with ``-dirty`` when the work tree has changes."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PACKAGE_ROOT, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha
