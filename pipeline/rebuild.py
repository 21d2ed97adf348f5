"""``vitforge rebuild MODEL@VERSION``: build a registered version again from what it records, and prove it.

A version's tags name the git commit, the DVC dataset version, the params hash and the target; its package
run holds ``replay.json``, what the chain decided by the clock (pipeline/replay.py). The rebuild

1. checks out that commit in a temporary ``git worktree`` (the user's working tree is never touched);
2. checks that the commit's params.yaml hashes to the recorded ``params_hash``;
3. restores that dataset version through DVC (the project's own cache first, else its remote);
4. runs the chain for the target there, with the code of that commit (when the project holds the code),
   replaying the recorded step totals and latency measurements instead of timing anew, into an MLflow store
   of its own inside the worktree (the user's registry is never touched);
5. compares the sha256 of the fine-tuned weights' tensors, the ONNX file and the label map with the
   registered ones, prints the table, and logs it as a run of the ``<experiment>-rebuild`` experiment.

Any mismatch is exit 1: determinism is proven, not assumed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import InputError
from pipeline.params import ENV_SET, apply_overrides, load_params
from pipeline.paths import paths

log = logging.getLogger(__name__)

REBUILD_EXPERIMENT_SUFFIX = "-rebuild"
STAGES = ("pretrain", "supernet", "search", "finetune", "package")


class RebuildError(InputError):
    """The version cannot be rebuilt from what it records (no replay record, a dirty tree, a missing commit)."""


@dataclass
class Row:
    name: str
    registered: str
    rebuilt: str

    @property
    def match(self) -> bool:
        return bool(self.registered) and self.registered == self.rebuilt


@dataclass
class RebuildResult:
    model: str
    version: str
    target: str
    git_sha: str
    dataset_version: str
    rows: list[Row]
    seconds: float
    workdir: str
    stage_codes: dict[str, int]

    @property
    def matched(self) -> bool:
        return all(r.match for r in self.rows)

    def table(self) -> str:
        lines = [f"{'file':<24} {'registered':<16} {'rebuilt':<16} match"]
        for r in self.rows:
            lines.append(f"{r.name:<24} {r.registered[:16]:<16} {r.rebuilt[:16] or '(none)':<16} "
                         f"{'yes' if r.match else 'NO'}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [{**asdict(r), "match": r.match} for r in self.rows],
                "matched": self.matched}


def parse_ref(ref: str) -> tuple[str, str]:
    model, sep, which = ref.partition("@")
    if not sep or not model or not which:
        raise RebuildError(f"{ref!r}: expected MODEL@VERSION or MODEL@ALIAS (e.g. vitforge-digits@3)")
    return model, which


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


def _download_replay(run_id: str, dest: Path) -> Path:
    from mlflow.exceptions import MlflowException

    import mlflow
    from pipeline.stages.package import REPLAY_ARTIFACT

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REPLAY_ARTIFACT,
                                                        dst_path=str(dest)))
    except (MlflowException, OSError) as err:
        raise RebuildError(f"the package run {run_id} holds no {REPLAY_ARTIFACT} ({err}): the version was "
                           "registered before the chain recorded its replay, so it cannot be rebuilt exactly") from None


def _restore_dataset(src_root: Path, src_params: dict, wt_root: Path, wt_params: dict, version: str) -> None:
    """Put dataset ``version`` into the worktree: its ``.dvc`` pointer, then ``dvc pull`` through the source
    project's cache (configured in the worktree's ``config.local``) and, for what that lacks, its remote."""
    from dvc.repo import Repo

    from pipeline.data.versioning import read_version, remote_location
    from pipeline.params import resolve

    folder = paths(wt_root, wt_params).dataset()
    pointer = folder.with_name(folder.name + ".dvc")
    if not pointer.is_file() or read_version(folder) != version:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(f"outs:\n- md5: {version}\n  hash: md5\n  path: {folder.name}\n")
    if not (wt_root / ".dvc").is_dir():
        Repo.init(str(wt_root), subdir=True)
    ds = src_params["dataset"]
    location = remote_location(resolve(ds["dvc_remote_url"], src_root))
    repo = Repo(str(wt_root))
    with repo.config.edit("local") as conf:
        conf["cache"]["dir"] = str((src_root / ".dvc" / "cache").resolve())
        conf["remote"][ds["dvc_remote_name"]] = {"url": location}
        conf["core"]["remote"] = ds["dvc_remote_name"]
    Repo(str(wt_root)).pull(targets=[str(pointer)], remote=ds["dvc_remote_name"])
    got = read_version(folder)
    if got != version:
        raise RebuildError(f"{pointer}: restored version {got}, expected {version}")


def _run_stage(argv: list[str], cwd: Path, env: dict[str, str], echo: Callable[[str], None]) -> int:
    echo(f"== {' '.join(argv)}" + ("  (it registers into the rebuild's own MLflow store, in the worktree; the "
                                   "project's registry is not touched)" if argv[1] == "package" else ""))
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(cwd), *argv], cwd=cwd, env=env,
                          check=False).returncode


def rebuild(root: Path, ref: str, *, workdir: Path | None = None, keep: bool = False,
            echo: Callable[[str], None] = log.info) -> RebuildResult:
    """``echo``: where progress lines go (the CLI prints them; the stages' own output is their stdout)."""
    import mlflow
    from pipeline.registry.mlflow_registry import model_version, params_hash
    from pipeline.stages.package import WEIGHTS_TAG, tensor_digest
    from pipeline.tracking import ENV_EXPERIMENT, ENV_TRACKING_URI, Tracker
    from pipeline.weights import sha256_file

    started = time.perf_counter()
    params = load_params(root)
    tracker = Tracker.from_params(params, root)
    mlflow.set_tracking_uri(tracker.tracking_uri)
    model, which = parse_ref(ref)
    mv = model_version(model, which)  # not in the registry: one line
    tags = dict(mv.tags)
    for key in ("git_sha", "dataset_version", "params_hash", "target", "sha256.model.onnx"):
        if not tags.get(key):
            raise RebuildError(f"{model} version {mv.version} has no {key!r} tag: it cannot be rebuilt")
    if tags.get("git_dirty") != "false":
        raise RebuildError(f"{model} version {mv.version} was registered from a tree with uncommitted changes "
                           f"(git_dirty={tags.get('git_dirty')}): the code it was built from is in no commit")
    sha, target = tags["git_sha"], tags["target"]
    try:
        top = Path(_git(root, "rev-parse", "--show-toplevel")).resolve()
        _git(top, "cat-file", "-e", f"{sha}^{{commit}}")
    except subprocess.CalledProcessError as err:
        raise RebuildError(f"{root}: commit {sha} of {model} version {mv.version} is not in this git repo "
                           f"({err.stderr.strip()})") from None
    base = Path(workdir).resolve() if workdir else Path(tempfile.mkdtemp(prefix="vitforge-rebuild-"))
    base.mkdir(parents=True, exist_ok=True)
    wt = base / "worktree"
    if wt.exists():
        raise RebuildError(f"{wt}: exists; give another --workdir or remove it")
    replay_file = _download_replay(mv.run_id, base / "recorded")
    _git(top, "worktree", "add", "--detach", "--quiet", str(wt), sha)
    try:
        wt_root = wt / root.resolve().relative_to(top)
        if not (wt_root / "params.yaml").is_file():
            raise RebuildError(f"commit {sha[:12]} has no params.yaml at {wt_root.relative_to(wt)}")
        sets = json.loads(tags.get("params_set") or "{}")  # the `--set` overrides the version was built with
        # that commit's params.yaml as that commit's code reads it: not held to this version's schema (a key
        # added since would make every older version unbuildable); its own code validates it in the worktree
        raw = yaml.safe_load((wt_root / "params.yaml").read_text(encoding="utf-8"))
        wt_params = apply_overrides(raw, sets, "params.yaml", validate=False) if sets else raw
        if params_hash(wt_params) != tags["params_hash"]:
            raise RebuildError(f"params.yaml at commit {sha[:12]} hashes to {params_hash(wt_params)}, but version "
                               f"{mv.version} records params_hash {tags['params_hash']}: it was built with params "
                               "that are in no commit")
        echo(f"rebuilding {model} version {mv.version} ({target}) from commit {sha[:12]}, dataset "
             f"{tags['dataset_version']}, in {wt}")
        _restore_dataset(root, params, wt_root, wt_params, tags["dataset_version"])
        env = {k: v for k, v in os.environ.items() if k not in ("VITFORGE_ROOT", "VITFORGE_MLFLOW_UI_URL", ENV_SET)}
        if sets:
            env[ENV_SET] = json.dumps(sets)
        env.update({"VITFORGE_REPLAY": str(replay_file), ENV_TRACKING_URI: f"sqlite:///{base / 'mlflow.db'}",
                    ENV_EXPERIMENT: params["mlflow"]["experiment"] + REBUILD_EXPERIMENT_SUFFIX})
        if (wt / "pipeline" / "__init__.py").is_file():  # the project holds the code: that commit's code runs
            env["PYTHONPATH"] = os.pathsep.join([str(wt), *filter(None, [env.get("PYTHONPATH")])])
        else:
            echo("note: the project does not hold vitforge's code; the installed vitforge rebuilds it")
        codes: dict[str, int] = {}
        for stage in STAGES:
            argv = ["stage", stage] + (["--target", target] if stage in ("search", "finetune", "package") else [])
            codes[stage] = _run_stage(argv, wt_root, env, echo)
            if codes[stage] and stage != "package":  # a failed package gate still leaves the files to compare
                break
        wp = paths(wt_root, wt_params)
        onnx, labels, weights = (wp.package_dir(target) / "model.onnx", wp.package_dir(target) / "label_map.json",
                                 wp.finetune_dir(target) / "model.safetensors")
        registered_weights = tags.get(WEIGHTS_TAG) or json.loads(replay_file.read_text()).get("weights_sha256", "")
        rows = [Row("weights (tensors)", registered_weights, tensor_digest(weights) if weights.is_file() else ""),
                Row("model.onnx", tags["sha256.model.onnx"], sha256_file(onnx) if onnx.is_file() else ""),
                Row("label_map.json", tags.get("sha256.label_map.json", ""),
                    sha256_file(labels) if labels.is_file() else "")]
        result = RebuildResult(model, str(mv.version), target, sha, tags["dataset_version"], rows,
                               time.perf_counter() - started, str(base), codes)
    finally:
        if not keep:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=top, capture_output=True, check=False)
            subprocess.run(["git", "worktree", "prune"], cwd=top, capture_output=True, check=False)
            if not workdir:
                shutil.rmtree(base, ignore_errors=True)
    _log(tracker, result)
    return result


def _log(tracker, result: RebuildResult) -> None:
    """The proof, as a run of ``<experiment>-rebuild`` in the project's tracking store (not its registry)."""
    import mlflow
    from pipeline.tracking import Tracker, log_json

    own = Tracker(tracker.tracking_uri, tracker.experiment + REBUILD_EXPERIMENT_SUFFIX, tracker.artifact_root,
                  tracker.root)
    with own.run("rebuild", {"model": result.model, "version": result.version, "target": result.target,
                             "rebuilt_git_sha": result.git_sha, "dataset_version": result.dataset_version}):
        mlflow.log_metrics({"matched": float(result.matched), "rebuild_seconds": result.seconds,
                            **{f"match.{r.name.split()[0]}": float(r.match) for r in result.rows}})
        log_json(result.to_dict(), "rebuild.json")
        mlflow.log_text(result.table() + "\n", "match_table.txt")
