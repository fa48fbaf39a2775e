"""Spec parsing and validation: every problem is one line naming the file and the key or member."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from panther_ensemble.app.locations import find_spec, resolve_weights_root
from panther_ensemble.core.errors import PantherError
from panther_ensemble.demo.synthetic import ALL_ROUNDER, BOUNDARY
from panther_ensemble.engine.spec import check_against_weights, load_spec

GOOD = f"""\
input_socket = "abdominal-t1-mri"
output_socket = "pancreatic-tumor-segmentation"
tumor_label = 1

[[member]]
model = "{ALL_ROUNDER.model}"
fold = 0
checkpoint = "checkpoint_best.pth"

[[member]]
model = "{BOUNDARY.model}"
fold = 0
checkpoint = "checkpoint_final.pth"
weight = 2.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


def error_of(call) -> str:
    with pytest.raises(PantherError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_good_spec_parses(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.input_socket == "abdominal-t1-mri" and spec.tumor_label == 1
    assert [m.weight for m in spec.members] == [1.0, 2.5]
    assert spec.members[1].checkpoint_path(Path("/w")) == Path(f"/w/{BOUNDARY.model}/fold_0/checkpoint_final.pth")


@pytest.mark.parametrize("text, expected", [
    (GOOD.replace("tumor_label", "tumour_label"),
     "unknown key 'tumour_label' in the top level (did you mean 'tumor_label'"),
    (GOOD.replace("weight = 2.5", "wieght = 2.5"), "unknown key 'wieght' in [[member]] 2 (did you mean 'weight'"),
    (GOOD + "\nbudget_seconds = 3\n", "unknown key 'budget_seconds'"),
    (GOOD.replace('checkpoint = "checkpoint_best.pth"\n', ""), "missing required key 'checkpoint' in [[member]] 1"),
    (GOOD.replace('input_socket = "abdominal-t1-mri"\n', ""), "missing required key 'input_socket'"),
    (GOOD.replace("tumor_label = 1", 'tumor_label = "1"'), "'tumor_label' in the top level must be an integer"),
    (GOOD.replace("tumor_label = 1", "tumor_label = true"), "'tumor_label' in the top level must be an integer"),
    (GOOD.replace("fold = 0", "fold = 0.5", 1), "'fold' in [[member]] 1 must be an integer or \"all\""),
    (GOOD.replace("fold = 0", "fold = -1", 1), "'fold' in [[member]] 1 must not be negative"),
    (GOOD.replace("weight = 2.5", "weight = 0"), "'weight' in [[member]] 2 must be a finite number above 0, got 0"),
    (GOOD.replace("weight = 2.5", "weight = inf"), "'weight' in [[member]] 2 must be a finite number above 0, got inf"),
    (GOOD.replace("weight = 2.5", "weight = nan"), "'weight' in [[member]] 2 must be a finite number above 0, got nan"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\nbudget_seconds = nan"),
     "'budget_seconds' must be a finite number above 0, got nan"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\nbudget_seconds = -inf"),
     "'budget_seconds' must be a finite number above 0, got -inf"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\nbudget_seconds = 0"),
     "'budget_seconds' must be a finite number above 0, got 0"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\ntime_limit_seconds = inf"),
     "'time_limit_seconds' must be a finite number above 0, got inf"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\ntime_limit_seconds = 100\nbudget_seconds = 200"),
     "'budget_seconds' (200) is past 'time_limit_seconds' (100)"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\n[postprocessing]\nmin_volume_mm3 = nan"),
     "'min_volume_mm3' in [postprocessing] must be a finite volume"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\n[postprocessing]\norgan_label = 2\nnear_organ_mm = inf"),
     "'near_organ_mm' in [postprocessing] must be a finite distance"),
    (GOOD.replace("tumor_label = 1", "tumor_label = 1\n[postprocessing]\nnever_empty_floor = nan"),
     "'never_empty_floor' in [postprocessing] must be a probability in (0, 1)"),
    (GOOD.replace(f'model = "{ALL_ROUNDER.model}"', 'model = "../x"'), "must be a relative path"),
    (GOOD.split("[[member]]")[0], "needs at least one [[member]]"),
    ("input_socket = ", "not a valid TOML ensemble spec"),
])
def test_bad_spec_content_is_one_clear_line(tmp_path, text, expected):
    path = write(tmp_path, text)
    message = error_of(lambda: load_spec(path))
    assert message.startswith(str(path)) and expected in message


def test_missing_spec_file(tmp_path):
    assert "ensemble spec does not exist" in error_of(lambda: load_spec(tmp_path / "nope.toml"))


@pytest.fixture()
def weights(workspace, tmp_path) -> Path:
    """A private copy of the session's weights that a test may break."""
    root = tmp_path / "weights"
    for config in (ALL_ROUNDER, BOUNDARY):
        shutil.copytree(workspace.weights / config.model, root / config.model)
    return root


def test_spec_matches_weights(tmp_path, weights):
    check_against_weights(load_spec(write(tmp_path, GOOD)), weights)


@pytest.mark.parametrize("break_weights, expected", [
    (lambda w: shutil.rmtree(w / BOUNDARY.model), f"model folder '{BOUNDARY.model}' not found"),
    (lambda w: shutil.rmtree(w / ALL_ROUNDER.model / "fold_0"), "fold 0 of"),
    (lambda w: (w / BOUNDARY.model / "fold_0" / "checkpoint_final.pth").unlink(),
     "checkpoint 'checkpoint_final.pth' not found"),
    (lambda w: (w / ALL_ROUNDER.model / "plans.json").unlink(), "plans.json: missing"),
    (lambda w: (w / ALL_ROUNDER.model / "dataset.json").write_text("{oops"), "dataset.json: not valid JSON"),
])
def test_spec_against_broken_weights(tmp_path, weights, break_weights, expected):
    break_weights(weights)
    spec = load_spec(write(tmp_path, GOOD))
    assert expected in error_of(lambda: check_against_weights(spec, weights))


def edit_dataset_json(weights: Path, model: str, change) -> None:
    path = weights / model / "dataset.json"
    dataset = json.loads(path.read_text())
    change(dataset)
    path.write_text(json.dumps(dataset))


def test_members_with_different_label_maps(tmp_path, weights):
    edit_dataset_json(weights, BOUNDARY.model, lambda d: d["labels"].update({"tumor": 2, "pancreas": 1}))
    message = error_of(lambda: check_against_weights(load_spec(write(tmp_path, GOOD)), weights))
    assert "members have different label maps" in message and BOUNDARY.model in message


def test_tumor_label_not_among_labels(tmp_path, weights):
    spec = load_spec(write(tmp_path, GOOD.replace("tumor_label = 1", "tumor_label = 7")))
    assert "tumor_label 7 is not among the labels" in error_of(lambda: check_against_weights(spec, weights))


def test_region_based_labels_are_refused(tmp_path, weights):
    def to_regions(dataset):
        dataset["labels"] = {"background": 0, "whole": [1, 2], "tumor": 1}
        dataset["regions_class_order"] = [2, 1]

    edit_dataset_json(weights, ALL_ROUNDER.model, to_regions)
    message = error_of(lambda: check_against_weights(load_spec(write(tmp_path, GOOD)), weights))
    assert "region-based labels" in message and "not supported" in message


def test_find_spec_by_socket(tmp_path):
    (tmp_path / "a.toml").write_text(GOOD)
    (tmp_path / "b.toml").write_text(GOOD.replace("abdominal-t1-mri", "abdominal-t2-mri"))
    assert find_spec("abdominal-t2-mri", [tmp_path / "missing", tmp_path]).path.name == "b.toml"
    message = error_of(lambda: find_spec("abdominal-ct", [tmp_path]))
    assert "no ensemble spec for input socket 'abdominal-ct'" in message and "a.toml (abdominal-t1-mri)" in message


def test_weights_root_resolution(tmp_path, weights, monkeypatch, capsys):
    import panther_ensemble.app.locations as locations

    spec = load_spec(write(tmp_path, GOOD))
    gc_model, app = tmp_path / "opt_ml_model", tmp_path / "app"
    monkeypatch.setenv("PANTHER_MODEL_DIR", str(gc_model))  # GC's /opt/ml/model, without root
    monkeypatch.setattr(locations, "APP_DIR", app)
    assert resolve_weights_root(spec, weights) == weights  # --weights wins
    assert capsys.readouterr().out == f"weights {weights} (--weights)\n"
    with pytest.raises(PantherError, match=r"app/weights: weights folder does not exist \(no model tarball at "
                                           r".*opt_ml_model holds the members, and the app's own weights folder\)"):
        resolve_weights_root(spec, None)  # nothing anywhere: said so, not blamed on the spec
    (app / "weights").mkdir(parents=True)
    with pytest.raises(PantherError, match="app/weights: weights folder is empty"):
        resolve_weights_root(spec, None)  # the weightless image without a model tarball
    (app / "weights").rmdir()
    shutil.copytree(weights, app / "weights")
    capsys.readouterr()
    assert resolve_weights_root(spec, None) == app / "weights"
    assert f"(the app's own; {gc_model} does not hold every member)" in capsys.readouterr().out
    shutil.copytree(weights, gc_model)
    assert resolve_weights_root(spec, None) == gc_model  # GC's model tarball holds the members
    assert f"weights {gc_model} ({gc_model} ($PANTHER_MODEL_DIR) holds every member)" in capsys.readouterr().out
    (app / "ensemble").mkdir()
    (app / "ensemble" / "task1.toml").write_text(GOOD)
    assert find_spec("abdominal-t1-mri", locations.spec_dirs()).path == app / "ensemble" / "task1.toml"
    assert f"(the app's own; {gc_model} ($PANTHER_MODEL_DIR) has none for 'abdominal-t1-mri')" in \
        capsys.readouterr().out
    (gc_model / "mine.toml").write_text(GOOD)
    assert find_spec("abdominal-t1-mri", locations.spec_dirs()).path == gc_model / "mine.toml"
    assert f"(from {gc_model} ($PANTHER_MODEL_DIR))" in capsys.readouterr().out
    monkeypatch.delenv("PANTHER_MODEL_DIR")
    assert locations.model_dir() == Path("/opt/ml/model")  # GC's, where nothing names another


def test_two_specs_for_one_socket_in_one_folder_are_an_error(tmp_path):
    """A participant's mytask1.toml beside the demo's task1.toml: named, not a silent choice; a spec in an earlier
    folder (GC's model tarball) still wins over the app's."""
    text = 'input_socket = "abdominal-t1-mri"\noutput_socket = "o"\ntumor_label = 1\n[[member]]\nmodel = "m"\n' \
           'fold = 0\ncheckpoint = "c.pth"\n'
    app, model = tmp_path / "app", tmp_path / "model"
    for folder in (app, model):
        folder.mkdir()
    (app / "task1.toml").write_text(text)
    (app / "mytask1.toml").write_text(text)
    message = error_of(lambda: find_spec("abdominal-t1-mri", [app]))
    assert "two ensemble specs for input socket 'abdominal-t1-mri': mytask1.toml and task1.toml" in message
    (model / "mine.toml").write_text(text)
    assert find_spec("abdominal-t1-mri", [model, tmp_path / "elsewhere"]).path.name == "mine.toml"


def test_a_tumor_label_named_like_an_organ_is_refused_unless_meant(tmp_path, weights):
    """The members' dataset.json names tumor 1 and pancreas 2: a spec asking for label 2 would write the pancreas as
    the tumor; refused in one line with the label to use, unless tumor_label_name says the spec means it."""
    wrong = load_spec(write(tmp_path, GOOD.replace("tumor_label = 1", "tumor_label = 2")))
    message = error_of(lambda: check_against_weights(wrong, weights))
    assert message.startswith(f"{wrong.path}: tumor_label 2 is 'pancreas' in ") and \
        "not a tumor ('tumor' is 1: tumor_label = 1?)" in message and 'tumor_label_name = "pancreas"' in message
    meant = write(tmp_path, GOOD.replace("tumor_label = 1", 'tumor_label = 2\ntumor_label_name = "pancreas"'))
    check_against_weights(load_spec(meant), weights)
    other = write(tmp_path, GOOD.replace("tumor_label = 1", 'tumor_label = 2\ntumor_label_name = "liver"'))
    assert "tumor_label 2 is 'pancreas' in" in error_of(lambda: check_against_weights(load_spec(other), weights))
