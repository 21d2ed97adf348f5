"""MAE from a user's timm ViT checkpoint (strict), and unlabeled images that only MAE sees."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import make_imagefolder, png, set_params
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

import mlflow
from pipeline.data import DatasetError, build_manifest, load_manifest, read_dataset
from pipeline.data.readers import read_unlabeled
from pipeline.data.tensors import load_images, load_split
from pipeline.data.versioning import read_version
from pipeline.models.supernet import SearchSpace, build_vit
from pipeline.params import load_params
from pipeline.ssl.mae import MAE, MAEConfig
from pipeline.ssl.train import CheckpointError, init_from_checkpoint, pretrain
from pipeline.stages.dataset import run_dataset
from pipeline.tracking import Tracker
from pipeline.weights import load_weights

# ---- init_checkpoint ----------------------------------------------------------------------------

SPACE = {"patch_size": 4, "img_sizes": [16], "depths": [2], "embed_dims": [32], "head_dim": 8, "stem": "patch",
         "stem_width": 8, "mlp_ratios": [2.0]}


def vit_state(num_classes: int = 0, seed: int = 1, **space_edit) -> dict[str, torch.Tensor]:
    """A random timm ViT of the largest arch of SPACE (edited), as a user's checkpoint would hold it."""
    torch.manual_seed(seed)
    space = SearchSpace.from_params({**SPACE, **space_edit}, num_classes=num_classes)
    vit = build_vit(space.largest(), space)
    with torch.no_grad():
        for t in vit.parameters():
            t.normal_()  # far from any init the MAE would make itself
    return {k: v.detach().clone() for k, v in vit.state_dict().items()}


def tiny_mae() -> MAE:
    torch.manual_seed(0)
    return MAE(SearchSpace.from_params(SPACE), MAEConfig(0.75, 16, 1, 2, True))


def assert_encoder_is(mae: MAE, state: dict[str, torch.Tensor]) -> None:
    own = mae.encoder.state_dict()
    assert set(own) == {k for k in state if not k.startswith("head.")}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k


def test_safetensors_checkpoint_initialises_every_encoder_tensor(tmp_path):
    state = vit_state()
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    mae = tiny_mae()
    init_from_checkpoint(mae, path)
    assert_encoder_is(mae, state)


def test_torch_checkpoint_wrapped_in_model_with_a_head_is_accepted(tmp_path):
    state = vit_state(num_classes=10)  # a classifier head.*: dropped, the encoder has no head
    assert "head.weight" in state
    path = tmp_path / "vit.pth"
    torch.save({"model": state, "epoch": 3}, path)
    mae = tiny_mae()
    init_from_checkpoint(mae, str(path))
    assert_encoder_is(mae, state)


def test_pretrain_starts_from_the_checkpoint(tmp_path, tiny_project, digits_dataset):
    state = vit_state()
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    # tiny_project: tiny MAE settings; its space's largest arch is SPACE's.
    params = set_params(tiny_project, **{f"space__{k}": v for k, v in SPACE.items()},
                        pretrain__init_checkpoint=str(path))
    # lr 0: two real steps that leave the weights where they started, so the saved encoder is the checkpoint.
    res = pretrain(digits_dataset, tmp_path / "pt", params, overrides={"max_steps": 2, "lr": 0.0})
    assert res.train.steps == 2
    saved, _ = load_weights(res.weights)
    assert set(saved) == set(state)
    for k, v in state.items():
        assert torch.equal(saved[k], v), k


def test_pos_embed_of_another_grid_is_resampled(tmp_path):
    state = vit_state(img_sizes=[8])  # a 2x2 grid; the encoder's is 4x4
    path = tmp_path / "vit.safetensors"
    save_file(state, str(path))
    mae = tiny_mae()
    init_from_checkpoint(mae, path)
    own = mae.encoder.state_dict()
    assert torch.allclose(own["pos_embed"], resample_abs_pos_embed(state["pos_embed"], [4, 4], [2, 2]))
    for k in state.keys() - {"pos_embed"}:
        assert torch.equal(own[k], state[k]), k


def test_shallower_checkpoint_fails_naming_missing_blocks(tmp_path):
    path = tmp_path / "shallow.safetensors"
    save_file(vit_state(depths=[1]), str(path))
    with pytest.raises(CheckpointError) as info:
        init_from_checkpoint(tiny_mae(), path)
    msg = str(info.value)
    assert "\n" not in msg and str(path) in msg
    assert "missing: blocks.1." in msg
    assert "the checkpoint is depth 1, embed_dim 32" in msg and "depth 2, embed_dim 32" in msg
    assert "set params.yaml space so that max(depths) = 1;" in msg


def test_narrower_checkpoint_fails_naming_wrong_shapes(tmp_path):
    path = tmp_path / "narrow.pth"
    torch.save(vit_state(embed_dims=[16]), path)
    with pytest.raises(CheckpointError) as info:
        init_from_checkpoint(tiny_mae(), path)
    msg = str(info.value)
    assert "wrong shape" in msg and "cls_token (1, 1, 16) vs (1, 1, 32)" in msg
    assert "the checkpoint is depth 2, embed_dim 16" in msg and "max(embed_dims) = 16;" in msg


def test_unexpected_tensor_fails(tmp_path):
    state = vit_state() | {"fc_norm.weight": torch.ones(32)}
    path = tmp_path / "extra.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match="unexpected: fc_norm.weight"):
        init_from_checkpoint(tiny_mae(), path)


def test_missing_file_and_non_state_dict(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        init_from_checkpoint(tiny_mae(), tmp_path / "nope.pth")
    path = tmp_path / "list.pt"
    torch.save([1, 2], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        init_from_checkpoint(tiny_mae(), path)


def test_hf_hub_unreachable_is_one_clear_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    # Offline for sure (the constant is read when huggingface_hub is imported), and an empty cache.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError) as info:
        init_from_checkpoint(tiny_mae(), "hf-hub:some/name")
    msg = str(info.value)
    assert msg.startswith("hf-hub:some/name: the Hugging Face Hub cannot be reached")
    assert "\n" not in msg
    assert isinstance(info.value, ValueError)  # the CLI prints it as one line with exit code 2


# ---- unlabeled images ---------------------------------------------------------------------------


def unlabeled_folder(root, n: int = 3):
    for i in range(n):
        png(root / ("nested" if i % 2 else ".") / f"u{i}.png", seed=1000 + i, size=20 + i)
    return root


def stage(project, data, unlabeled=None):
    params = load_params(project)
    return run_dataset(project, params, Tracker.from_params(params, project), data=str(data), fmt="imagefolder",
                       skip_invalid=False, unlabeled=str(unlabeled) if unlabeled else None)


def test_unlabeled_images_are_versioned_and_seen_only_by_mae(project, imagefolder, tmp_path):
    unl = unlabeled_folder(tmp_path / "unl")
    res = stage(project, imagefolder, unl)
    tracked = project / "data" / "dataset"
    assert sorted(p.relative_to(tracked).as_posix() for p in (tracked / "unlabeled").rglob("*.png")) == [
        "unlabeled/nested/u1.png", "unlabeled/u0.png", "unlabeled/u2.png"]
    assert read_version(tracked) == res.version  # one dvc add for labelled + unlabeled

    manifest = load_manifest(tracked)
    unl_entries = manifest.unlabeled_files()
    assert {f["path"] for f in unl_entries} == {"unlabeled/u0.png", "unlabeled/nested/u1.png", "unlabeled/u2.png"}
    assert all(f["split"] == "unlabeled" and f["label"] is None for f in unl_entries)
    assert res.unlabeled == 3 and res.num_images == 8 and sum(res.counts.values()) == 8
    assert not any(f["path"].startswith("unlabeled/") for s in ("train", "val", "test") for f in manifest.split(s))

    # native size: the labelled images are 16x16 (the unlabeled ones, 20-22 px, do not count)
    assert res.native_size == [16, 16] == manifest.native_size
    run = mlflow.get_run(res.mlflow_run_id)
    assert run.data.metrics["images_unlabeled"] == 3
    assert run.data.params["native_size"] == "[16, 16]"

    assert len(load_images(tracked, 8)) == 11  # MAE: labelled + unlabeled
    assert sum(len(load_split(tracked, s, 8)[0]) for s in ("train", "val", "test")) == 8
    assert len(load_split(tracked, None, 8)[0]) == 8


def test_unlabeled_images_leave_the_labelled_split_alone(imagefolder, tmp_path):
    raw = read_dataset(imagefolder)
    without = build_manifest(raw, 0.3, 0.3)
    # even unlabeled copies of labelled images (same bytes) move no labelled file
    unl = tmp_path / "unl"
    shutil.copytree(imagefolder, unl)
    with_unl = build_manifest(raw, 0.3, 0.3, read_unlabeled(unl))
    assert with_unl.labelled_files() == without.files
    assert len(with_unl.unlabeled_files()) == 8


def test_corrupt_unlabeled_file_fails_and_keeps_the_previous_version(project, imagefolder, tmp_path):
    good = stage(project, imagefolder)
    dvc_file = (project / "data" / "dataset.dvc").read_text()
    unl = unlabeled_folder(tmp_path / "unl")
    (unl / "nested" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="broken.png: not an image Pillow can decode"):
        stage(project, imagefolder, unl)
    assert (project / "data" / "dataset.dvc").read_text() == dvc_file
    assert read_version(project / "data" / "dataset") == good.version
    assert not (project / "data" / "dataset" / "unlabeled").exists()


def test_labelled_folder_named_unlabeled_clashes(tmp_path):
    data = make_imagefolder(tmp_path / "d", classes=("ants", "unlabeled"))
    with pytest.raises(DatasetError, match="'unlabeled' folder"):
        build_manifest(read_dataset(data), 0.1, 0.1, read_unlabeled(unlabeled_folder(tmp_path / "unl")))
