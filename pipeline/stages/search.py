"""Stage ``search``: latency model for a target, evolutionary search, the chosen arch measured for real."""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline import plots, replay
from pipeline.data.tensors import load_split, normalize
from pipeline.finetune.train import finetune
from pipeline.models.supernet import Arch
from pipeline.nas.latency_model import ROBUST_KEYS, LatencyModel, load_or_fit, measure_arch
from pipeline.nas.search import SearchSettings, choose, evolutionary_search, within_noise
from pipeline.nas.supernet_train import evaluate, load_supernet
from pipeline.params import resolve
from pipeline.paths import paths, write_result
from pipeline.stages.common import check_dataset, data_dir, mark_failed
from pipeline.targets import Target, TargetError, list_targets, load_target
from pipeline.tracking import Tracker, log_figure, log_json


@dataclass
class SearchStageResult:
    target: str
    arch: dict[str, Any]
    val_top1: float  # inherited (weight-sharing) val top-1 of the chosen arch
    val_top1_se: float  # its standard error, sqrt(p (1 - p) / n)
    val_images: int
    finetuned_val_top1: float | None  # after the brief fine-tune the pick was made on
    kendall_tau: float | None  # inherited vs briefly fine-tuned val top-1 over the fine-tuned archs
    # the pick beat every other fine-tuned arch by more than two standard errors of the difference (None:
    # fewer than two were fine-tuned). False: the val split could not tell the top ones apart, and the pick
    # is the slowest (most capable) arch within budget among those tied with the best
    separated: bool | None
    runner_up_gap: float | None  # pick minus the best other arch, fine-tuned val top-1
    rerank_steps: int | None  # steps of each brief fine-tune (the same for every candidate)
    predicted_ms: float
    measured_p50_ms: float
    budget_ms: float
    latency_mape: float
    latency_max_error: float
    latency_noise: float  # the spread of repeated timings of one arch, relative: what the MAPE is judged beside
    latency_passed: bool  # the latency model's gate (LatencyModel.gate): MAPE within max_mape, or within the noise
    latency_verdict: str  # and confirmed by a re-measurement
    largest_arch: dict[str, Any]
    largest_val_top1: float
    largest_p50_ms: float
    evaluated: int
    front: list[dict]
    tried: list[dict]
    latency_model_path: str
    supernet_weights: str
    dataset_version: str
    mlflow_run_id: str
    pareto_uri: str
    latency_scatter_uri: str
    replay: dict[str, Any]  # the chain's clock-dependent decisions so far (pipeline/replay.py)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failed_gates(self) -> list[str]:
        """The search's gates that failed: the latency model's error, and the chosen arch's measured p50."""
        return ([] if self.latency_passed else ["latency_model_error"]) + (
            [] if self.measured_p50_ms <= self.budget_ms else ["within_budget"])

    @property
    def passed(self) -> bool:
        return not self.failed_gates


def target_file(root: Path, params: dict[str, Any], name: str) -> Path:
    """The file of target ``name``; an unknown name is a TargetError naming the folder and the known ones."""
    folder = resolve(params["targets_dir"], root)
    files = list_targets(folder)
    if name not in files:
        raise TargetError(f"unknown target {name!r}: no {folder / (name + '.yaml')} (known: {sorted(files)})")
    return files[name]


def resolve_target(root: Path, params: dict[str, Any], name: str) -> tuple[Target, Path]:
    path = target_file(root, params, name)
    target = load_target(path)
    ok, why = target.measurable_here()
    if not ok:
        raise TargetError(f"target {name!r} cannot be measured on this machine: {why}")
    return target, path


def standard_error(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / max(n, 1))


def run_search(root: Path, params: dict[str, Any], tracker: Tracker, dataset: dict[str, Any], supernet_weights: str,
               target_name: str, *, tags: dict[str, str] | None = None,
               time_budget_s: float | None = None) -> SearchStageResult:
    """``time_budget_s`` bounds the whole stage: what the latency model and the evolution leave of it is
    shared by the brief fine-tunes of the top candidates (else ``search.rerank_steps`` each)."""
    with replay.recording("search") as journal:
        result = _search(root, params, tracker, dataset, supernet_weights, target_name, tags, time_budget_s)
        result.replay = replay.chain(replay.read_sidecar(resolve(supernet_weights, root)), journal)
    out = paths(root, params).search_result(result.target)
    if result.passed:
        write_result(out, result.to_dict())
    else:  # nothing downstream may take this arch, nor an older one for this target
        mark_failed(result.mlflow_run_id, result.failed_gates)
        out.unlink(missing_ok=True)
    return result


def _search(root: Path, params: dict[str, Any], tracker: Tracker, dataset: dict[str, Any], supernet_weights: str,
            target_name: str, tags: dict[str, str] | None, time_budget_s: float | None) -> SearchStageResult:
    started = time.perf_counter()
    target, target_path = resolve_target(root, params, target_name)
    check_dataset(dataset, root)  # the folder still holds the version it claims
    lp, sp = params["latency"], params["search"]
    mean, std = params["model"]["mean"], params["model"]["std"]
    net, _ = load_supernet(resolve(supernet_weights, root))
    space = net.space

    robust = {k: lp[k] for k in ROBUST_KEYS}  # the project's params, not the package's defaults
    model_path = paths(root, params).latency_model(target.name)

    def replayed_model(d: dict[str, Any]) -> LatencyModel:  # under a rebuild: the version's own, not re-timed
        model = LatencyModel.from_dict(d)
        model.save(model_path)
        return model

    latency = replay.decide(f"latency_model:{target.name}", lambda: load_or_fit(
        model_path, space, target, target_path, n_fit=lp["n_fit"], n_holdout=lp["n_holdout"], warmup=lp["warmup"],
        runs=lp["runs"], seed=params["seed"], mean=mean, std=std, max_mape=lp["max_mape"], confirm=lp["confirm"],
        **robust), encode=asdict, decode=replayed_model)
    images, y_val = load_split(data_dir(dataset, root), "val", space.largest().img_size)
    x_val = normalize(images, mean, std)

    def measure(arch: Arch) -> float:
        with tempfile.TemporaryDirectory(prefix="vitforge-measure-") as tmp:
            return measure_arch(arch, space, target, Path(tmp), warmup=lp["warmup"], runs=lp["runs"], mean=mean,
                                std=std, **robust)

    # The pick keeps `latency_headroom` of the budget free: the package is timed again, apart in time, and an
    # arch measured at 98 % of the budget fails that as often as not.
    pick_budget = target.latency_budget_ms * (1.0 - sp.get("latency_headroom", 0.0))
    evaluated, front = evolutionary_search(
        space, lambda a: evaluate(net, a, x_val, y_val), lambda a: latency.predict(a, space),
        pick_budget, SearchSettings.from_params(sp, params["seed"]),
        allowed=lambda a: target.input_size is None or a.img_size == target.input_size)
    n_val = len(y_val)
    k = sp["rerank_top_k"]
    fixed_steps = None if time_budget_s is not None else sp["rerank_steps"]
    rerank_steps: list[int] = []  # the steps the first brief fine-tune took (a replay's, in a rebuild): everyone's

    def finetune_top1(arch: Arch, n: int) -> float:
        """A brief fine-tune; every candidate gets the same step count, so a fast arch cannot win on steps.

        Under a time budget the first (most expensive) of the ``n`` candidates gets 1/n of the time left,
        and the steps it took are everyone's: the cheaper ones then need less than their share.
        """
        if rerank_steps or fixed_steps is not None:
            overrides: dict[str, Any] = {"max_steps": rerank_steps[0] if rerank_steps else fixed_steps}
        else:
            left = time_budget_s - (time.perf_counter() - started)
            overrides = {"time_budget_s": max(left, 0.0) / n}
        with tempfile.TemporaryDirectory(prefix="vitforge-rerank-") as tmp:
            res = finetune(data_dir(dataset, root), Path(tmp), params, resolve(supernet_weights, root), arch,
                           overrides=replay.steps_override(f"rerank:{arch.short()}", overrides),
                           train_on_val=False)
        replay.record_steps(f"rerank:{arch.short()}", res.train.totals)
        if not rerank_steps:
            rerank_steps.append(res.train.steps)
        return res.val.top1

    choice = choose(front, measure, pick_budget, top_k=k, finetune_top1=finetune_top1 if k > 1 else None,
                    evaluated=evaluated, n_val=n_val)
    chosen, measured, tried = choice.candidate, choice.measured_ms, choice.tried
    for row in tried:
        row["top1_se"] = standard_error(row["top1"], n_val)
    finetuned = next((r.get("finetuned_top1") for r in tried if r["arch"] == chosen.arch.to_dict()), None)
    others = [r["finetuned_top1"] for r in tried if "finetuned_top1" in r and r["arch"] != chosen.arch.to_dict()]
    gap = separated = None
    if finetuned is not None and others:
        gap = finetuned - max(others)
        separated = gap > 0 and not within_noise(finetuned, max(others), n_val)
    largest = space.largest()
    largest_ms = latency.measured_ms(largest) or measure(largest)  # the fit set holds it, timed the same way
    largest_top1 = evaluate(net, largest, x_val, y_val)

    with tracker.run("search", {"dataset_version": dataset["version"], "target": target.name, **(tags or {})}) as run:
        import mlflow

        mlflow.log_params({f"arch.{k}": v for k, v in chosen.arch.to_dict().items()}
                          | {"target": target.name, "budget_ms": target.latency_budget_ms}
                          | {f"search.{k}": v for k, v in sp.items() if k != "out_dir"})
        mlflow.log_metrics({"latency_model_mape": latency.mape, "latency_model_max_error": latency.max_error,
                            "latency_model_noise": latency.noise, "latency_model_passed": float(latency.passed),
                            "val_top1": chosen.top1, "predicted_ms": chosen.predicted_ms, "measured_p50_ms": measured,
                            "largest_p50_ms": largest_ms, "largest_val_top1": largest_top1,
                            "speedup_vs_largest": largest_ms / measured, "evaluated_archs": len(evaluated),
                            "val_top1_se": standard_error(chosen.top1, n_val), "val_images": n_val}
                           | ({"finetuned_val_top1": finetuned} if finetuned is not None else {})
                           | ({"kendall_tau": choice.tau} if choice.tau is not None else {})
                           | ({"runner_up_gap": gap, "separated": float(separated)} if gap is not None else {})
                           | ({"rerank_steps": rerank_steps[0]} if finetuned is not None else {}))
        ev = [c.to_dict() for c in evaluated]
        fr = [c.to_dict() for c in front]
        pareto_uri = log_figure(plots.pareto(ev, fr, target.latency_budget_ms, chosen.to_dict(),
                                             f"search on {target.name}"), "pareto.png")
        fit_pairs = [(m.p50_ms, latency.predict(Arch(**m.arch), space)) for m in latency.fit]
        scatter_uri = log_figure(plots.predicted_vs_measured(
            fit_pairs, latency.holdout_pairs(space),
            f"{target.name}: MAPE {100 * latency.mape:.1f} % (held out)"), "latency_model.png")
        log_json(fr, "pareto_front.json")
        log_json(ev, "evaluated.json")
        log_json(tried, "measured_choices.json")
        mlflow.log_artifact(str(paths(root, params).latency_model(target.name)), "latency_model")
        run_id = run.info.run_id
    result = SearchStageResult(
        target.name, chosen.arch.to_dict(), chosen.top1, standard_error(chosen.top1, n_val), n_val, finetuned,
        choice.tau, separated, gap, rerank_steps[0] if finetuned is not None else None, chosen.predicted_ms, measured,
        target.latency_budget_ms,
        latency.mape, latency.max_error, latency.noise, latency.passed, latency.verdict, largest.to_dict(),
        largest_top1, largest_ms, len(evaluated), fr, tried,
        paths(root, params).rel(paths(root, params).latency_model(target.name)),
        paths(root, params).rel(resolve(supernet_weights, root)), dataset["version"], run_id,
        pareto_uri, scatter_uri, {})
    return result

