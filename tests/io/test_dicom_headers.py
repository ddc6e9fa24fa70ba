"""The fast header walker must agree with pydicom on every file it accepts, and hand the rest to pydicom."""

from __future__ import annotations

import numpy as np
import pytest
from dicom_synth import make_series, write_slice

from medeff.io import read_dicom_series
from medeff.io.dicom_parse import read_tags
from medeff.io.dicom_scan import _WANTED, _fast_ids, _fast_slice_header, _scan_with_pydicom, scan_files


def assert_same_as_pydicom(path) -> None:
    fast = read_tags(path, _WANTED)
    assert fast is not None, f"fast walker refused {path}"
    slow_header, slow_ids = _scan_with_pydicom(path)
    fast_header = _fast_slice_header(path, fast)
    assert fast_header == slow_header
    assert _fast_ids(fast) == slow_ids


def _nested_sequence_extra():
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    inner = Dataset()
    inner.CodeValue, inner.CodeMeaning = "123", "inner"
    outer = Dataset()
    outer.ReferencedSOPInstanceUID = "1.2.3.4"
    outer.ConceptNameCodeSequence = Sequence([inner])
    return {"ReferencedImageSequence": Sequence([outer, Dataset()])}


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_and_large_headers(tmp_path, implicit):
    # undefined-length sequences (pydicom writes SQ with undefined length) and a header beyond the first 64 KB
    folder, stored = make_series(tmp_path / "s", n=3, implicit=implicit, extra=_nested_sequence_extra(),
                                 private_bytes=70000)
    for path in sorted(folder.iterdir()):
        assert_same_as_pydicom(path)
    image = read_dicom_series(folder)
    np.testing.assert_array_equal(image.array[:, :, 1], stored[1].T.astype(np.int32) - 1024)


def test_deflated_file_goes_through_pydicom_and_simpleitk(tmp_path):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    folder, stored = make_series(tmp_path / "plain", n=3)
    out = tmp_path / "deflated"
    out.mkdir()
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(out / path.name, enforce_file_format=True)
    assert read_tags(out / "slice000.dcm", _WANTED) is None  # not for the fast walker
    [(header, ids)] = scan_files([out / "slice001.dcm"])
    assert header.position == (-10.0, -20.0, 32.0) and header.pixel_offset is None and ids["modality"] == "CT"
    image = read_dicom_series(out)
    np.testing.assert_array_equal(image.array, read_dicom_series(folder).array)


def test_non_dicom_files_are_skipped(tmp_path):
    (tmp_path / "x.xml").write_text("<a/>" * 100)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    write_slice(tmp_path / "raw.dcm", np.ones((4, 5), np.uint16), position=(0, 0, 0))
    raw = (tmp_path / "raw.dcm").read_bytes()
    (tmp_path / "raw.dcm").write_bytes(raw[132:])  # no preamble: not read (documented)
    assert scan_files(sorted(tmp_path.iterdir())) == []


@pytest.mark.shared_data
def test_fast_walker_agrees_with_pydicom_on_shared_data(shared_data):
    folders = ["chest_ct_lung_pet_ct_dx/Lung_Dx-A0002_CT_8mm_B40f",
               "chest_ct_lung_pet_ct_dx/Lung_Dx-A0001_CT_5mm_kernelL",
               "ct_organs_totalsegmentator/example_ct_dicom", "dicom_edge_cases"]
    count = 0
    for rel in folders:
        for path in sorted((shared_data / rel).rglob("*")):
            if path.is_file() and path.suffix not in (".md", ".gz", ".xml", ".csv", ".txt"):
                assert_same_as_pydicom(path)
                count += 1
    assert count >= 64 + 30 + 20 + 4 * 5 + 2
