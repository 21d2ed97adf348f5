"""Resume checks what it resumes: a supernet or fine-tune killed mid-training (SIGKILL) and resumed matches an
uninterrupted run bit for bit; a checkpoint of another run (dataset version, config) or with nothing left to
train is refused with the field that differs, and nothing is written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.errors import InputError
from pipeline.nas.supernet_train import train_supernet
from pipeline.params import load_params
from pipeline.ssl.train import pretrain
from pipeline.training import ResumeError, load_checkpoint
from pipeline.weights import load_weights, sha256_file

STEPS = 30

RUNNER = """
import sys
from pathlib import Path

from pipeline.params import load_params

kind, root, data, out, resume, steps = sys.argv[1:7]
params = load_params(Path(root))
overrides = {"max_steps": int(steps)}
if kind == "supernet":
    from pipeline.nas.supernet_train import train_supernet

    train_supernet(Path(data), Path(out), params, backbone=None, resume=resume == "1", overrides=overrides)
else:
    from pipeline.finetune.train import finetune
    from pipeline.nas.supernet_train import load_supernet

    supernet = Path(sys.argv[7])
    arch = load_supernet(supernet)[0].space.largest()
    finetune(Path(data), Path(out), params, supernet, arch, resume=resume == "1", overrides=overrides)
"""


def _cmd(kind, root, data, out, resume, *extra):
    return [sys.executable, "-c", RUNNER, kind, str(root), str(data), str(out), "1" if resume else "0", str(STEPS),
            *map(str, extra)]


def _kill_resume_and_compare(kind, root, data, tmp_path, weights_name, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_cmd(kind, root, data, tmp_path / "full", False, *extra), check=True, env=env,
                   capture_output=True, timeout=300)
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(kind, root, data, out, False, *extra), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 180
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < STEPS
    assert not (out / weights_name).exists()

    subprocess.run(_cmd(kind, root, data, out, True, *extra), check=True, env=env, capture_output=True, timeout=300)
    assert load_checkpoint(ckpt)["step"] == STEPS
    assert load_checkpoint(ckpt)["history"] == load_checkpoint(tmp_path / "full" / "checkpoint.pt")["history"]
    full, _ = load_weights(tmp_path / "full" / weights_name)
    resumed, _ = load_weights(out / weights_name)
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_supernet_resume_after_sigkill_gives_the_same_weights(tiny_project, digits_dataset, tmp_path):
    _kill_resume_and_compare("supernet", tiny_project, digits_dataset, tmp_path, "supernet.safetensors")


def test_finetune_resume_after_sigkill_gives_the_same_weights(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    sn = train_supernet(digits_dataset, tmp_path / "sn", params, backbone=None, overrides={"max_steps": 3})
    # the fine-tune keeps an EMA and layer-wise lr decay, both in its checkpoint
    assert params["finetune"]["ema_decay"] and params["finetune"]["layer_decay"]
    _kill_resume_and_compare("finetune", tiny_project, digits_dataset, tmp_path, "model.safetensors", sn.weights)


def _meta(version):
    return {"dataset_version": version, "git_sha": "abc", "dagster_run_id": "run-1"}


def test_resume_against_a_checkpoint_of_another_dataset_version_is_refused(tiny_project, digits_dataset, tmp_path):
    """The new user's case: the previous dataset's checkpoint sits in runs/pretrain, the run on the new dataset
    was stopped before its first checkpoint, and --resume must not pick the old one up."""
    params = load_params(tiny_project)
    out = tmp_path / "pt"
    pretrain(digits_dataset, out, params, overrides={"max_steps": 5}, meta=_meta("old.dir"))
    before = sha256_file(out / "backbone.safetensors"), sha256_file(out / "checkpoint.pt")
    with pytest.raises(ResumeError) as info:
        pretrain(digits_dataset, out, params, resume=True, overrides={"max_steps": 10}, meta=_meta("new.dir"))
    msg = str(info.value)
    assert msg.startswith(f"{out / 'checkpoint.pt'}: ") and "\n" not in msg, msg
    assert "dataset_version: 'old.dir' in the checkpoint, 'new.dir' now" in msg, msg
    assert isinstance(info.value, InputError)
    assert (sha256_file(out / "backbone.safetensors"), sha256_file(out / "checkpoint.pt")) == before

    # the supernet too, and a Dagster rerun (another run id) of the same run is still a resume
    sn = tmp_path / "sn"
    train_supernet(digits_dataset, sn, params, backbone=None, overrides={"max_steps": 10}, meta=_meta("old.dir"))
    state = load_checkpoint(sn / "checkpoint.pt")
    state["step"], state["history"] = 5, state["history"][:5]  # as if killed after step 5
    torch.save(state, sn / "checkpoint.pt")
    with pytest.raises(ResumeError, match="dataset_version: 'old.dir' in the checkpoint, 'new.dir' now"):
        train_supernet(digits_dataset, sn, params, backbone=None, resume=True, overrides={"max_steps": 10},
                       meta=_meta("new.dir"))
    res = train_supernet(digits_dataset, sn, params, backbone=None, resume=True, overrides={"max_steps": 10},
                         meta={**_meta("old.dir"), "dagster_run_id": "run-2"})
    assert res.train.steps == 10 and load_checkpoint(sn / "checkpoint.pt")["step"] == 10


def test_resume_names_every_config_field_that_differs(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    out = tmp_path / "pt"
    pretrain(digits_dataset, out, params, overrides={"max_steps": 5}, meta=_meta("v.dir"))
    other = {**params, "pretrain": {**params["pretrain"], "mask_ratio": 0.5}}
    with pytest.raises(ResumeError) as info:
        pretrain(digits_dataset, out, other, resume=True, overrides={"max_steps": 10, "lr": 1e-4},
                 meta=_meta("v.dir"))
    msg = str(info.value)
    assert "mae.mask_ratio: 0.75 in the checkpoint, 0.5 now" in msg, msg
    assert "train.lr: 0.0015 in the checkpoint, 0.0001 now" in msg, msg
    assert "train.max_steps: 5 in the checkpoint, 10 now" in msg, msg


def test_resuming_a_finished_run_trains_nothing_and_is_not_a_success(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    out = tmp_path / "pt"
    pretrain(digits_dataset, out, params, overrides={"max_steps": 5}, meta=_meta("v.dir"))
    before = sha256_file(out / "backbone.safetensors")
    with pytest.raises(ResumeError, match=r"already at step 5 of 5, nothing left to resume"):
        pretrain(digits_dataset, out, params, resume=True, overrides={"max_steps": 5}, meta=_meta("v.dir"))
    assert sha256_file(out / "backbone.safetensors") == before
    with pytest.raises(InputError, match="0 steps to train"):
        pretrain(digits_dataset, tmp_path / "zero", params, overrides={"epochs": 0}, meta=_meta("v.dir"))
    assert not (tmp_path / "zero" / "backbone.safetensors").exists()


def test_an_unreadable_checkpoint_is_an_input_error(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    out = tmp_path / "pt"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match=f"{out / 'checkpoint.pt'}: cannot read the checkpoint"):
        pretrain(digits_dataset, out, params, resume=True, overrides={"max_steps": 5})
    assert Path(out / "checkpoint.pt").read_bytes() == b"not a checkpoint"
