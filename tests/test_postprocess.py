"""Post-processing (engine.postprocess): the component steps, never-empty, nnU-Net's own postprocessing.pkl as
nnUNetv2_apply_postprocessing applies it, the spec's table and its bad input, and the run's summary saying so."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import extract_tarball, gc_input, read_mask
from hypothesis import given, settings
from hypothesis import strategies as st

from panther_ensemble.cli import main
from panther_ensemble.core.errors import PantherError
from panther_ensemble.engine.postprocess import (
    PostProcessing,
    filter_tumor,
    load_nnunet_postprocessing,
    never_empty,
    postprocess,
)
from panther_ensemble.engine.spec import load_spec

T1 = "abdominal-t1-mri"
SPACING = (3.0, 1.0, 1.0)


def blob(shape, centre, radius) -> np.ndarray:
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius ** 2


def scene():
    """A tumor inside the pancreas, a small island touching it, a larger one far away."""
    shape = (20, 60, 60)
    pancreas = blob(shape, (10, 30, 20), 9)
    tumor = blob(shape, (10, 30, 22), 4) | blob(shape, (10, 30, 31), 1.5) | blob(shape, (10, 45, 50), 5)
    labels = np.where(tumor, 2, np.where(pancreas, 1, 0)).astype(np.uint8)
    return labels, tumor


def components(mask) -> int:
    from scipy import ndimage

    return ndimage.label(mask, np.ones((3, 3, 3)))[1]


def test_each_step_alone():
    labels, tumor = scene()
    organ = labels == 1
    assert components(tumor) == 3
    largest = filter_tumor(tumor, organ, SPACING, PostProcessing(keep_largest=True))
    assert components(largest) == 1 and largest[10, 45, 50]  # the far one is the largest: it wins
    big = filter_tumor(tumor, organ, SPACING, PostProcessing(min_volume_mm3=100.0))
    assert components(big) == 2 and not big[10, 30, 31]  # the small island is gone
    near = filter_tumor(tumor, organ, SPACING, PostProcessing(organ_label=1, near_organ_mm=0.0))
    assert near[10, 30, 22] and near[10, 30, 31] and not near[10, 45, 50]  # touching or inside the pancreas kept
    assert filter_tumor(tumor, organ, SPACING, PostProcessing(organ_label=1, near_organ_mm=40.0)).sum() == tumor.sum()
    assert not filter_tumor(tumor, np.zeros_like(organ), SPACING,
                            PostProcessing(organ_label=1, near_organ_mm=5.0)).any()  # no organ: nothing near it


def test_never_empty_takes_the_region_around_the_maximum():
    probability = np.zeros((10, 20, 20), np.float32)
    probability[4:6, 5:9, 5:9] = 0.3
    probability[5, 6, 6] = 0.45
    probability[2, 15:17, 15:17] = 0.35  # another region above the floor, not around the maximum
    region = never_empty(probability, 0.25)
    assert region.sum() == 2 * 4 * 4 and region[5, 6, 6] and not region[2, 15, 15]
    assert never_empty(probability, 0.5) is None
    labels = np.zeros((10, 20, 20), np.uint8)
    tumor, note = postprocess(labels, 2, SPACING, PostProcessing(never_empty_floor=0.25), lambda: probability)
    assert tumor.sum() == 32 and "never empty" in note
    tumor, note = postprocess(labels, 2, SPACING, PostProcessing(never_empty_floor=0.6), lambda: probability)
    assert not tumor.any() and "stays empty" in note


def nnunet_pickle(path, labels_or_regions=2):
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    save_pickle(([remove_all_but_largest_component_from_segmentation], [{"labels_or_regions": labels_or_regions}]),
                str(path))
    return path


@pytest.mark.parametrize("labels_or_regions", [2, [1, 2], 1, (1, 2), [(1, 2), 2]],
                         ids=["tumor", "every-foreground-label", "the-organ", "a-region", "region-then-tumor"])
def test_nnunets_postprocessing_as_nnunet_applies_it(tmp_path, labels_or_regions):
    """Parity: nnU-Net's own load_postprocess_save (what nnUNetv2_apply_postprocessing runs per file) on a label map
    file against the product's application of the same postprocessing.pkl, for what nnU-Net's
    determine_postprocessing writes (all foreground labels as one, each label, regions)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.postprocessing.remove_connected_components import load_postprocess_save

    labels, _ = scene()
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing(tuple(reversed(SPACING)))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    pkl = nnunet_pickle(tmp_path / "postprocessing.pkl", labels_or_regions)
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    stock = load_pickle(str(pkl))  # nnU-Net's own reading, for its own run
    load_postprocess_save(str(tmp_path / "case.nii.gz"), str(tmp_path / "stock.nii.gz"), SimpleITKIO(), *stock)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "stock.nii.gz"))) == 2
    ours, note = postprocess(labels, 2, SPACING, PostProcessing(nnunet="postprocessing.pkl"), None,
                             load_nnunet_postprocessing(pkl))
    assert np.array_equal(ours, expected) and "nnU-Net" in note


def test_a_pickle_that_is_not_nnunets_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(([Payload()], [{}])))
    with pytest.raises(PantherError, match="refused: not nnU-Net's postprocessing .* could run code"):
        load_nnunet_postprocessing(tmp_path / "evil.pkl")
    assert not marker.exists()
    (tmp_path / "list.pkl").write_bytes(pickle.dumps(["not", "nnU-Net's"]))
    with pytest.raises(PantherError, match="not nnU-Net's postprocessing.pkl"):
        load_nnunet_postprocessing(tmp_path / "list.pkl")
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as largest,
    )

    for content in (([1], [{}]), ([largest], [{}]), ([largest], [{"labels_or_regions": "x"}]),
                    ([largest], [{"labels_or_regions": 2, "background_label": 1.5}]), ([largest], [])):
        (tmp_path / "odd.pkl").write_bytes(pickle.dumps(content))  # loads without running code, then fails late
        with pytest.raises(PantherError, match="expected its largest-component steps and their labels or regions"):
            load_nnunet_postprocessing(tmp_path / "odd.pkl")


def spec_with(workspace, tmp_path, table: str, weights=None):
    text = workspace.t1_spec.read_text() + "\n[postprocessing]\n" + table
    path = tmp_path / "pp.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("table, expected", [
    ("organ_label = 5\nnear_organ_mm = 0", "'organ_label' 5 in [postprocessing] is not among the members' labels"),
    ("min_volume_mm3 = -10", "'min_volume_mm3' in [postprocessing] must be a finite volume in mm³, 0 or more"),
    ("never_empty_floor = 1.5", "'never_empty_floor' in [postprocessing] must be a probability in (0, 1)"),
    ("never_empty_floor = 0", "'never_empty_floor' in [postprocessing] must be a probability in (0, 1)"),
    ("near_organ_mm = 5", "'near_organ_mm' in [postprocessing] needs 'organ_label'"),
    ("organ_label = 1", "must be the organ's label (not 0, not the tumor's 1)"),
    ("keep_largest = 1", "'keep_largest' in [postprocessing] must be true or false"),
    ("organ_label = 2\nnear_organ_mm = inf", "'near_organ_mm' in [postprocessing] must be a finite distance"),
    ("min_volume_mm3 = inf", "'min_volume_mm3' in [postprocessing] must be a finite volume"),
    ("organ_label = 2", "'organ_label' in [postprocessing] needs 'near_organ_mm'"),
    ("keep_biggest = true", "unknown key 'keep_biggest' in [postprocessing]"),
    ('nnunet = "evil.pkl"', "refused: not nnU-Net's postprocessing"),
    ('nnunet = "../x.pkl"', "must be a postprocessing.pkl's path under the weights root"),
    ('nnunet = "linked.pkl"', "linked.pkl leads outside the weights root"),
    ('nnunet = "pp.pkl"\nkeep_largest = true', "names nnU-Net's postprocessing.pkl or steps, not both"),
], ids=["organ-missing", "negative-volume", "floor-above-1", "floor-0", "distance-without-organ", "organ-is-tumor",
        "not-a-bool", "distance-infinite", "volume-infinite", "organ-without-distance", "unknown-key", "evil-pickle",
        "pickle-outside", "pickle-linked-out", "both"])
def test_bad_postprocessing_is_one_line_before_any_work(workspace, tmp_path, capsys, table, expected):
    weights = tmp_path / "weights"
    shutil.copytree(workspace.weights, weights)
    (weights / "evil.pkl").write_bytes(pickle.dumps((__import__("os").system, ("true",))))
    (weights / "linked.pkl").symlink_to(nnunet_pickle(tmp_path / "outside.pkl"))  # nnU-Net's, but outside
    input_dir = gc_input(tmp_path, T1, {"case.mha": dict(shape_zyx=(10, 30, 34), spacing_xyz=(1, 1, 3), seed=1)})
    code = main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble",
                 str(spec_with(workspace, tmp_path, table)), "--weights", str(weights), "--device", "cpu"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert "loading" not in captured.out and not (tmp_path / "out").exists()


def test_predict_with_postprocessing_says_what_it_did(workspace, tmp_path, capsys):
    """The synthetic members' labels: 1 tumor, 2 other; the summary line says what post-processing did."""
    input_dir = gc_input(tmp_path, T1, {"case.mha": dict(shape_zyx=(16, 60, 64), spacing_xyz=(1, 1, 3), seed=3)})
    plain = tmp_path / "plain"
    assert main(["predict", "--input", str(input_dir), "--output", str(plain), "--ensemble", str(workspace.t1_spec),
                 "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0"]) == 0
    spec = spec_with(workspace, tmp_path, "keep_largest = true\nnever_empty_floor = 0.2\n")
    assert str(load_spec(spec).postprocessing) == "largest component, never empty (floor 0.2)"
    assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "pp"), "--ensemble", str(spec),
                 "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0"]) == 0
    out = capsys.readouterr().out
    before = read_mask(next(plain.rglob("case.mha")))[0].astype(bool)
    after = read_mask(next((tmp_path / "pp").rglob("case.mha")))[0].astype(bool)
    assert components(before) > 1  # random weights: islands to remove
    assert components(after) == 1 and not (after & ~before).any()  # the largest one, nothing added
    assert "post-processing: " in out and "tumor voxels removed" in out


def test_the_member_table_has_a_row_for_the_ensemble_with_its_postprocessing(workspace, tmp_path):
    from panther_ensemble.demo import synthetic as syn
    from panther_ensemble.tools.member_table import POSTPROCESSED, compare_members

    for name in ("images", "labels"):
        syn.make_image(tmp_path / name / "case.mha", (16, 60, 64), (1, 1, 3), seed=3)
    spec = load_spec(spec_with(workspace, tmp_path, "keep_largest = true\n"))
    table = compare_members(spec, workspace.weights, tmp_path / "images", tmp_path / "labels",
                            __import__("torch").device("cpu"))
    assert list(table)[-2:] == ["ensemble", POSTPROCESSED]
    from panther_ensemble.tools.evaluate import tumor_metrics

    input_dir = tmp_path / "input" / "images" / T1
    input_dir.mkdir(parents=True)
    shutil.copy(tmp_path / "images" / "case.mha", input_dir / "case.mha")
    assert main(["predict", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "out"), "--ensemble",
                 str(spec.path), "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0"]) == 0
    truth, image = read_mask(tmp_path / "labels" / "case.mha")
    predicted = read_mask(next((tmp_path / "out").rglob("case.mha")))[0].astype(bool)
    expected = tumor_metrics(predicted, truth == spec.tumor_label, tuple(reversed(image.GetSpacing())))
    assert table[POSTPROCESSED]["per_subject"]["case"] == pytest.approx(expected)
    assert table[POSTPROCESSED]["per_subject"]["case"] != table["ensemble"]["per_subject"]["case"]


@pytest.mark.parametrize("shape", [(10, 40, 40), (40, 120, 120)])
def test_minimum_volume_counts_every_component_as_a_plain_count_does(shape):
    """Component sizes are counted per component's box, or in one pass over a speckled map (over 4096 of them):
    both against scipy's label and a bincount over the grid."""
    from scipy import ndimage

    rng = np.random.default_rng(1)
    tumor = rng.uniform(size=shape) < 0.012
    tumor[2:6, 5:9, 5:9] = True
    labelled, count = ndimage.label(tumor, np.ones((3, 3, 3)))
    sizes = np.bincount(labelled.ravel())
    expected = np.isin(labelled, np.flatnonzero(sizes >= 3)[1:])
    kept = filter_tumor(tumor, None, (1.0, 1.0, 1.0), PostProcessing(min_volume_mm3=3.0))
    assert (count > 4096) == (shape[0] == 40) and np.array_equal(kept, expected) and kept[3, 6, 6]


@pytest.mark.parametrize("seed", range(4))
def test_keep_largest_is_nnunets_largest_component(seed):
    """keep_largest against nnU-Net's own remove_all_but_largest_component_from_segmentation on the tumor label,
    random label maps with many components (ties included where they happen)."""
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation,
    )

    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=(12, 30, 30)) < 0.04).astype(np.uint8) * 2  # many small islands of tumor
    labels[(rng.uniform(size=labels.shape) < 0.1) & (labels == 0)] = 1
    labels[3:6, 5:9, 5:9] = 2  # one clear largest, on some seeds
    stock = remove_all_but_largest_component_from_segmentation(labels.copy(), labels_or_regions=2) == 2
    ours, _ = postprocess(labels, 2, SPACING, PostProcessing(keep_largest=True), None)
    assert components(labels == 2) > 5 and np.array_equal(ours, stock)


def test_nnunets_postprocessing_in_predict_equals_stock_nnunet(workspace, tmp_path):
    """The whole path: stock nnU-Net's predictors (the reference), their label map through nnU-Net's own
    apply_postprocessing, against predict --mode exact with the same postprocessing.pkl named in the spec."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing

    from panther_ensemble.tools.reference import stock_ensemble_labels

    weights = tmp_path / "weights"
    shutil.copytree(workspace.weights, weights)
    (weights / "weights.sha256").unlink(missing_ok=True)
    spec = load_spec(workspace.t1_spec)
    relative = f"{spec.members[0].model}/crossval_results_folds_0/postprocessing.pkl"
    (weights / relative).parent.mkdir(parents=True)
    pkl = nnunet_pickle(weights / relative, labels_or_regions=spec.tumor_label)
    spec_file = tmp_path / "nnunet-pp.toml"
    spec_file.write_text(workspace.t1_spec.read_text() + f'\n[postprocessing]\nnnunet = "{relative}"\n')
    input_dir = gc_input(tmp_path, T1, {"case.mha": dict(shape_zyx=(16, 60, 64), spacing_xyz=(1, 1, 3), seed=3)})
    image_file = input_dir / "images" / T1 / "case.mha"
    labels = stock_ensemble_labels(image_file, weights, spec)
    expected = apply_postprocessing(labels, *load_pickle(str(pkl))) == spec.tumor_label
    assert components(labels == spec.tumor_label) > 1 and components(expected) == 1  # it had work to do
    assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble",
                 str(spec_file), "--weights", str(weights), "--device", "cpu", "--budget", "0", "--mode",
                 "exact"]) == 0
    ours = read_mask(next((tmp_path / "out").rglob("case.mha")))[0].astype(bool)
    assert np.array_equal(ours, expected)


def test_never_empty_in_predict_writes_the_region_and_says_so(workspace, tmp_path, capsys):
    """A constant image: the random members find no tumor; with never_empty the region around the maximum tumor
    probability is written and the summary line says so, without it the mask is empty."""
    folder = tmp_path / "input" / "images" / T1
    folder.mkdir(parents=True)
    image = sitk.GetImageFromArray(np.zeros((8, 24, 28), np.float32))
    image.SetSpacing((1.0, 1.0, 3.0))
    sitk.WriteImage(image, str(folder / "case.mha"))
    spec = spec_with(workspace, tmp_path, "never_empty_floor = 0.01\n")
    for name, spec_file in (("plain", workspace.t1_spec), ("never-empty", spec)):
        assert main(["predict", "--input", str(tmp_path / "input"), "--output", str(tmp_path / name), "--ensemble",
                     str(spec_file), "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0"]) == 0
    summaries = [line for line in capsys.readouterr().out.splitlines() if line.startswith("summary")]
    assert not read_mask(next((tmp_path / "plain").rglob("case.mha")))[0].any() and "EMPTY" in summaries[0]
    assert read_mask(next((tmp_path / "never-empty").rglob("case.mha")))[0].any()
    assert "never empty: the region around the maximum tumor probability" in summaries[1], summaries[1]
    assert "EMPTY" not in summaries[1]


def test_nnunets_postprocessing_travels_in_the_model_tarball(workspace, tmp_path):
    """export-model stages the postprocessing.pkl the spec names (and the manifest lists it): the tarball predicts
    as the weights root it came from."""

    weights = tmp_path / "weights"
    shutil.copytree(workspace.weights, weights)
    (weights / "weights.sha256").unlink(missing_ok=True)
    relative = f"{load_spec(workspace.t1_spec).members[0].model}/crossval_results_folds_0/postprocessing.pkl"
    (weights / relative).parent.mkdir(parents=True)
    nnunet_pickle(weights / relative, labels_or_regions=1)
    spec_file = tmp_path / "task1.toml"
    spec_file.write_text(workspace.t1_spec.read_text() + f'\n[postprocessing]\nnnunet = "{relative}"\n')
    tarball = tmp_path / "model.tar.gz"
    assert main(["export-model", "--ensemble", str(spec_file), "--weights", str(weights), "--out", str(tarball)]) == 0
    extract_tarball(tarball, tmp_path / "model")
    assert (tmp_path / "model" / relative).is_file() and relative in (tmp_path / "model" / "weights.sha256").read_text()
    input_dir = gc_input(tmp_path, T1, {"case.mha": dict(shape_zyx=(16, 60, 64), spacing_xyz=(1, 1, 3), seed=3)})
    for name, spec, root in (("here", spec_file, weights), ("tarball", tmp_path / "model" / "task1.toml",
                                                            tmp_path / "model")):
        assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / name), "--ensemble", str(spec),
                     "--weights", str(root), "--device", "cpu", "--budget", "0"]) == 0
    masks = [read_mask(next((tmp_path / name).rglob("case.mha")))[0] for name in ("here", "tarball")]
    assert np.array_equal(*masks) and components(masks[0]) == 1


def test_within_n_mm_is_measured_between_voxels_on_the_right_axes():
    """At 3 x 1 x 1 mm (z, y, x): a component 2 empty voxels from the organ in-plane is 3 mm away centre to centre,
    one a slice above it touches it, one two slices above is 6 mm away; the spacing's order decides."""
    shape = (9, 20, 30)
    organ = np.zeros(shape, bool)
    organ[4, 5:15, 5:10] = True
    in_plane = np.zeros(shape, bool)
    in_plane[4, 8:11, 12:14] = True  # x 12-13, the organ ends at x 9: 2 empty voxels between, 3 mm
    above = np.zeros(shape, bool)
    above[5, 8:11, 6:8] = True  # the next slice: a 26-neighbour
    higher = np.zeros(shape, bool)
    higher[6, 8:11, 6:8] = True  # one empty slice between: 6 mm at 3 mm slices
    for component, distance in ((in_plane, 3.0), (above, 0.0), (higher, 6.0)):
        assert kept_at(component, organ, distance, SPACING), distance
        assert distance == 0 or not kept_at(component, organ, distance - 0.1, SPACING), distance
    assert kept_at(higher, organ, 2.0, (1.0, 1.0, 3.0)) and not kept_at(higher, organ, 2.0, SPACING)  # axes matter


def kept_at(component, organ, near: float, spacing) -> bool:
    return bool(filter_tumor(component, organ, spacing, PostProcessing(organ_label=1, near_organ_mm=near)).any())


def test_never_empty_with_the_organ_step_looks_near_the_organ_first():
    """A far distractor removed by the organ step must not come back as never-empty's region while something near
    the organ reaches the floor; where nothing near it does, the maximum anywhere."""
    shape = (10, 40, 40)
    labels = np.zeros(shape, np.uint8)
    labels[4:7, 5:15, 5:15] = 1  # the organ
    labels[4:7, 30:36, 30:36] = 2  # a tumor far from it: removed by the organ step
    probability = np.zeros(shape, np.float32)
    probability[4:7, 30:36, 30:36] = 0.9
    probability[5, 8:11, 8:11] = 0.3  # faint, in the organ
    pp = PostProcessing(organ_label=1, near_organ_mm=5.0, never_empty_floor=0.2)
    tumor, note = postprocess(labels, 2, SPACING, pp, lambda: probability)
    assert tumor[5, 9, 9] and not tumor[5, 33, 33] and tumor.sum() == 9 and "never empty" in note
    probability[5, 8:11, 8:11] = 0.1  # below the floor: the maximum anywhere
    tumor, _ = postprocess(labels, 2, SPACING, pp, lambda: probability)
    assert tumor[5, 33, 33]


def test_a_mask_that_post_processing_empties_is_said_so(workspace, tmp_path, capsys):
    input_dir = gc_input(tmp_path, T1, {"case.mha": dict(shape_zyx=(16, 60, 64), spacing_xyz=(1, 1, 3), seed=3)})
    spec = spec_with(workspace, tmp_path, "min_volume_mm3 = 1e9\n")
    assert main(["predict", "--input", str(input_dir), "--output", str(tmp_path / "out"), "--ensemble", str(spec),
                 "--weights", str(workspace.weights), "--device", "cpu", "--budget", "0"]) == 0
    summary = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("summary"))
    assert "tumor voxels removed; the mask is EMPTY: post-processing removed every tumor voxel" in summary, summary


def test_the_organ_is_its_largest_component():
    """A false organ island around a distractor does not make the distractor 'near the organ'."""
    shape = (10, 40, 60)
    labels = np.zeros(shape, np.uint8)
    labels[3:8, 5:20, 5:25] = 1  # the pancreas
    labels[4:7, 5:10, 10:15] = 2  # the tumor in it
    labels[4:7, 25:35, 40:50] = 1  # a small false pancreas rim far away ...
    labels[5, 28:32, 43:47] = 2  # ... around a distractor
    tumor, _ = postprocess(labels, 2, SPACING, PostProcessing(organ_label=1, near_organ_mm=0.0), None)
    assert tumor[5, 7, 12] and not tumor[5, 30, 45]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), slab_voxels=st.sampled_from([1, 40, 300, 2 ** 23]),
       spacing=st.sampled_from([(3.0, 1.0, 1.0), (1.0, 0.7, 0.7), (0.5, 2.0, 1.0)]),
       distance=st.floats(0.1, 8.0))
def test_the_distance_in_slabs_is_the_whole_box_distance(seed, slab_voxels, spacing, distance):
    """The organ step's distance transform runs in slabs along z (a component as large as the grid would need 20
    bytes per voxel at once): its answer is the one distance transform of the whole box's, slab sizes down to one
    row, components and organs anywhere."""
    from scipy import ndimage

    from panther_ensemble.engine import postprocess as module

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(3, 14, 3))
    organ, component = rng.random(shape) < 0.03, rng.random(shape) < 0.05
    component &= ~organ
    if not organ.any() or not component.any():
        return
    whole = float(ndimage.distance_transform_edt(~organ, sampling=spacing)[component].min()) <= distance
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "EDT_VOXELS", slab_voxels)
        assert module._within_distance(component, organ, spacing, distance) == whole
