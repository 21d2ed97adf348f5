"""The supernet's start: MAE weights that are missing or do not fit are errors, random init only when asked for;
and in-place distillation (``supernet.distill``) trains and changes the loss as it should."""

from __future__ import annotations

import pytest
import torch
from conftest import set_params

from pipeline.errors import InputError
from pipeline.models.supernet import SearchSpace
from pipeline.nas.supernet_train import train_supernet
from pipeline.params import load_params
from pipeline.ssl.mae import MAE, MAEConfig
from pipeline.training import CheckpointError, load_checkpoint
from pipeline.weights import load_weights, save_weights


def mae_backbone(path, params, edit=None):
    """An MAE encoder of the params' largest arch, saved as the pretrain stage saves it (``edit`` changes it)."""
    torch.manual_seed(3)
    space = SearchSpace.from_params(params["space"])
    p = params["pretrain"]
    mae = MAE(space, MAEConfig(p["mask_ratio"], p["decoder_dim"], p["decoder_depth"], p["decoder_heads"], True))
    state = {k: v.detach().clone() for k, v in mae.encoder.state_dict().items()}
    with torch.no_grad():
        for v in state.values():
            if v.is_floating_point():
                v.normal_()  # unlike any init the supernet makes itself
    if edit:
        edit(state)
    return save_weights(path, state, {"space": params["space"], "kind": "mae-encoder"})


# ---- 1. missing MAE weights ---------------------------------------------------------------------

def test_a_backbone_path_that_does_not_exist_is_an_error_naming_it(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    missing = tmp_path / "pretrain" / "backbone.safetensors"
    with pytest.raises(InputError, match=str(missing)):
        train_supernet(digits_dataset, tmp_path / "sn", params, backbone=missing, overrides={"max_steps": 1})
    assert not (tmp_path / "sn" / "supernet.safetensors").exists()


def _stage(root, params, digits_dataset, backbone):
    from pipeline.stages.supernet import run_supernet
    from pipeline.tracking import Tracker

    return run_supernet(root, params, Tracker.from_params(params, root),
                        {"tracked_dir": str(digits_dataset), "version": "test.dir"}, backbone,
                        overrides={"max_steps": 2})


def test_the_stage_refuses_to_start_from_random_init_unless_params_ask(tiny_project, digits_dataset, tmp_path):
    import mlflow

    params = load_params(tiny_project)
    assert params["supernet"]["init"] == "mae"  # the default
    expected = tiny_project / "runs" / "pretrain" / "backbone.safetensors"
    with pytest.raises(InputError, match=f"{expected}.*supernet.init: random"):
        _stage(tiny_project, params, digits_dataset, None)  # what the CLI passes when the file is not there
    with pytest.raises(InputError, match=str(tmp_path / "gone.safetensors")):
        _stage(tiny_project, params, digits_dataset, str(tmp_path / "gone.safetensors"))
    assert not (tiny_project / "runs" / "supernet" / "supernet.safetensors").exists()

    params = set_params(tiny_project, supernet__init="random")
    res = _stage(tiny_project, params, digits_dataset, None)
    assert res.steps == 2
    assert mlflow.get_run(res.mlflow_run_id).data.params["backbone"] == "random init"

    params = set_params(tiny_project, supernet__init="scratch")
    with pytest.raises(InputError, match="supernet.init"):
        _stage(tiny_project, params, digits_dataset, None)


# ---- 2. partial loads ---------------------------------------------------------------------------

def test_an_mae_backbone_loads_whole_and_only_the_head_is_new(tiny_project, digits_dataset, tmp_path):
    params = load_params(tiny_project)
    path = mae_backbone(tmp_path / "backbone.safetensors", params)
    res = train_supernet(digits_dataset, tmp_path / "sn", params, backbone=path,
                         overrides={"max_steps": 1, "lr": 0.0})  # lr 0: the weights stay as loaded
    backbone, _ = load_weights(path)
    supernet, _ = load_weights(res.weights)
    assert set(supernet) - set(backbone) == {"head.weight", "head.bias"}
    for name, tensor in backbone.items():
        assert torch.equal(supernet[name], tensor), name


def _drop(key):
    return lambda state: state.pop(key)


def _add(key):
    return lambda state: state.__setitem__(key, torch.zeros(3))


def _reshape(key):
    return lambda state: state.__setitem__(key, torch.zeros(7, 7))


@pytest.mark.parametrize(("edit", "named"), [
    (_drop("blocks.0.norm1.weight"), "missing: blocks.0.norm1.weight"),
    (_add("decoder_embed.weight"), "unexpected: decoder_embed.weight"),
    (_add("head.weight"), "wrong shape"),  # a head of the wrong size is not "new", it is wrong
    (_reshape("blocks.1.mlp.fc1.weight"), "wrong shape (checkpoint vs supernet): blocks.1.mlp.fc1.weight"),
])
def test_a_backbone_that_does_not_fit_is_refused_naming_the_keys(tiny_project, digits_dataset, tmp_path, edit,
                                                                  named):
    params = load_params(tiny_project)
    path = mae_backbone(tmp_path / "backbone.safetensors", params, edit)
    with pytest.raises(CheckpointError) as info:
        train_supernet(digits_dataset, tmp_path / "sn", params, backbone=path, overrides={"max_steps": 1})
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and named in msg and "\n" not in msg, msg
    assert "head.weight, head.bias" in msg  # says which keys may legitimately be new
    assert not (tmp_path / "sn" / "supernet.safetensors").exists()


def test_loading_a_supernet_file_that_does_not_fit_is_a_checkpoint_error(tiny_project, digits_dataset, tmp_path):
    from pipeline.nas.supernet_train import load_supernet

    params = load_params(tiny_project)
    res = train_supernet(digits_dataset, tmp_path / "sn", params, backbone=None, overrides={"max_steps": 1})
    state, meta = load_weights(res.weights)
    state.pop("norm.weight")
    broken = save_weights(tmp_path / "broken.safetensors", state, meta)
    with pytest.raises(CheckpointError, match="missing: norm.weight"):
        load_supernet(broken)


# ---- 7. in-place distillation -------------------------------------------------------------------

def test_distillation_trains_and_puts_the_kl_term_in_the_loss(tiny_project, digits_dataset, tmp_path):
    """Off, each smaller arch adds its own cross-entropy (~ln 10 at init); on, it adds its KL divergence from
    the largest arch, whose weights it shares, so near 0 at init: the summed loss drops to about the
    largest's cross-entropy alone."""
    params = load_params(tiny_project)
    off = train_supernet(digits_dataset, tmp_path / "off", params, backbone=None, overrides={"max_steps": 4})
    on_params = set_params(tiny_project, supernet__distill=True)
    on = train_supernet(digits_dataset, tmp_path / "on", on_params, backbone=None, overrides={"max_steps": 4})
    n_terms = 2 + params["supernet"]["random_archs_per_step"]  # largest, smallest, random archs
    assert all(torch.isfinite(torch.tensor(h)).all() for h in (on.train.history, off.train.history))
    # off: n_terms cross-entropies of about the same size; on: one of them plus KL terms near 0
    assert on.train.history[0] < 0.6 * off.train.history[0]
    assert on.train.history[0] > 0.5 * off.train.history[0] / n_terms
    assert load_checkpoint(on.checkpoint)["config"]["supernet"]["distill"] is True
    assert load_weights(on.weights)[1]["supernet"]["distill"] is True
    assert on.val_top1.keys() == off.val_top1.keys()  # evaluated on the same archs
    assert not all(torch.equal(a, b) for a, b in zip(load_weights(on.weights)[0].values(),
                                                     load_weights(off.weights)[0].values(), strict=True))
