"""How the CLI ends: bad input is one line and exit 2, a bug keeps its traceback, Ctrl-C is exit 130 and KILLED."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import TINY, set_params

import pipeline.cli_targets
from pipeline.cli import main
from pipeline.errors import ParamsError


def test_input_errors_are_one_line_and_exit_2_even_with_verbose(project, monkeypatch, capsys):
    def bad_input(args):
        raise ParamsError("params.yaml: pretrain.epochs: expected a whole number, got 'ten'")

    monkeypatch.setattr(pipeline.cli_targets, "cmd_targets_list", bad_input)
    assert main(["--root", str(project), "targets", "list"]) == 2
    err = capsys.readouterr().err
    assert err == "error: params.yaml: pretrain.epochs: expected a whole number, got 'ten'\n"
    assert main(["--root", str(project), "-v", "targets", "list"]) == 2  # -v adds the traceback, not another code
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("bug", [KeyError("space"), ValueError("operands could not be broadcast"),
                                 FileNotFoundError("/tmp/x")])
def test_a_bug_is_not_disguised_as_bad_input(project, monkeypatch, bug):
    def buggy(args):
        raise bug

    monkeypatch.setattr(pipeline.cli_targets, "cmd_targets_list", buggy)
    with pytest.raises(type(bug)):  # the console script prints its traceback and exits 1
        main(["--root", str(project), "targets", "list"])


def run_statuses(root, stage: str) -> list[str]:
    db = root / "mlflow" / "mlflow.db"
    if not db.is_file():
        return []
    with sqlite3.connect(db) as con:
        return [r[0] for r in con.execute("select status from runs where name = ?", (stage,))]


def test_ctrl_c_prints_one_line_exits_130_and_marks_the_run_killed(project, digits_few):
    set_params(project, **{**TINY, "pretrain__epochs": 10000})  # long enough to be interrupted
    vitforge = [sys.executable, "-m", "pipeline.cli", "--root", str(project)]
    subprocess.run(vitforge + ["stage", "dataset", "--data", str(digits_few)], check=True, capture_output=True)
    proc = subprocess.Popen(vitforge + ["stage", "pretrain"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        while "RUNNING" not in run_statuses(project, "pretrain") and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        time.sleep(1.0)  # into the training loop
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip() and "Warning" not in line and "warn" not in line]
    assert "Traceback" not in err and lines[-1].startswith("interrupted"), err
    assert run_statuses(project, "pretrain") == ["KILLED"]


@pytest.mark.parametrize("stage", ["search", "finetune", "package"])
def test_every_target_stage_names_an_unknown_target(project, capsys, stage):
    from pipeline.cli import main

    assert main(["--root", str(project), "stage", stage, "--target", "no-such-target"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown target 'no-such-target'") and "run `vitforge" not in err, err
