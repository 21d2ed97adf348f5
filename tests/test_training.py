"""The shared training loop: determinism, resume after SIGKILL, DDP, non-finite loss."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from pipeline.params import load_params
from pipeline.ssl.train import pretrain
from pipeline.training import NonFiniteLossError, TrainConfig, load_checkpoint, train
from pipeline.weights import load_weights, weights_sha256


def test_same_data_params_seed_give_identical_weights(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    a = pretrain(digits_dataset, tmp_path / "a", params, overrides={"max_steps": 6})
    b = pretrain(digits_dataset, tmp_path / "b", params, overrides={"max_steps": 6})
    def digest(res):
        return weights_sha256(load_weights(res.weights)[0])

    assert digest(a) == digest(b)
    c = pretrain(digits_dataset, tmp_path / "c", params, overrides={"max_steps": 6, "seed": 1})
    assert digest(c) != digest(a)


def test_checkpoints_carry_their_config(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    res = pretrain(digits_dataset, tmp_path / "pt", params, overrides={"max_steps": 5},
                   meta={"dataset_version": "abc.dir", "git_sha": "deadbeef", "dagster_run_id": "r1"})
    state = load_checkpoint(res.checkpoint)  # weights_only=True: no pickled objects
    assert state["step"] == 5
    assert state["config"]["train"]["batch_size"] == 64
    assert state["config"]["dataset_version"] == "abc.dir"
    _, meta = load_weights(res.weights)
    assert meta["git_sha"] == "deadbeef" and meta["arch"]["embed_dim"] == 32 and meta["mae"]["mask_ratio"] == 0.75


def _train_cmd(root, data, out, *extra):
    return [sys.executable, "-m", "pipeline.cli_pretrain", "--root", str(root), "--data", str(data), "--out", str(out),
            "--max-steps", "20", *extra]


def test_resume_after_sigkill_gives_the_same_weights(tiny_project, digits_dataset, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(_train_cmd(tiny_project, digits_dataset, tmp_path / "full"), check=True, env=env,
                   capture_output=True)

    out = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(tiny_project, digits_dataset, out), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "training finished before it could be killed"
    killed_at = load_checkpoint(ckpt)["step"]
    assert 0 < killed_at < 20
    assert not (out / "backbone.safetensors").exists()

    subprocess.run(_train_cmd(tiny_project, digits_dataset, out, "--resume"), check=True, env=env,
                   capture_output=True)
    assert load_checkpoint(ckpt)["step"] == 20
    full, _ = load_weights(tmp_path / "full" / "backbone.safetensors")
    resumed, _ = load_weights(out / "backbone.safetensors")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_ddp_two_processes(tiny_project, digits_dataset, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pipeline.cli_pretrain", "--root", str(tiny_project), "--data", str(digits_dataset),
           "--out", str(tmp_path / "ddp"), "--max-steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("steps 3 loss") == 1  # rank 0 alone reports and writes
    assert load_checkpoint(tmp_path / "ddp" / "checkpoint.pt")["step"] == 3


def test_non_finite_loss_stops_with_a_clear_error():
    model = torch.nn.Linear(2, 1)
    cfg = TrainConfig(epochs=1, batch_size=2, lr=1e-3, weight_decay=0.0, warmup_steps=1, grad_clip=1.0,
                      checkpoint_every=10, seed=0, threads=1)

    def nan_loss(net, idx, step):
        return net(torch.ones(len(idx), 2)).sum() * float("nan")

    with pytest.raises(NonFiniteLossError, match="loss is nan at step 0"):
        train(model, nan_loss, 8, cfg)
