"""Training under torchrun: with ``nproc: 2`` the supernet and fine-tuning stages train on two CPU processes
(gloo), write their weights, and match a single-process run over the same global batch; a failing worker is
an error that names what failed, not a hang.

Why the two runs can be compared at all: each rank takes half of every batch (``batch_indices``), DDP
averages the two half-batch gradients, and with equal halves and per-sample-mean losses that average is the
full batch's gradient. The augmentations are turned off below (each rank would draw them for its own half,
unlike one process drawing for the whole batch), the space has no BatchNorm (patch stem) and every rank
samples the same archs per step, so what is left between the runs is float rounding: the order in which the
batch's contributions are summed.
"""

from __future__ import annotations

import time

import pytest
import torch
from conftest import TINY, make_project, set_params

from pipeline.errors import InputError, ParamsError
from pipeline.finetune.train import finetune
from pipeline.launch import WorkerError, processes
from pipeline.models.supernet import SearchSpace
from pipeline.nas.supernet_train import train_supernet
from pipeline.stages.supernet import run_supernet
from pipeline.tracking import Tracker
from pipeline.training import load_checkpoint
from pipeline.weights import load_weights

STEPS = 6
NO_AUGMENTATION = {f"{section}__{key}": value for section in ("supernet", "finetune") for key, value in
                   {"rand_augment": None, "mixup": 0.0, "cutmix": 0.0, "mix_prob": 0.0, "random_erasing": 0.0,
                    "drop_path": 0.0, "max_shift": 0}.items()}
# Measured over STEPS steps of the tiny config (lr 2e-3 and 3e-3, AdamW): the losses of the two runs agree
# to ~1e-7 relative and the weights to <= 6e-6 absolute (supernet 3-4e-6, fine-tune 3-6e-6). The weights
# drift further than the losses because AdamW divides each update by sqrt(v): for a weight whose gradient
# is tiny the rounding difference is not damped, the step stays ~lr. The tolerances leave a margin of
# about 15x and stay far below one step (~lr = 2e-3): a rank training on the wrong half, or gradients
# not being averaged across ranks, moves weights by about that much.
LOSS_RTOL = 1e-5
WEIGHTS_ATOL = 1e-4


def _two(params: dict) -> dict:
    return {**params, "supernet": {**params["supernet"], "nproc": 2}, "finetune": {**params["finetune"], "nproc": 2}}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("distributed") / "project")
    return root, set_params(root, **TINY, **NO_AUGMENTATION, supernet__init="random")


@pytest.fixture(scope="module")
def one_process_supernet(project, digits_dataset, tmp_path_factory):
    _, params = project
    return train_supernet(digits_dataset, tmp_path_factory.mktemp("sn1"), params, backbone=None,
                          overrides={"max_steps": STEPS})


def _assert_close_weights(a, b):
    wa, _ = load_weights(a)
    wb, _ = load_weights(b)
    assert wa.keys() == wb.keys()
    worst = max((wa[k] - wb[k]).abs().max().item() for k in wa)
    assert worst <= WEIGHTS_ATOL, f"weights differ by up to {worst:.2e}"


def test_the_supernet_stage_trains_on_two_processes_as_on_one(project, digits_dataset, one_process_supernet):
    import mlflow

    root, params = project
    params = _two(params)
    tracker = Tracker.from_params(params, root)
    res = run_supernet(root, params, tracker, {"tracked_dir": str(digits_dataset), "version": "test.dir"}, None,
                       overrides={"max_steps": STEPS})
    one = one_process_supernet.train
    assert res.steps == one.steps == STEPS
    out = root / "runs" / "supernet"
    assert (out / "torchrun.log").is_file()
    history = load_checkpoint(out / "checkpoint.pt")["history"]  # rank 0's: the global batch's loss per step
    assert history == pytest.approx(one.history, rel=LOSS_RTOL)
    _assert_close_weights(root / res.weights, one_process_supernet.weights)
    assert res.val_top1.keys() == one_process_supernet.val_top1.keys()
    # the stage logged the workers' result as it logs its own: the loss curve is rank 0's history
    logged = mlflow.MlflowClient(tracker.tracking_uri).get_metric_history(res.mlflow_run_id, "loss")
    assert [m.value for m in sorted(logged, key=lambda m: m.step)] == history


def test_fine_tuning_on_two_processes_matches_one(project, digits_dataset, one_process_supernet, tmp_path):
    _, params = project
    arch = SearchSpace.from_params(params["space"]).largest()
    sn = one_process_supernet.weights
    one = finetune(digits_dataset, tmp_path / "one", params, sn, arch, overrides={"max_steps": STEPS})
    two = finetune(digits_dataset, tmp_path / "two", _two(params), sn, arch, overrides={"max_steps": STEPS})
    assert two.train.steps == one.train.steps == STEPS
    assert two.train.history == pytest.approx(one.train.history, rel=LOSS_RTOL)
    assert two.weights == tmp_path / "two" / "model.safetensors" and two.weights.is_file()
    _assert_close_weights(two.weights, one.weights)  # the EMA weights, which ship
    assert two.test.n == one.test.n and two.classes == one.classes and two.val is None


def test_a_failing_worker_is_an_error_naming_it(project, digits_dataset, tmp_path):
    _, params = project
    bad = tmp_path / "supernet.safetensors"
    bad.write_bytes(b"not a safetensors file")
    arch = SearchSpace.from_params(params["space"]).largest()
    started = time.perf_counter()
    with pytest.raises(InputError, match=f"{bad}: cannot read the supernet weights") as err:
        finetune(digits_dataset, tmp_path / "ft", _two(params), bad, arch, overrides={"max_steps": STEPS})
    assert time.perf_counter() - started < 120  # torchrun stops the other rank: no hang
    assert isinstance(err.value, WorkerError)
    message = str(err.value)
    assert "torchrun rank" in message and "exit code 1" in message and "CheckpointError" in message
    assert message.splitlines()[0].startswith(str(bad))  # the CLI's one line names the file
    assert "log " in message and len(message.splitlines()) > 1  # then the tail of the workers' log
    assert not (tmp_path / "ft" / "model.safetensors").exists()


@pytest.mark.parametrize("nproc", [0, -1, 1.5, "2", True, None])
def test_nproc_must_be_a_whole_number_of_processes(nproc):
    with pytest.raises(ParamsError, match="finetune.nproc"):
        processes({"finetune": {"nproc": nproc}}, "finetune")


def test_batches_split_evenly_over_the_processes(monkeypatch):
    """batch_size 3 over 2 ranks: unequal shares, whose average gradient would not be the batch's."""
    import torch.distributed as dist

    from pipeline.training import TrainConfig, train

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    cfg = TrainConfig(epochs=1, batch_size=3, lr=1e-3, weight_decay=0.0, warmup_steps=1, grad_clip=1.0,
                      checkpoint_every=10, seed=0, threads=1)
    with pytest.raises(ParamsError, match="batch_size 3 does not split evenly over 2 processes"):
        train(torch.nn.Linear(2, 1), lambda m, idx, step: m(torch.zeros(len(idx), 2)).sum(), 8, cfg)
