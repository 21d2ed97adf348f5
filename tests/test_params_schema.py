"""params.yaml under its schema (pipeline/params_schema.py): a typo, a wrong type or a missing section is one line
naming the key, exit 2, before any stage runs."""

from __future__ import annotations

import json

import pytest
import yaml

from pipeline.cli import main


@pytest.mark.parametrize(("edit", "message"), [
    (lambda p: p["pretrain"].update(epoch=p["pretrain"].pop("epochs")),
     "pretrain.epoch: unknown key (did you mean pretrain.epochs?)"),
    (lambda p: p["pretrain"].update(epochs="ten"), "pretrain.epochs: expected a whole number, got 'ten'"),
    (lambda p: p["finetune"].update(lr="fast"), "finetune.lr: expected a number, got 'fast'"),
    (lambda p: p["export"].update(optimize="yes"), "export.optimize: expected true or false, got 'yes'"),
    (lambda p: p.update(pretrian=p.pop("pretrain")), "pretrian: unknown key (did you mean pretrain?)"),
    (lambda p: p.pop("supernet"), "supernet: missing section"),
    (lambda p: p.update(extra={"a": 1}), "extra: unknown key"),
])
def test_a_params_typo_is_one_line_naming_the_key_and_exit_2(project, capsys, edit, message):
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["--root", str(project), "stage", "pretrain"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: {message}"), err
    assert len(err.strip().splitlines()) == 1


def test_numbers_where_floats_are_expected_and_auto_or_lists_pass(project, capsys):
    from pipeline.params import write_params

    params = write_params(project, {"finetune.lr": 1, "space.patch_size": 4, "space.img_sizes": [8, 16]})
    assert params["finetune"]["lr"] == 1  # validated, not rewritten: the params hash is the file's
    assert main(["--root", str(project), "targets", "list"]) == 0


def test_yaml_that_does_not_parse_is_one_line(project, capsys):
    (project / "params.yaml").write_text("pretrain:\n  epochs: [1,\n")
    assert main(["--root", str(project), "targets", "list"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {project / 'params.yaml'}: not valid YAML")


def test_set_overrides_a_stage_validated_and_recorded(project, imagefolder, capsys):
    import os

    import mlflow
    from pipeline.params import ENV_SET, load_params
    from pipeline.tracking import Tracker

    assert main(["--root", str(project), "stage", "dataset", "--data", str(imagefolder),
                 "--set", "dataset.val_fraction=0.25", "--set", "dataset.min_val_images=0"]) == 0
    out = capsys.readouterr().out
    assert ENV_SET not in os.environ  # for that command only
    assert load_params(project)["dataset"]["val_fraction"] == 0.1  # params.yaml itself is untouched
    run_id = out.split("MLflow run ")[1].split()[0]
    mlflow.set_tracking_uri(Tracker.from_params(load_params(project), project).tracking_uri)
    run = mlflow.get_run(run_id)
    assert run.data.params["val_fraction"] == "0.25"
    assert json.loads(run.data.tags["vitforge.params_set"]) == {"dataset.min_val_images": 0,
                                                                "dataset.val_fraction": 0.25}


@pytest.mark.parametrize(("item", "message"), [
    ("pretrain.epoch=3", "unknown key (did you mean pretrain.epochs?)"),
    ("pretrain.epochs=ten", "pretrain.epochs: expected a whole number, got 'ten'"),
    ("epochs", "--set 'epochs': expected SECTION.KEY=VALUE"),
])
def test_a_bad_set_is_one_line_and_exit_2(project, capsys, item, message):
    assert main(["--root", str(project), "stage", "pretrain", "--set", item]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("value", [7, "", ["a"]])
def test_a_model_name_that_is_no_name_is_one_line(project, tmp_path, value):
    from pipeline.errors import ParamsError
    from pipeline.params import load_params
    from pipeline.stages.common import model_name

    params = load_params(project)
    params = {**params, "registry": {**params["registry"], "model_name": value}}
    with pytest.raises(ParamsError, match=r"registry.model_name: expected a name \(a string\) or null"):
        model_name(project, params)
    assert model_name(project, {**params, "registry": {**params["registry"], "model_name": "mine"}}) == "mine"
