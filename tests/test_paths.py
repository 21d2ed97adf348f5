"""Artifact paths are defined once (pipeline/paths.py): dvc.yaml's outs and deps are the same paths."""

from __future__ import annotations

import yaml

from pipeline.params import PACKAGE_ROOT, load_params
from pipeline.paths import paths


def test_dvc_stages_write_and_read_where_the_stages_do():
    p = paths(PACKAGE_ROOT, load_params(PACKAGE_ROOT))
    stages = yaml.safe_load((PACKAGE_ROOT / "dvc.yaml").read_text())["stages"]

    def outs(stage: str) -> set[str]:
        body = stages[stage].get("do", stages[stage])
        return {next(iter(o)) if isinstance(o, dict) else o for o in body["outs"]}

    def deps(stage: str) -> set[str]:
        return set(stages[stage].get("do", stages[stage])["deps"])

    t = "${item}"
    assert outs("pretrain") == {p.rel(p.backbone())}
    assert outs("supernet") == {p.rel(p.supernet())} and p.rel(p.backbone()) in deps("supernet")
    assert outs("search") == {p.rel(p.search_result(t)), p.rel(p.latency_model(t))}
    assert {p.rel(p.supernet()), p.rel(p.dataset())} <= deps("search")
    assert outs("finetune") == {p.rel(p.finetune_dir(t) / "model.safetensors"), p.rel(p.finetune_result(t))}
    assert p.rel(p.search_result(t)) in deps("finetune")
    assert outs("package") == {p.rel(p.package_dir(t))}
    assert p.rel(p.finetune_dir(t) / "model.safetensors") in deps("package")


def test_rel_is_relative_inside_the_root_and_absolute_outside(tmp_path):
    p = paths(tmp_path, load_params(PACKAGE_ROOT))
    assert p.rel(p.search_result("box")) == "runs/search/box.json"
    assert p.rel("/elsewhere/x.json") == "/elsewhere/x.json"
