"""params.yaml under its schema (pipeline/params_schema.py): a typo, a wrong type or a missing section is one line
naming the key, exit 2, before any stage runs."""

from __future__ import annotations

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
