"""Register an edge package in the MLflow model registry: a version with tags, and aliases.

One registered model per dataset (``registry.model_name``); aliases are per target:
``candidate-<target>``, ``champion-<target>`` (and ``fleet-<name>`` for fleets).
Aliases and version tags only: never the deprecated stages.

Registration is all or nothing: the model is logged unregistered, then one call creates the
version with all its tags, and the candidate alias moves last. A version whose alias could not be
moved is deleted, or, if even that fails, tagged ``incomplete``, which ``load_registered`` refuses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.export.package import EdgePackage
from pipeline.weights import sha256_file

log = logging.getLogger(__name__)

PYFUNC_MODEL = Path(__file__).with_name("pyfunc_model.py")  # the version's python_model (MLflow models from code)
PACKAGE_FILES = ("model.onnx", "label_map.json", "package.json")  # a version's artifacts/, from the edge package
INCOMPLETE_TAG = "incomplete"  # set on a version whose registration failed and which could not be deleted


class ProvenanceError(InputError, ValueError):
    """Registration cannot say which code made the package (no git checkout): the CLI prints it and exits 2."""


def alias(kind: str, target: str) -> str:
    return f"{kind}-{target}"


def params_hash(params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class GitProvenance:
    sha: str
    dirty: bool


def git_provenance(root: Path, *, allow_dirty: bool = False, besides: tuple[Path, ...] = ()) -> GitProvenance:
    """The commit of the git checkout holding ``root`` and whether its tracked files have changes.

    ``besides``: files whose changes do not count (the dataset's ``.dvc`` pointer: the version records the
    dataset version itself, and a chain run that versions new data changes the pointer before it registers).

    Outside a checkout (or in one without a commit, or without git) this raises ProvenanceError naming the
    reason, unless ``allow_dirty``: then the SHA records that reason and the tree counts as dirty, since
    nothing proves it clean."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()

    try:
        git("rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        reason = "git is not installed"
    except subprocess.CalledProcessError as err:
        reason = f"{root} is not inside a git checkout ({err.stderr.strip() or err})"
    else:
        try:
            sha = git("rev-parse", "--verify", "HEAD")
        except subprocess.CalledProcessError:
            reason = f"the git checkout holding {root} has no commit yet"
        else:
            skip = {Path(p).resolve() for p in besides}
            top = Path(git("rev-parse", "--show-toplevel"))
            changed = git("diff", "--name-only", "HEAD").splitlines()  # tracked files, staged or not
            return GitProvenance(sha, any((top / c).resolve() not in skip for c in changed))
    if not allow_dirty:
        raise ProvenanceError(f"refusing to register: {reason}, so the version could not record which code made "
                              f"it; commit the project in git, or pass allow_dirty=True (--allow-dirty)")
    log.warning("registering without a git SHA (allow_dirty): %s", reason)
    return GitProvenance(f"none: {reason}", True)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def registered_file(folder: Path, name: str) -> Path:
    """One of ``PACKAGE_FILES`` in a downloaded version (``artifacts/``; ``extra_files/`` beside ``model.onnx``
    in versions registered before the pyfunc returned labels)."""
    for path in (folder / "artifacts" / name, folder / name, folder / "extra_files" / name):
        if path.is_file():
            return path
    raise FileNotFoundError(f"{folder}: the registered version has no {name}")


def champion_of(model_name: str, target: str) -> str | None:
    """The version ``champion-<target>`` points at, or None when there is none.

    Only a missing alias (or registered model) means "no champion"; any other registry error raises:
    a gate that cannot read the champion must not pass as if there were none."""
    from mlflow.exceptions import MlflowException

    import mlflow

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(model_name, alias("champion", target))
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        message = err.message.lower()
        if err.error_code == "INVALID_PARAMETER_VALUE" and "alias" in message and "not found" in message:
            return None
        raise
    return str(mv.version)


def score_registered(model_name: str, version: str, data_dir: Path, classes: list[str], threads: int = 1
                     ) -> dict[str, Any]:
    """Test top-1 of a registered version's own ONNX (through ONNX Runtime) on ``data_dir``'s test split.

    The champion gate compares a candidate with this, not with the champion's tagged top-1, which was
    measured on another dataset version's test set. The champion's label map translates its outputs to
    ``classes`` (a class it does not know counts as wrong); its image size comes from its graph.
    Returns {"version", "test_top1", "images"}."""
    from pipeline.data.tensors import load_split
    from pipeline.targets.runners import ort_session

    folder = load_registered(model_name, version)
    label_map = json.loads(registered_file(folder, "label_map.json").read_text())
    session = ort_session(registered_file(folder, "model.onnx"), threads)
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    size = inp.shape[1]
    if not isinstance(size, int):
        raise ValueError(f"{model_name} version {version}: model.onnx input {inp.name} has no fixed size {inp.shape}")
    x, y = load_split(data_dir, "test", size)
    images = x.permute(0, 2, 3, 1).contiguous().numpy()
    index = {c: i for i, c in enumerate(classes)}
    to_ours = np.array([index.get(label_map[str(i)], -1) for i in range(len(label_map))])
    logits = np.concatenate([session.run([out.name], {inp.name: images[i:i + 64]})[0]
                             for i in range(0, len(images), 64)])
    pred = to_ours[logits.argmax(-1)]
    return {"version": version, "test_top1": float((pred == y.numpy()).mean()), "images": len(images)}


def register_package(pkg: EdgePackage, model_name: str, tags: dict[str, str]) -> str:
    """Log the ONNX model (signature + input example) in the active run, create its version with all
    ``tags`` in one call, then point ``candidate-<target>`` at it. Returns the version.

    If the alias cannot be moved, the new version is deleted (or tagged ``incomplete`` when even that
    fails) and the error raised: no version is left half registered."""
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models import infer_signature

    import mlflow

    size = pkg.arch["img_size"]
    example = np.zeros((1, size, size, 3), dtype=np.uint8)
    n = len(pkg.classes)
    output = pd.DataFrame({"label": [pkg.classes[0]], "probability": [1.0 / n], "probabilities": [np.full(n, 1.0 / n)]})
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(PYFUNC_MODEL),  # models from code: labels and probabilities, not logits
        artifacts={"model": str(pkg.onnx), **{Path(f).stem: str(pkg.folder / f) for f in PACKAGE_FILES[1:]}},
        signature=infer_signature(example, output), input_example=example,
        pip_requirements=[f"onnxruntime=={_version('onnxruntime')}", f"numpy=={_version('numpy')}",
                          f"pandas=={_version('pandas')}", f"mlflow=={_version('mlflow')}"],
    )
    mlflow.log_artifacts(str(pkg.folder), "edge_package")  # weights, reports, manifest, as shipped
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(model_name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    mv = client.create_model_version(model_name, info.model_uri, run_id=info.run_id, tags=tags,
                                     model_id=info.model_id)
    version = str(mv.version)
    try:
        client.set_registered_model_alias(model_name, alias("candidate", pkg.target), version)
    except BaseException as err:  # anything, even an interrupt: undo the version, then let the error through
        _discard_version(client, model_name, version, err)
        raise
    log.info("registered %s version %s as %s", model_name, version, alias("candidate", pkg.target))
    return version


def _discard_version(client: Any, model_name: str, version: str, cause: BaseException) -> None:
    """Delete a version whose registration failed; if that fails too, tag it ``incomplete`` so readers refuse it."""
    try:
        client.delete_model_version(model_name, version)
        log.error("registration of %s version %s failed (%s): version deleted", model_name, version, cause)
        return
    except Exception as err:  # any failure to delete: fall back to marking the version
        log.error("registration of %s version %s failed (%s) and deleting it failed (%s): tagging it %s",
                  model_name, version, cause, err, INCOMPLETE_TAG)
    client.set_model_version_tag(model_name, version, INCOMPLETE_TAG, f"registration failed: {cause}")


def version_tags(pkg: EdgePackage, *, dataset_version: str, git_sha: str, dagster_run_id: str, params: dict,
                 test_top1: float, latency_mape: float | None, git_dirty: bool | None = None) -> dict[str, str]:
    """The version's tags. ``git_dirty`` None: read from ``git_sha``'s ``-dirty`` suffix (params.git_sha's form)."""
    if git_dirty is None:
        git_dirty = git_sha.endswith("-dirty")
    lat = pkg.latency
    tags = {
        "target": pkg.target, "arch": json.dumps(pkg.arch, sort_keys=True), "dataset_version": dataset_version,
        "git_sha": git_sha.removesuffix("-dirty"), "git_dirty": str(git_dirty).lower(),
        "dagster_run_id": dagster_run_id, "params_hash": params_hash(params),
        "latency_p50_ms": f"{lat.p50_ms:.4f}", "latency_p99_ms": f"{lat.p99_ms:.4f}",
        "latency_how": json.dumps(lat.how, sort_keys=True),
        "parity_max_abs_diff": f"{pkg.parity.max_abs_diff:.3e}",
        "parity_top1_agreement": f"{pkg.parity.top1_agreement:.4f}",
        "test_top1": f"{test_top1:.4f}", "precision": pkg.parity.precision,
        "latency_model_mape": "" if latency_mape is None else f"{latency_mape:.4f}",
    }
    tags.update({f"sha256.{name}": digest for name, digest in pkg.files_sha256.items()})
    manifest = pkg.folder / "package.json"  # written after the others; the edge agent verifies it too
    if manifest.is_file():
        tags["sha256.package.json"] = sha256_file(manifest)
    return tags


class UnknownVersion(InputError, LookupError):
    """No such registered model, version or alias."""


def model_version(model_name: str, ref: str) -> Any:
    """The registered version ``ref`` (a version number or an alias) of ``model_name``, or one line saying which
    part is not in the registry, with the names that are."""
    from mlflow.exceptions import MlflowException

    import mlflow

    client = mlflow.MlflowClient()
    try:
        return client.get_model_version(model_name, ref) if ref.isdigit() else \
            client.get_model_version_by_alias(model_name, ref)
    except MlflowException:
        pass
    try:
        model = client.get_registered_model(model_name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models(max_results=100))
        raise UnknownVersion(f"{model_name}@{ref}: no registered model {model_name!r} (registered: "
                             f"{', '.join(known) or 'none'})") from None
    aliases = sorted(model.aliases) if isinstance(model.aliases, dict) else sorted(a.alias for a in model.aliases)
    what = "version" if ref.isdigit() else "alias"
    raise UnknownVersion(f"{model_name}@{ref}: {model_name} has no {what} {ref} (aliases: "
                         f"{', '.join(aliases) or 'none'})") from None


def load_registered(model_name: str, ref: str) -> Path:
    """Download a registered version (``ref`` = version number or alias) and return its folder.
    Refuses a version tagged ``incomplete`` (its registration failed)."""
    import mlflow

    mv = model_version(model_name, ref)
    if INCOMPLETE_TAG in mv.tags:
        raise ValueError(f"{model_name} version {mv.version} is incomplete ({mv.tags[INCOMPLETE_TAG]}): "
                         f"not loading it")
    return Path(mlflow.artifacts.download_artifacts(f"models:/{model_name}/{mv.version}"))
