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

    def fake_load(path, *, device, expect=None, **kwargs):
        net, meta = real_load(path, device=device, expect=expect)
        return Echo(), dict(meta, label_names=["background", "bright", "dark"])

    monkeypatch.setattr(P, "load_model", fake_load)
    out = tmp_path / "out"
    cfg = {"ckpt": seg_ckpt, "input": str(dicom_series), "output_dir": str(out), "device": "cpu",
           "output_format": ["nifti", "dicom_seg"], "dicom_seg": {"pseudonym_salt": "s3cret"},
           "case_ids": {"naming": "input"}}
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
    from medeff.utils.pseudonyms import Pseudonymiser

    assert seg.PatientID == Pseudonymiser("s3cret", prefix="grp_")(IDENTITY["PatientID"])  # the index's group pseudonym
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
                              "output_format=[nifti,dicom_seg]", "case_ids.naming=input"])
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


# ---- the identifier check: whole values and tokens, never digits inside generated values -------------------------
def _short_ids(n: int = 300) -> list[str]:
    """Short numeric identifiers, 4 to 6 digits (fixed seed: the same list every run)."""
    rng = np.random.default_rng(7)
    return ["3600"] + [str(rng.integers(10 ** (k - 1), 10**k)) for k in rng.integers(4, 7, n - 1)]


def _generated_with(value: str, pseudonym: str):
    """A SEG-like dataset whose generated elements (times, dates, UIDs, numbers, the pseudonym, pixel data and
    a longer number in a description) all contain ``value`` as a substring."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence as DicomSequence

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber = "", pseudonym, "", ""
    ds.ContentTime, ds.SeriesTime = f"13{value}.{value}"[:13], f"{value}"[:6]
    ds.InstanceCreationTime = f"1200{value[:2]}.{value}"
    ds.ContentDate, ds.InstanceCreationDate = f"{value}0101"[:8], f"2024{value}"[:8]
    ds.AcquisitionDateTime = f"20240101{value}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.{value}.{value}9"
    ds.SOPInstanceUID = f"2.25.{value}{value}"
    ds.InstanceNumber, ds.SeriesNumber, ds.NumberOfFrames = f"9{value}", 990, int(value)
    ds.SliceThickness = f"{value}.5"
    ds.Rows = int(value) % 65536
    ds.PixelData = value.encode() * 4
    ds.SeriesDescription = f"medeff segmentation {value}7"  # a longer number is another token
    ds.ContentLabel, ds.Manufacturer, ds.SoftwareVersions = "MEDEFF", "medeff", "0.1"
    item = Dataset()
    item.ReferencedSOPInstanceUID = f"1.2.{value}.{value}"
    item.ReferencedFrameNumber = int(value)
    ds.ReferencedInstanceSequence = DicomSequence([item])
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR")  # the colliding values need not be valid DICOM
@pytest.mark.parametrize("field", ["RequestingPhysician", "PatientID", "StudyID", "AccessionNumber"])
def test_short_numeric_identifiers_do_not_match_generated_values(field):
    """Each of 300 short numeric IDs, placed inside every kind of generated value, is no leak; with the former
    substring match every one of them was (checked here too, so the collisions are real)."""
    from pydicom.dataset import Dataset

    from medeff.utils.pseudonyms import Pseudonymiser
    from medeff.engine.dicom_seg import _identifying_values, _leaks

    for value in _short_ids():
        source = Dataset()
        setattr(source, field, value)
        pseudonym = f"grp_{value}{Pseudonymiser('s', prefix='grp_')(value)[4:]}"[:16]  # the hex pseudonym may hold digits too
        seg = _generated_with(value, pseudonym)
        texts = " ".join(str(e.value) for e in seg.iterall() if e.VR != "SQ")
        assert value in texts  # the old substring search would refuse this SEG
        assert _leaks(seg, _identifying_values([source]), pseudonym) is None, (field, value)


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("where,text", [
    ("SeriesDescription", "liver of Dorotea Quixote"),        # a name component, other case
    ("SeriesDescription", "QUIXOTE^DOROTEA^MARIA"),           # the whole name
    ("SeriesDescription", "seg for MRN-55501234"),            # an ID as tokens
    ("ContentDescription", "case 3600"),                      # a short numeric ID as a whole token
    ("ContentCreatorName", "3600"),                           # ... as a whole value
    ("ClinicalTrialSiteName", "Hospital Sant Quirze"),        # the institution
])
def test_real_leaks_are_still_refused(where, text):
    from pydicom.dataset import Dataset

    from medeff.engine.dicom_seg import _identifying_values, _leaks

    source = Dataset()
    for k, v in IDENTITY.items():
        setattr(source, k, v)
    source.RequestingPhysician = "3600"
    seg = _generated_with("3600", "grp_0123456789ab")
    assert _leaks(seg, _identifying_values([source]), "grp_0123456789ab") is None
    setattr(seg, where, text)
    assert _leaks(seg, _identifying_values([source]), "grp_0123456789ab") == where


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("field,value", [("PatientID", "MRN-55501234"), ("InstitutionName", "x"),
                                         ("RequestingPhysician", "3600"), ("PatientBirthDate", "19480229")])
def test_identifying_attributes_must_be_empty_in_the_seg(field, value):
    from pydicom.dataset import Dataset

    from medeff.engine.dicom_seg import _identifying_values, _leaks

    source = Dataset()
    source.PatientID = "MRN-55501234"
    seg = _generated_with("3600", "grp_0123456789ab")
    setattr(seg, field, value)
    assert _leaks(seg, _identifying_values([source]), "grp_0123456789ab") == field


@pytest.fixture(scope="module")
def short_id_series(tmp_path_factory):
    """A phantom DICOM series whose identifiers are short numbers (RequestingPhysician '3600', as on the series
    that was refused at random)."""
    from medeff.demo.dicom_writer import write_ct_series
    from medeff.demo.phantom import make_phantom_ct

    ct, _ = make_phantom_ct((24, 20, 8), (8.0, 8.0, 10.0), seed=3)
    folder = tmp_path_factory.mktemp("dicom_short") / "series"
    write_ct_series(ct, folder, identity={"RequestingPhysician": "3600", "PatientID": "4821", "StudyID": "36001",
                                          "AccessionNumber": "360036"})
    return folder


@pytest.mark.skipif(not HAVE_HIGHDICOM, reason="the DICOM SEG writer needs the dicom-seg extra (highdicom)")
@pytest.mark.parametrize("clock", ["13:36:00.360036", "03:36:00.003600", "23:59:36.001234"])
def test_seg_is_written_when_generated_values_contain_short_ids(short_id_series, tmp_path, monkeypatch, clock):
    """highdicom's clock and UIDs are set so that ContentTime, InstanceCreationTime, the series and instance UIDs
    contain '3600', '4821', '36001' and '360036'; the SEG is written every time, and holds none of them as a value."""
    import datetime
    import types

    import highdicom
    import highdicom.base

    import medeff.engine.dicom_seg as D
    from medeff.io import read_image

    t = datetime.time.fromisoformat(clock)

    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls.combine(datetime.date(2024, 3, 6), t)

    monkeypatch.setattr(highdicom.base, "datetime", types.SimpleNamespace(datetime=Clock, date=datetime.date,
                                                                          time=datetime.time))
    uids = iter([f"1.2.826.0.1.3680043.3600.4821.{i + 1}36001360036" for i in range(10)])
    real_uid = highdicom.UID
    monkeypatch.setattr(highdicom, "UID", lambda: real_uid(next(uids)))
    img = read_image(short_id_series)
    mask = (np.asarray(img.array) > 100).astype(np.uint8)
    out = D.write_dicom_seg(mask, img.affine_ras, short_id_series, tmp_path / "x.dcm", label_names=["bg", "bright"],
                            pseudonym_salt="s")
    seg = pydicom.dcmread(out, stop_before_pixels=True)
    assert "3600" in str(seg.ContentTime) + str(seg.SeriesInstanceUID)  # the collision did happen
    assert str(seg.get("RequestingPhysician", "")) == "" and seg.get("StudyID", "") == ""
    assert seg.AccessionNumber == "" and seg.PatientID != "4821"


def _sct_concepts() -> dict[str, set[str]]:
    """SNOMED CT concept id -> meanings in pydicom's bundled code dictionary."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    table: dict[str, set[str]] = {}
    for name in dir(codes.SCT):
        code = getattr(codes.SCT, name)
        if not isinstance(code, Code):
            continue
        table.setdefault(str(code.value), set()).add(str(code.meaning))
    return table


def test_organ_codes_in_conf_are_pydicom_snomed_concepts():
    """Every organ code shipped in conf/predict.yaml is a SNOMED CT concept pydicom knows, with its meaning."""
    organ_codes = compose("predict", ["ckpt=x", "input=y"]).dicom_seg.organ_codes
    known = _sct_concepts()
    assert {"liver", "spleen", "kidney_left", "kidney_right", "lung", "spine"} <= set(organ_codes)
    for name, entry in organ_codes.items():
        assert entry.meaning in known.get(str(entry.code), set()), name


@pytest.mark.parametrize("entry", [{"code": "liver", "meaning": "Liver"}, {"code": "10200004"},
                                   {"code": "64033007", "meaning": "Kidney", "laterality": "up"},
                                   {"code": "10200004", "meaning": "Liver", "colour": "red"}, "10200004"])
def test_malformed_organ_codes_name_the_key(entry):
    from medeff.engine.dicom_seg import organ_code_table

    with pytest.raises(ConfigError, match=r"dicom_seg\.organ_codes\.liver"):
        organ_code_table({"liver": entry})


@pytest.mark.skipif(not HAVE_HIGHDICOM, reason="highdicom (the medeff[dicom-seg] extra) is not installed")
def test_seg_carries_snomed_codes_of_known_organs(dicom_series, tmp_path):
    from medeff.engine.dicom_seg import write_dicom_seg
    from medeff.io import read_image

    img = read_image(dicom_series)
    mask = np.zeros(img.array.shape, dtype=np.uint8)
    for v in range(1, 5):  # one slab of slices per label
        mask[:, :, 3 * v - 2:3 * v] = v
    organ_codes = compose("predict", ["ckpt=x", "input=y"]).dicom_seg.organ_codes
    out = write_dicom_seg(mask, img.affine_ras, dicom_series, tmp_path / "x.dcm",
                          label_names=["background", "liver", "Spleen", "kidney_left", "tumour_core"],
                          organ_codes=organ_codes)
    ds = pydicom.dcmread(out)
    got = {}
    for seg in ds.SegmentSequence:
        kind = seg.SegmentedPropertyTypeCodeSequence[0]
        modifier = kind.get("SegmentedPropertyTypeModifierCodeSequence")
        got[seg.SegmentLabel] = (kind.CodeValue, kind.CodingSchemeDesignator, kind.CodeMeaning,
                                 modifier[0].CodeValue if modifier else None,
                                 seg.SegmentedPropertyCategoryCodeSequence[0].CodeValue)
    assert got == {"liver": ("10200004", "SCT", "Liver", None, "91723000"),
                   "Spleen": ("78961009", "SCT", "Spleen", None, "91723000"),
                   "kidney_left": ("64033007", "SCT", "Kidney", "7771000", "91723000"),
                   "tumour_core": ("91723000", "SCT", "Anatomical Structure", None, "91723000")}
