"""`dvc repro` on a fresh clone: runs the chain, then nothing; a changed param re-runs only what depends on it;
a new target file (and `vitforge targets sync`) adds its stages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import TINY, clone_code, clone_env, commit_all, set_params


def test_dvc_repro_runs_the_chain_then_nothing_then_what_a_param_touches(tmp_path, digits_few):
    clone = clone_code(tmp_path / "clone")
    for f in (clone / "infra" / "targets").glob("*.yaml"):
        if f.stem != "cpu-ort-fp32":  # one target keeps the test short
            f.unlink()
    env = clone_env(clone)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env["PATH"]])  # `vitforge` of this venv

    def run(*argv: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), cwd=clone, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc

    def status() -> set[str]:
        return set(json.loads(run("dvc", "status", "--json").stdout or "{}"))

    run(sys.executable, "-m", "pipeline.cli", "targets", "sync")
    set_params(clone, **TINY, dataset__data=str(digits_few))
    commit_all(clone, "tiny config, one target")
    assert not (clone / "data" / "dataset.dvc").exists()  # a fresh clone: no dataset version yet

    first = run("dvc", "repro").stdout
    for stage in ("dataset", "pretrain", "supernet", "search@cpu-ort-fp32", "finetune@cpu-ort-fp32",
                  "package@cpu-ort-fp32"):
        assert f"Running stage '{stage}'" in first, first[-2000:]
    assert json.loads((clone / "runs" / "package" / "cpu-ort-fp32" / "result.json").read_text())[
        "registered_version"] == "1"
    assert (clone / "data" / "dataset.dvc").is_file()

    second = run("dvc", "repro").stdout
    assert "Running stage" not in second, second
    assert status() == set()

    set_params(clone, finetune__lr=1.0e-3)  # the brief fine-tunes of the search and the fine-tune read it
    assert status() == {"search@cpu-ort-fp32", "finetune@cpu-ort-fp32"}
    set_params(clone, finetune__lr=TINY.get("finetune__lr"))
    assert status() == set()

    (clone / "infra" / "targets" / "edge-box.yaml").write_text(
        "runtime: onnxruntime\ndevice: cpu\nprecision: fp32\nthreads: 1\nbatch_size: 1\nlatency_budget_ms: 50\n")
    run(sys.executable, "-m", "pipeline.cli", "targets", "sync")
    assert status() == {"search@edge-box", "finetune@edge-box", "package@edge-box"}
