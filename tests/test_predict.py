"""`vitforge predict`: a registered (or packaged) model's labels for images of any size, preprocessed as the
package states; over the test split of a dataset version it gives the package's own test top-1."""

from __future__ import annotations

import csv

import pytest
from conftest import edge_target

import mlflow
from pipeline.cli import main
from pipeline.params import load_params
from pipeline.registry.mlflow_registry import alias, register_package
from pipeline.tracking import Tracker


@pytest.fixture(scope="module")
def learned(shipped, tmp_path_factory):
    """An edge package of the shipped model (~85 % test top-1): a model whose labels are worth checking."""
    from pipeline.export.package import build_package

    root, data, ft = shipped
    return build_package(ft.weights, data, tmp_path_factory.mktemp("predict") / "pkg", edge_target(50.0),
                         load_params(root))


def test_predict_a_registered_model_on_pngs_of_another_size(project, learned, tmp_path, capsys):
    from pipeline.data.demo import write_digits

    pkg = learned
    tracker = Tracker.from_params(load_params(project), project)
    with tracker.run("package"):
        version = register_package(pkg, "predict-digits", {"target": pkg.target})
    scans = tmp_path / "scans"
    write_digits(scans, image_size=24)  # the package takes 16 px: predict resizes as package.json states
    out_csv = tmp_path / "p.csv"
    assert main(["--root", str(project), "predict", str(scans), "--model", f"predict-digits@{version}",
                 "--top-k", "2", "--csv", str(out_csv)]) == 0
    out = capsys.readouterr().out
    assert f"model: predict-digits version {version} (16x16, 10 classes)" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 1797 and rows[0]["model"] == f"predict-digits version {version}"
    assert all(float(r["probability_1"]) >= float(r["probability_2"]) for r in rows)
    right = sum(r["label_1"] == r["truth"] for r in rows)  # truth: the class folder each scan sits in
    assert right / len(rows) > 0.6, right  # a model that learned the digits, at a size it never saw
    assert f"top-1 {right / len(rows):.4f} ({right}/1797 images with a known label)" in out

    one = next(iter(sorted((scans / "7").iterdir())))  # a single file: one line with label and probability
    assert main(["--root", str(project), "predict", str(one), "--package", str(pkg.folder)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{one}  ") and float(line.split()[2]) > 0

    # a name, version or alias the registry does not hold: one line saying which, exit 2
    for ref, says in (("predict-digits@nope", "predict-digits has no alias nope (aliases: candidate-"),
                      ("predict-digits@99", "predict-digits has no version 99"),
                      ("no-such-model@1", "no registered model 'no-such-model' (registered: ")):
        assert main(["--root", str(project), "predict", str(one), "--model", ref]) == 2, ref
        err = capsys.readouterr().err
        assert err.startswith(f"error: {ref}: ") and says in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit) as stop:  # argparse: exit 2
        main(["--root", str(project), "predict", str(one), "--top-k", "0"])
    assert stop.value.code == 2 and "--top-k: at least 1" in capsys.readouterr().err


def test_predict_over_a_test_split_reproduces_the_packages_test_top1(project, learned, digits_dataset, capsys):
    pkg = learned
    assert main(["--root", str(project), "predict", str(digits_dataset), "--split", "test", "--package",
                 str(pkg.folder), "--csv", str(project / "test.csv")]) == 0
    out = capsys.readouterr().out
    top1 = float(out.split("top-1 ")[1].split()[0])
    assert abs(top1 - pkg.parity.engine_test_top1) <= 0.005, (top1, pkg.parity.engine_test_top1)


def test_an_image_that_does_not_decode_is_one_line(project, learned, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    assert main(["--root", str(project), "predict", str(bad), "--package", str(learned.folder)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {bad}: cannot be read as an image")

    # in a folder: the first one stops it, unless --skip-invalid leaves it out and says so
    from conftest import png

    folder = tmp_path / "shots"
    for seed, name in enumerate(("a.png", "b.png")):
        png(folder / name, seed=seed)
    (folder / "c.png").write_bytes(b"not a png either")
    out_csv = tmp_path / "shots.csv"
    argv = ["--root", str(project), "predict", str(folder), "--package", str(learned.folder), "--csv", str(out_csv)]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {folder / 'c.png'}: cannot be read as an image")
    assert main([*argv, "--skip-invalid"]) == 0
    said = capsys.readouterr()
    assert said.err.startswith(f"skipped {folder / 'c.png'}: cannot be read as an image"), said.err
    assert "; 1 unreadable images skipped" in said.out
    assert [r["path"] for r in csv.DictReader(out_csv.open())] == [str(folder / "a.png"), str(folder / "b.png")]
    bad.replace(folder / "a.png")
    (folder / "b.png").write_bytes(b"")
    assert main([*argv, "--skip-invalid"]) == 2  # nothing left to predict: one line
    assert "none of the 3 images can be read" in capsys.readouterr().err


def test_predict_over_the_test_folder_reproduces_the_registered_versions_test_top1(shipped, capsys):
    """The acceptance line: a version registered by the package stage (its ``test_top1`` tag the engine's, on
    the dataset version's test split); `vitforge predict` over that folder's test split, through the registry."""
    from test_package_registry import package

    root, data, _ = shipped
    res = package(shipped, "cpu-ort-fp32")
    assert res.registered_version is not None
    mv = mlflow.MlflowClient().get_model_version(res.registered_model, res.registered_version)
    assert main(["--root", str(root), "predict", str(data), "--split", "test", "--model",
                 f"{res.registered_model}@{alias('candidate', 'cpu-ort-fp32')}", "--csv", str(root / "t.csv")]) == 0
    out = capsys.readouterr().out
    assert f"model: {res.registered_model} version {res.registered_version}" in out
    top1 = float(out.split("top-1 ")[1].split()[0])
    assert abs(top1 - float(mv.tags["test_top1"])) <= 0.005, (top1, mv.tags["test_top1"])


def test_no_model_and_no_dataset_to_name_one_is_one_line(project, tmp_path, capsys):
    """A clone that never pulled its data: nothing names the registered model, and the line says what to give."""
    from conftest import png

    img = png(tmp_path / "one.png")
    assert main(["--root", str(project), "predict", str(img)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no --model given") and "--model NAME@ALIAS" in err and len(err.splitlines()) == 1
