"""GC input discovery, image reading with geometry, and atomic mask writing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from panther_ensemble.app.gc_io import find_inputs, output_path
from panther_ensemble.core.errors import PantherError
from panther_ensemble.demo import synthetic as syn
from panther_ensemble.engine.image import check_image, image_stem, itk_output_captured, read_image, write_mask

T1 = "abdominal-t1-mri"


def socket_entry(slug: str, relative_path: str | None = None, super_kind: str = "Image") -> dict:
    return {"interface": {"slug": slug, "relative_path": relative_path or f"images/{slug}",
                          "super_kind": super_kind, "kind": "Image"}, "image": {}, "file": None, "value": None}


def one_line_error(call) -> str:
    with pytest.raises(PantherError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_inputs_json_names_the_socket_and_folder(tmp_path):
    syn.make_image(tmp_path / "somewhere" / "b.mha", (4, 8, 8), (1, 1, 2), seed=0)
    syn.make_image(tmp_path / "somewhere" / "a.nii.gz", (4, 8, 8), (1, 1, 2), seed=0)
    (tmp_path / "somewhere" / "notes.txt").write_text("not an image")
    (tmp_path / "inputs.json").write_text(json.dumps([
        socket_entry(T1, "somewhere"),
        socket_entry("clinical-information", "clinical-information.json", super_kind="File"),
    ]))
    inputs = find_inputs(tmp_path)
    assert inputs.socket == T1
    assert [p.name for p in inputs.files] == ["a.nii.gz", "b.mha"]


@pytest.mark.parametrize("keys", [("socket", "interface"), ("socket",), ("interface",)],
                         ids=["gc-today", "socket-alone", "legacy-interface-alone"])
def test_inputs_json_as_gc_writes_it(tmp_path, keys):
    """GC's serializer writes the socket under "socket" and, for older algorithms, again under "interface"."""
    syn.make_image(tmp_path / "images" / T1 / "case.mha", (4, 8, 8), (1, 1, 2), seed=0)
    (tmp_path / "inputs.json").write_text(json.dumps([syn.gc_image_value(T1, "case.mha", keys)]))
    inputs = find_inputs(tmp_path)
    assert inputs.socket == T1 and [p.name for p in inputs.files] == ["case.mha"]


def test_without_inputs_json_the_images_folder_is_used(tmp_path):
    syn.make_image(tmp_path / "images" / "abdominal-t2-mri" / "x.nrrd", (4, 8, 8), (1, 1, 2), seed=0)
    inputs = find_inputs(tmp_path)
    assert inputs.socket == "abdominal-t2-mri" and inputs.files[0].name == "x.nrrd"


@pytest.mark.parametrize("setup, expected", [
    (lambda d: None, "no input image found"),
    (lambda d: (d / "inputs.json").write_text("[{"), "inputs.json: not valid JSON"),
    (lambda d: (d / "inputs.json").write_text('{"a": 1}'), "expected a JSON list of socket values"),
    (lambda d: (d / "inputs.json").write_text('[{"interface": {}}]'), "entry 0 has no socket.slug"),
    (lambda d: (d / "inputs.json").write_text(json.dumps([socket_entry(T1)])), "no input image found"),
    (lambda d: (d / "inputs.json").write_text(json.dumps([socket_entry(T1, 5)])),
     "entry 0's socket relative_path must be a string, got 5"),
    (lambda d: (d / "inputs.json").write_text('[{"socket": {"slug": "x", "super_kind": ["Image"]}}]'),
     "entry 0's socket super_kind must be a string"),
])
def test_bad_input_folders(tmp_path, setup, expected):
    setup(tmp_path)
    assert expected in one_line_error(lambda: find_inputs(tmp_path))


def test_missing_input_folder(tmp_path):
    assert "input folder does not exist" in one_line_error(lambda: find_inputs(tmp_path / "nope"))


def test_two_input_sockets_at_once(tmp_path):
    for slug in (T1, "abdominal-t2-mri"):
        syn.make_image(tmp_path / "images" / slug / "x.mha", (4, 8, 8), (1, 1, 2), seed=0)
    assert "several input sockets at once" in one_line_error(lambda: find_inputs(tmp_path))


def test_read_image_keeps_geometry(tmp_path):
    path = syn.make_image(tmp_path / "x.mha", (5, 7, 9), (0.7, 0.8, 3.0), seed=1)
    original = sitk.ReadImage(str(path))
    image = read_image(path)
    # an integer image stays in its type (nnU-Net's preprocessing makes its own float32 copy)
    assert image.array.shape == (5, 7, 9) and image.array.dtype == sitk.GetArrayViewFromImage(original).dtype
    np.testing.assert_array_equal(image.array, sitk.GetArrayViewFromImage(original))
    assert check_image(path).bytes_per_voxel == image.array.itemsize
    assert image.spacing == original.GetSpacing() and image.direction == original.GetDirection()
    data, properties = image.nnunet_input()
    assert data.shape == (1, 5, 7, 9) and properties["spacing"] == [3.0, 0.8, 0.7]


@pytest.mark.parametrize("pixel, kept", [(sitk.sitkUInt8, np.uint8), (sitk.sitkInt32, np.int32),
                                         (sitk.sitkFloat64, np.float32), (sitk.sitkFloat32, np.float32)])
def test_pixel_types_as_held(tmp_path, pixel, kept):
    path = tmp_path / "x.mha"
    values = sitk.GetImageFromArray(np.arange(60, dtype=np.float64).reshape(3, 4, 5))
    sitk.WriteImage(sitk.Cast(values, pixel), str(path))
    image = read_image(path)
    assert image.array.dtype == kept and check_image(path).bytes_per_voxel == np.dtype(kept).itemsize
    np.testing.assert_array_equal(image.array, np.arange(60).reshape(3, 4, 5))


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_sitk(path: Path, image: sitk.Image) -> Path:
    sitk.WriteImage(image, str(path))
    return path


@pytest.mark.parametrize("make, expected", [
    (lambda d: write_sitk(d / "flat.mha", sitk.Image(8, 8, sitk.sitkInt16)), "expected a 3-D image, got 2-D"),
    (lambda d: write_sitk(d / "4d.mha", sitk.Image([4, 4, 4, 2], sitk.sitkInt16)), "expected a 3-D image, got 4-D"),
    (lambda d: write_sitk(d / "rgb.mha", sitk.Image([4, 4, 4], sitk.sitkVectorFloat32, 3)),
     "expected a scalar image, got 3 components"),
    (lambda d: write_text(d / "text.mha", "hello"), "cannot be read as an image"),
])
def test_bad_images_are_named(tmp_path, make, expected):
    path = make(tmp_path)
    message = one_line_error(lambda: read_image(path))
    assert message.startswith(str(path)) and expected in message
    assert one_line_error(lambda: check_image(path)) == message


def test_truncated_image(tmp_path, capfd):
    """ITK's MetaIO prints its own complaint (on stdout, from C++); it is the error line's reason, never lines of
    its own in GC's log."""
    path = tmp_path / "cut.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((20, 30, 30), np.int16)), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4000])
    check_image(path)  # the header alone is fine
    capfd.readouterr()
    assert one_line_error(lambda: read_image(path)) == f"{path}: image data cannot be read (MetaImage: " \
        "M_ReadElementsData: data not read completely; ideal = 36000 : actual = 32000)"
    assert capfd.readouterr() == ("", "")


def test_output_while_an_image_is_read_stays(tmp_path, capfd):
    """What another thread writes while ITK's output is caught goes out after the read, in its stream."""
    path = syn.make_image(tmp_path / "x.mha", (5, 7, 9), (0.7, 0.8, 3.0), seed=1)
    with itk_output_captured():
        print("a line meanwhile", flush=True)
        print("a warning meanwhile", file=sys.stderr, flush=True)
        read_image(path)
    assert capfd.readouterr() == ("a line meanwhile\n", "a warning meanwhile\n")


def test_write_mask_on_input_geometry(tmp_path):
    image = read_image(syn.make_image(tmp_path / "in" / "case.nii.gz", (5, 7, 9), (0.7, 0.8, 3.0), seed=1))
    target = output_path(tmp_path / "out", "pancreatic-tumor-segmentation", image.path)
    assert target == tmp_path / "out" / "images" / "pancreatic-tumor-segmentation" / "case.mha"
    mask = (image.array > 300).astype(np.uint8)
    write_mask(mask, image, target)
    written = sitk.ReadImage(str(target))
    assert written.GetPixelID() == sitk.sitkUInt8
    assert (written.GetSpacing(), written.GetOrigin(), written.GetDirection()) == \
        (image.spacing, image.origin, image.direction)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(written), mask)
    assert b"CompressedData = True" in target.read_bytes()[:2000]
    assert sorted(p.name for p in target.parent.iterdir()) == ["case.mha"]


def test_unwritable_output_leaves_nothing(tmp_path):
    image = read_image(syn.make_image(tmp_path / "case.mha", (5, 7, 9), (1, 1, 1), seed=1))
    blocker = tmp_path / "out"
    blocker.write_text("a file where the output folder should be")
    target = output_path(blocker, "pancreatic-tumor-segmentation", image.path)
    assert "cannot create the output folder" in one_line_error(
        lambda: write_mask(np.zeros(image.array.shape, np.uint8), image, target))
    assert blocker.read_text().startswith("a file")


def test_image_stem():
    assert image_stem(Path("a/b.nii.gz")) == "b" and image_stem(Path("c.d.mha")) == "c.d"


def test_nnunet_channel_suffix_is_not_in_the_mask_name(tmp_path):
    """nnU-Net's imagesTs/case_0000.nii.gz writes case.mha, which pairs with labelsTs/case.nii.gz."""
    assert output_path(tmp_path, "s", Path("x/case_0000.nii.gz")) == tmp_path / "images" / "s" / "case.mha"
    assert output_path(tmp_path, "s", Path("x/b822c9fd.mha")) == tmp_path / "images" / "s" / "b822c9fd.mha"


@pytest.mark.parametrize("names", [("case.mha", "case.nii.gz"), ("case_0000.nii.gz", "case.mha")])
def test_two_inputs_for_one_mask_are_refused(tmp_path, names):
    for name in names:
        syn.make_image(tmp_path / "images" / T1 / name, (4, 8, 8), (1, 1, 2), seed=0)
    assert "would write the same mask, case.mha" in one_line_error(lambda: find_inputs(tmp_path))


def test_a_file_given_as_the_input_folder(tmp_path):
    image = syn.make_image(tmp_path / "case.mha", (4, 8, 8), (1, 1, 2), seed=0)
    assert "is a file; the input is the folder that holds inputs.json" in one_line_error(lambda: find_inputs(image))


def test_a_flat_folder_of_images_is_nnunets_imagests(tmp_path):
    """case_0000.nii.gz and more in the input folder itself: the cases, no socket named (the spec names it); a
    second channel is refused in one line."""
    for name in ("a_0000.nii.gz", "b_0000.nii.gz"):
        syn.make_image(tmp_path / name, (4, 8, 8), (1, 1, 2), seed=0)
    inputs = find_inputs(tmp_path)
    assert inputs.socket is None and [f.name for f in inputs.files] == ["a_0000.nii.gz", "b_0000.nii.gz"]
    syn.make_image(tmp_path / "a_0001.nii.gz", (4, 8, 8), (1, 1, 2), seed=0)
    assert "a second channel of an nnU-Net case" in one_line_error(lambda: find_inputs(tmp_path))
