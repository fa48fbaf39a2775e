"""Inputs as Grand Challenge makes them: uploads (NIfTI, a DICOM series) converted by GC's own importer, panimg, into
the .mha files the container reads. The product's mask must be on panimg's image's grid, and equal to the mask of
the upload itself."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import read_mask
from panimg import convert
from panimg.image_builders import image_builder_dicom, image_builder_mhd, image_builder_nifti, image_builder_nrrd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from panther_ensemble.app.predict_run import predict_folder

SOCKET = "abdominal-t1-mri"
SPACING = (0.8, 0.8, 3.0)  # square pixels: panimg 0.18.2 swaps x and y spacing of non-square DICOM pixels
ORIGIN = (-12.5, 30.25, -80.125)


def rotation() -> np.ndarray:
    axis = np.array([0.3, -0.5, 0.8]) / np.linalg.norm([0.3, -0.5, 0.8])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(0.4) * k + (1 - np.cos(0.4)) * k @ k


def volume() -> np.ndarray:
    """An MRI-like int16 volume: a bright ellipsoid with a darker core in noise, (z, y, x)."""
    z, y, x = np.meshgrid(np.arange(14), np.arange(56), np.arange(64), indexing="ij")
    body = ((x - 32) / 26.0) ** 2 + ((y - 28) / 22.0) ** 2 + ((z - 7) / 8.0) ** 2 < 1
    core = ((x - 36) / 8.0) ** 2 + ((y - 26) / 7.0) ** 2 + ((z - 7) / 4.0) ** 2 < 1
    noise = np.random.default_rng(0).normal(0, 30, body.shape)
    return (40 + 600 * body - 250 * core + noise).clip(1, None).astype(np.int16)


def nifti(folder, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(tuple(rotation().flatten()))
    folder.mkdir(parents=True)
    sitk.WriteImage(image, str(folder / "upload.nii.gz"))
    return folder / "upload.nii.gz"


def dicom_series(folder, array, slope=None, intercept=None):
    """One file per slice, as a scanner writes an MR series (stored values, with a rescale where given)."""
    folder.mkdir(parents=True)
    direction = rotation()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, plane in enumerate(array):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName, ds.SeriesNumber, ds.InstanceNumber = "MR", "P1", "A^B", 1, k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array(ORIGIN) + k * SPACING[2] * direction[:, 2]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in [*direction[:, 0], *direction[:, 1]]]
        ds.PixelSpacing, ds.SliceThickness = [SPACING[1], SPACING[0]], SPACING[2]
        ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = *plane.shape, 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        if slope is not None:
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "US"
        ds.PixelData = plane.astype(np.int16).tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    return folder


def panimg_to_gc_input(upload, tmp_path):
    """panimg's conversion (GC's builders for these formats), its .mha placed as GC places it in /input."""
    result = convert(input_directory=upload, output_directory=tmp_path / "panimg",
                     builders=[image_builder_mhd, image_builder_nifti, image_builder_nrrd, image_builder_dicom],
                     post_processors=[])
    unconsumed = {p: e for p, e in result.file_errors.items() if p not in result.consumed_files}
    assert not unconsumed, unconsumed
    (converted,) = [f.file for f in result.new_image_files if f.file.suffix == ".mha"]
    gc = tmp_path / "input" / "images" / SOCKET
    gc.mkdir(parents=True)
    (gc / converted.name).write_bytes(converted.read_bytes())
    return tmp_path / "input", sitk.ReadImage(str(gc / converted.name))


def predict(workspace, input_dir, out):
    written = predict_folder(input_dir, out, ensemble=workspace.t1_spec, weights=workspace.weights, device="cpu",
                             budget=0)
    return read_mask(written[0])


@pytest.mark.parametrize("upload_kind", ["nifti", "dicom", "dicom_rescaled"])
def test_panimg_converted_uploads_predict_as_the_upload_itself(workspace, tmp_path, upload_kind):
    array = volume()
    if upload_kind == "nifti":
        upload = nifti(tmp_path / "upload", array).parent
        source = array
    elif upload_kind == "dicom":
        upload = dicom_series(tmp_path / "upload", array)
        source = array
    else:  # a scanner's rescale: panimg writes float32 values slope * stored + intercept
        upload = dicom_series(tmp_path / "upload", array, slope=0.5, intercept=-10.0)
        source = array * np.float32(0.5) - np.float32(10.0)
    input_dir, converted = panimg_to_gc_input(upload, tmp_path)
    values = sitk.GetArrayFromImage(converted)
    np.testing.assert_allclose(values, source, rtol=0, atol=1e-4)
    assert converted.GetPixelID() == (sitk.sitkFloat32 if upload_kind == "dicom_rescaled" else sitk.sitkInt16)
    np.testing.assert_allclose(converted.GetSpacing(), SPACING, atol=1e-5)
    np.testing.assert_allclose(converted.GetOrigin(), ORIGIN, atol=1e-4)
    np.testing.assert_allclose(converted.GetDirection(), rotation().flatten(), atol=1e-5)

    mask, written = predict(workspace, input_dir, tmp_path / "out")
    assert written.GetPixelID() == sitk.sitkUInt8 and mask.shape == values.shape
    assert written.GetSize() == converted.GetSize() and written.GetSpacing() == converted.GetSpacing()
    assert written.GetOrigin() == converted.GetOrigin() and written.GetDirection() == converted.GetDirection()
    # the upload itself, read as SimpleITK reads it, predicted the same way
    direct = tmp_path / "direct" / "images" / SOCKET
    direct.mkdir(parents=True)
    reference = sitk.GetImageFromArray(source)
    reference.CopyInformation(converted)
    sitk.WriteImage(reference, str(direct / "case.mha"))
    np.testing.assert_array_equal(mask, predict(workspace, tmp_path / "direct", tmp_path / "out-direct")[0])
    assert 0 < mask.mean() < 0.9  # the random members find tumor somewhere: the comparison means something


def test_a_4d_series_from_panimg_is_one_clear_error(workspace, tmp_path, capsys):
    """panimg turns a multi-phase DICOM series into a 4-D .mha (as written here); the product refuses it in one
    line."""
    from panther_ensemble.cli import main

    gc = tmp_path / "input" / "images" / SOCKET
    gc.mkdir(parents=True)
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(volume())] * 2), str(gc / "phases.mha"))
    assert main(["predict", "--input", str(tmp_path / "input"), "--output", str(tmp_path / "out"), "--ensemble",
                 str(workspace.t1_spec), "--weights", str(workspace.weights), "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {gc / 'phases.mha'}: expected a 3-D image, got 4-D"
