"""``output_format: [nifti, dicom_seg]``: a DICOM SEG whose frames rebuild the NIfTI mask exactly, referencing the
source series, with no patient identifier of the source in its bytes."""

from __future__ import annotations

import copy
import importlib.util

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.predict import predict
from medeff.engine.train import train
from medeff.errors import ConfigError, InputError, OutputWriteError
from medeff.io.base import ImageData

HAVE_HIGHDICOM = importlib.util.find_spec("highdicom") is not None
IDENTITY = {"PatientName": "Quixote^Dorotea^Maria", "PatientID": "MRN-55501234", "PatientBirthDate": "19480229",
            "AccessionNumber": "ACC-77120033", "InstitutionName": "Hospital Sant Quirze"}
SEG = ["experiment=organ_seg_3d", "data.patch_size=[16,16,16]", "data.batch_size=1",
       "data.preprocessing.spacing=[10.0,12.0,12.0]", "augmentation.crop.num_samples=2",
       "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def seg_ckpt(organ_index, tmp_path_factory) -> str:
    run_dir = tmp_path_factory.mktemp("seg_run")
    cfg = compose("train", SEG + [f"data.index={organ_index}", "logger=none", "callbacks.lr_monitor=null"]
                  + fast_overrides(run_dir))
    return train(cfg)["last_checkpoint"]


@pytest.fixture(scope="module")
def dicom_series(tmp_path_factory):
    """A phantom CT written as DICOM with identifying values, slices stored from head to feet (the reader sorts
    them the other way, so frame order and mask order differ)."""
    from medeff.demo.dicom_writer import write_ct_series
    from medeff.demo.phantom import make_phantom_ct

    ct, _ = make_phantom_ct((36, 30, 14), (8.0, 8.0, 10.0), seed=2)
    flipped = ImageData(ct.array[:, :, ::-1].copy(), ct.spacing,
                        tuple(np.asarray(ct.origin) + np.asarray(ct.direction)[:, 2] * ct.spacing[2] * 13),
                        np.asarray(ct.direction) @ np.diag([1.0, 1.0, -1.0]))
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_ct_series(flipped, folder, identity=IDENTITY)
    return folder


def rebuild_labels(seg_path, shape, affine_ras) -> np.ndarray:
    """Label volume on the NIfTI grid from the SEG frames, their segment numbers and plane positions (pydicom)."""
    ds = pydicom.dcmread(seg_path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    dr, dc = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    to_index = np.linalg.inv(np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ras)
    r, c = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    out = np.zeros(shape, dtype=np.int16)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        lps = ipp[:, None, None] + iop[3:, None, None] * dr * r + iop[:3, None, None] * dc * c
        idx = np.einsum("ab,bij->aij", to_index[:3, :3], lps) + to_index[:3, 3, None, None]
        idx = np.round(idx).astype(int)
        on = frames[f] > 0
        target = out[idx[0][on], idx[1][on], idx[2][on]]
        assert np.all((target == 0) | (target == number)), "two segments claim one voxel"
        out[idx[0][on], idx[1][on], idx[2][on]] = number
    return out


class Echo(torch.nn.Module):
    """Label 1 where the windowed intensity is bright (HU > 100), 2 where it is dark (HU < -140), else 0."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), (x - 0.65) * 10, (0.05 - x) * 10], dim=1)


def test_seg_rebuilds_the_nifti_mask_and_holds_no_identifier(seg_ckpt, dicom_series, tmp_path, monkeypatch):
    import medeff.engine.predict as P

    real_load = P.load_model

    def fake_load(path, *, device, expect=None):
        net, meta = real_load(path, device=device, expect=expect)
        return Echo(), dict(meta, label_names=["background", "bright", "dark"])

    monkeypatch.setattr(P, "load_model", fake_load)
    out = tmp_path / "out"
    cfg = {"ckpt": seg_ckpt, "input": str(dicom_series), "output_dir": str(out), "device": "cpu",
           "output_format": ["nifti", "dicom_seg"], "dicom_seg": {"pseudonym_salt": "s3cret"}}
    if not HAVE_HIGHDICOM:  # without the extra, the option must say how to get it, before any inference
        with pytest.raises(ConfigError, match=r"medeff\[dicom-seg\]"):
            predict(cfg)
        assert not out.exists()
        return
    import highdicom as hd

    res = predict(cfg)
    seg_path = out / "series_seg.dcm"
    assert str(seg_path) in res["files"] and res["cases"][0]["dicom_seg"] == str(seg_path)
    nii = nib.load(out / "series_seg.nii.gz")
    mask = np.asarray(nii.dataobj)
    assert {1, 2} <= set(np.unique(mask).tolist())  # both segments are present
    np.testing.assert_array_equal(rebuild_labels(seg_path, mask.shape, nii.affine), mask)

    data = seg_path.read_bytes()
    for value in IDENTITY.values():
        for part in value.split("^"):
            assert part.encode() not in data, part
    seg = pydicom.dcmread(seg_path)
    src = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(dicom_series.iterdir())]
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert str(seg.PatientName) == "" and seg.PatientID.startswith("grp_") and seg.PatientBirthDate == ""
    assert seg.AccessionNumber == "" and "InstitutionName" not in seg
    from medeff.data.pseudonyms import Pseudonymiser

    assert seg.PatientID == Pseudonymiser("s3cret")(IDENTITY["PatientID"])  # the index's group pseudonym
    assert seg.StudyInstanceUID == src[0].StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src[0].SeriesInstanceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["bright", "dark"]
    positions = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in src}
    frame_pos = {tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
                 for f in seg.PerFrameFunctionalGroupsSequence}
    assert frame_pos <= positions  # every frame lies on a source slice
    sops = {ds.SOPInstanceUID for ds in src}
    for f in seg.PerFrameFunctionalGroupsSequence:
        ref = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
        match = [ds for ds in src if ds.SOPInstanceUID == ref]
        assert ref in sops and tuple(round(float(v), 3) for v in match[0].ImagePositionPatient) == pos
    read = hd.seg.segread(seg_path)  # highdicom reads it back as a valid SEG
    assert list(read.segment_numbers) == [1, 2]


def test_seg_on_a_real_dicom_series(seg_ckpt, shared_data, tmp_path):
    folder = shared_data / "ct_organs_totalsegmentator" / "example_ct_dicom"
    out = tmp_path / "out"
    cfg = compose("predict", [f"ckpt={seg_ckpt}", f"input={folder}", f"output_dir={out}", "device=cpu",
                              "output_format=[nifti,dicom_seg]"])
    if not HAVE_HIGHDICOM:
        with pytest.raises(ConfigError, match=r"medeff\[dicom-seg\]"):
            predict(cfg)
        return
    predict(cfg)
    nii = nib.load(out / "example_ct_dicom_seg.nii.gz")
    mask = np.asarray(nii.dataobj)
    seg_path = out / "example_ct_dicom_seg.dcm"
    np.testing.assert_array_equal(rebuild_labels(seg_path, mask.shape, nii.affine), mask)
    seg = pydicom.dcmread(seg_path, stop_before_pixels=True)
    assert len(seg.SegmentSequence) == 6 and seg.SegmentSequence[0].SegmentLabel == "liver"
    assert seg.PatientID.startswith("grp_") and str(seg.PatientName) == ""


def test_missing_highdicom_names_the_extra(monkeypatch):
    import medeff.engine.dicom_seg as D

    real = importlib.util.find_spec
    monkeypatch.setattr(D.importlib.util, "find_spec",
                        lambda name, *a: None if name == "highdicom" else real(name, *a))
    with pytest.raises(ConfigError, match=r"medeff\[dicom-seg\]"):
        D.check_output_formats(["nifti", "dicom_seg"], "segmentation")
    assert D.check_output_formats(["nifti"], "segmentation") == ["nifti"]


def test_output_format_errors_name_the_options():
    from medeff.engine.dicom_seg import check_output_formats

    with pytest.raises(ConfigError, match="dicom_sge.*output_format.*dicom_seg, nifti"):
        check_output_formats(["nifti", "dicom_sge"], "segmentation")
    with pytest.raises(ConfigError, match="segmentation checkpoints"):
        check_output_formats("dicom_seg", "classification")


def test_leak_guard_refuses_to_write(dicom_series, tmp_path, monkeypatch):
    """Were the identifiers not removed before highdicom copies them, nothing would be written."""
    import medeff.engine.dicom_seg as D
    from medeff.io import read_image

    img = read_image(dicom_series)
    if not HAVE_HIGHDICOM:
        with pytest.raises(ConfigError, match=r"medeff\[dicom-seg\]"):
            D.write_dicom_seg(img.array, img.affine_ras, dicom_series, tmp_path / "x.dcm", label_names=["bg", "b"])
        return
    real = D._sanitised

    def leaky(datasets, pid):  # a scrubbing bug that lets the name and the ID through
        out = real(datasets, pid)
        for o, ds in zip(out, datasets):
            o.PatientName, o.PatientID = copy.deepcopy(ds.PatientName), ds.PatientID
        return out

    monkeypatch.setattr(D, "_sanitised", leaky)
    mask = (np.asarray(img.array) > 100).astype(np.uint8)
    with pytest.raises(OutputWriteError, match="identifying"):
        D.write_dicom_seg(mask, img.affine_ras, dicom_series, tmp_path / "x.dcm", label_names=["bg", "bright"])
    assert not list(tmp_path.iterdir())


def test_frames_off_the_mask_grid_are_refused(dicom_series):
    from medeff.engine.dicom_seg import source_frames
    from medeff.io import read_image

    img = read_image(dicom_series)
    src = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(dicom_series.iterdir())]
    mask = np.zeros(img.shape, dtype=np.uint8)
    frames = source_frames(mask, img.affine_ras, src)
    assert frames.shape == (len(src), int(src[0].Rows), int(src[0].Columns))
    shifted = img.affine_ras.copy()
    shifted[2, 3] += 0.5 * img.spacing[2]  # half a slice: a resampled series
    with pytest.raises(InputError, match="voxel grid"):
        source_frames(mask, shifted, src)
