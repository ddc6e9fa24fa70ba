"""Phantom generators: reproducible, realistic HU ranges, geometry that survives a DICOM round trip."""

from __future__ import annotations

import numpy as np
import pytest

from medeff.demo.dicom_writer import write_ct_series
from medeff.demo.phantom import ORGAN_LABELS, make_nodule_archive, make_phantom_ct


def test_phantom_ct_is_seeded_and_labelled():
    ct1, lab1 = make_phantom_ct(seed=3)
    ct2, lab2 = make_phantom_ct(seed=3)
    ct3, _ = make_phantom_ct(seed=4)
    assert np.array_equal(ct1.array, ct2.array) and np.array_equal(lab1.array, lab2.array)
    assert not np.array_equal(ct1.array, ct3.array)
    assert ct1.same_geometry(lab1)
    present = set(np.unique(lab1.array).tolist())
    assert present == set(ORGAN_LABELS.values())
    # organs carry plausible (portal-venous phase) HU: lungs are air-like, spine bone-like, liver enhancing soft tissue
    assert ct1.array[lab1.array == ORGAN_LABELS["lung"]].mean() < -700
    assert ct1.array[lab1.array == ORGAN_LABELS["spine"]].mean() > 300
    assert 60 < ct1.array[lab1.array == ORGAN_LABELS["liver"]].mean() < 140


def test_nodule_archive_layout(tmp_path):
    make_nodule_archive(tmp_path, n_exams=12, seed=1)
    z = np.load(tmp_path / "nodule_slices_64x64.npz")
    n = len(z["labels"])
    assert z["images"].shape == (n, 64, 64) and z["images"].dtype == np.uint8
    assert len(z["nodule_key"]) == len(z["slice_index"]) == n
    # labels are constant per nodule, and both classes occur
    for key in set(z["nodule_key"].tolist()):
        assert len(set(z["labels"][z["nodule_key"] == key].tolist())) == 1
    assert set(z["labels"].tolist()) == {0, 1}
    rows = (tmp_path / "index.csv").read_text().strip().splitlines()
    assert rows[0].startswith("row,exam_id,nodule_id,slice,label,diameter_mm") and len(rows) == n + 1


def test_dicom_series_round_trip_matches_simpleitk(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    ct, _ = make_phantom_ct(shape=(40, 32, 12), spacing=(1.5, 1.5, 3.0), seed=5)
    files = write_ct_series(ct, tmp_path, file_names="{k:03d}.dcm")
    assert len(files) == 12
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path)))
    img = reader.Execute()
    assert np.array_equal(sitk.GetArrayFromImage(img).transpose(2, 1, 0), ct.array)
    assert np.allclose(img.GetSpacing(), ct.spacing) and np.allclose(img.GetOrigin(), ct.origin, atol=1e-4)


def test_phantom_organs_have_adult_sizes_and_sides_at_the_demo_grid():
    """At the demo's grid (64 x 56 x 32 voxels of 5 x 5 x 6 mm) every organ is large enough to learn and lies on its
    anatomical side (index axis i runs right -> left), so left and right labels are decidable."""
    for seed in (0, 3, 10_000):
        _, lab = make_phantom_ct((64, 56, 32), (5.0, 5.0, 6.0), seed=seed)
        a = lab.array
        ml = {name: float((a == v).sum()) * 5.0 * 5.0 * 6.0 / 1000.0 for name, v in ORGAN_LABELS.items() if v}
        assert 600 < ml["liver"] < 2000, ml
        assert 120 < ml["spleen"] < 400, ml
        assert 80 < ml["kidney_left"] < 250 and 80 < ml["kidney_right"] < 250, ml
        centre_i = {name: np.argwhere(a == v)[:, 0].mean() for name, v in ORGAN_LABELS.items() if v}
        assert centre_i["liver"] < 32 < centre_i["spleen"]
        assert centre_i["kidney_right"] < 32 < centre_i["kidney_left"]


def test_phantom_spleen_is_not_merged_with_the_muscle_wall():
    """The spleen is a region of its own: brighter than the muscle wall (enhanced, as the liver and kidneys) and
    bordered by fat or other organs, never by unlabelled soft tissue it could only be told from by shape."""
    from scipy import ndimage

    for seed in range(10_000, 10_006):
        ct, lab = make_phantom_ct((64, 56, 32), (5.0, 5.0, 6.0), seed=seed)
        spleen = lab.array == ORGAN_LABELS["spleen"]
        border = ndimage.binary_dilation(spleen) & ~spleen
        assert not np.any(border & (lab.array == 0) & (ct.array > 20)), seed
        wall = (lab.array == 0) & (ct.array > 20)
        assert ct.array[spleen].mean() - ct.array[wall].mean() > 40, seed
