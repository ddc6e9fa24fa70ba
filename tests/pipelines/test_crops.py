"""medeff.data.crops: world -> voxel against SimpleITK on the real chest series, crops around the real tumours,
padding outside the volume, and clear errors for bad position CSVs."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medeff.data.crops import crop_cube, crops_config, extract_crops, read_box_targets, world_to_voxel
from medeff.errors import InputError, MedeffError
from medeff.io import read_image
from medeff.io.base import ImageData

SERIES = ("Lung_Dx-A0001_CT_5mm_kernelL", "Lung_Dx-A0002_CT_8mm_B40f")


@pytest.fixture(scope="module")
def chest(shared_data):
    root = shared_data / "chest_ct_lung_pet_ct_dx"
    return root, {name: read_image(root / name) for name in SERIES}


def _sitk_series(folder: Path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


@pytest.mark.parametrize("name", SERIES)
def test_world_to_voxel_matches_simpleitk_on_real_series(chest, name):
    root, images = chest
    img, ref = images[name], _sitk_series(root / name)
    rng = np.random.default_rng(1)
    size = np.asarray(ref.GetSize()) * np.asarray(ref.GetSpacing())
    pts = np.asarray(ref.GetOrigin()) + rng.uniform(-0.1, 1.1, (200, 3)) * size
    ours = world_to_voxel(img, pts)
    cont = np.array([ref.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in pts])
    np.testing.assert_allclose(ours, cont, atol=1e-6)
    for o, p in zip(ours, pts):
        assert tuple(int(v) for v in np.floor(o + 0.5)) == ref.TransformPhysicalPointToIndex(tuple(map(float, p)))


def test_world_to_voxel_oblique_anisotropic_grid_matches_simpleitk():
    import SimpleITK as sitk

    theta = np.deg2rad(17.0)
    direction = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1.0]])
    direction = direction @ np.diag([1.0, -1.0, 1.0])  # a flipped axis too
    ref = sitk.Image(30, 20, 10, sitk.sitkInt16)
    ref.SetSpacing((0.7, 1.3, 4.0))
    ref.SetOrigin((-12.5, 40.0, -300.0))
    ref.SetDirection(tuple(direction.ravel()))
    img = ImageData(np.zeros((30, 20, 10), np.int16), (0.7, 1.3, 4.0), (-12.5, 40.0, -300.0), direction)
    pts = np.random.default_rng(2).uniform(-60, 60, (100, 3)) + np.array([0, 40, -280])
    cont = np.array([ref.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in pts])
    np.testing.assert_allclose(world_to_voxel(img, pts), cont, atol=1e-9)


def test_box_crops_contain_the_real_tumours(chest, tmp_path):
    root, images = chest
    cfg = crops_config(["input_format=pixel_boxes", "label_map={A: malignant}"])
    targets = read_box_targets(root / "tumor_bboxes.csv", cfg, root)
    assert len(targets) == 2  # one tumour per staged series (21 boxes on consecutive slices)
    manifest = extract_crops(root / "tumor_bboxes.csv", tmp_path, cfg)
    rows = list(csv.DictReader(open(manifest)))
    assert [r["label"] for r in rows] == ["malignant", "malignant"]
    boxes = list(csv.DictReader(open(root / "tumor_bboxes.csv")))
    for row, target in zip(rows, targets):
        name = Path(target.series).name
        crop = read_image(tmp_path / row["image"])
        n = crop.array.shape[0]
        assert crop.array.shape == (n, n, n) and crop.spacing == (1.0, 1.0, 1.0)
        # the crop's centre voxel sits on the tumour centre
        np.testing.assert_allclose(world_to_voxel(crop, target.centre_lps), [(n - 1) / 2] * 3, atol=1e-6)
        series = images[name]
        tumour_voxels = 0
        for b in boxes:
            if not b["dicom_file"].startswith(name):
                continue
            import pydicom

            ds = pydicom.dcmread(str(root / b["dicom_file"]), stop_before_pixels=True)
            k = int(round(world_to_voxel(series, [float(v) for v in ds.ImagePositionPatient])[2]))
            ii, jj = np.meshgrid(np.arange(int(b["xmin"]), int(b["xmax"]) + 1),
                                 np.arange(int(b["ymin"]), int(b["ymax"]) + 1), indexing="ij")
            idx = np.stack([ii.ravel(), jj.ravel(), np.full(ii.size, k)], axis=1).astype(float)
            from medeff.data.crops import voxel_to_world

            in_crop = world_to_voxel(crop, voxel_to_world(series, idx))
            assert np.all((in_crop >= -0.5) & (in_crop <= n - 0.5)), f"tumour voxels of {b['dicom_file']} outside"
            tumour_voxels += len(idx)
        assert tumour_voxels > 1000
        # the crop's voxels are the series' HU, trilinearly interpolated: compare with SimpleITK's resampler
        import SimpleITK as sitk

        ref = _sitk_series(root / name)
        grid = sitk.Image([n, n, n], sitk.sitkFloat32)
        grid.SetOrigin(crop.origin)
        grid.SetSpacing(crop.spacing)
        grid.SetDirection(tuple(np.asarray(crop.direction).ravel()))
        expected = sitk.GetArrayFromImage(sitk.Resample(ref, grid, sitk.Transform(), sitk.sitkLinear, -1000.0,
                                                        sitk.sitkFloat32)).transpose()
        diff = np.abs(crop.array.astype(np.float64) - expected)
        assert np.mean(diff <= 1.0) > 0.999, f"max difference {diff.max()} HU"
        assert float(row["padded_fraction"]) == 0.0


def test_crop_outside_the_volume_is_padded_with_air():
    img = ImageData(np.full((20, 20, 20), 100, np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3))
    crop, padded = crop_cube(img, [0.0, 0.0, 0.0], size_voxels=10, spacing_mm=1.0, pad_value=-1000)
    # cube indices -4.5 .. 4.5 per axis: 6 of 10 positions per axis lie within the volume (>= -0.5)
    assert padded == pytest.approx(1 - 0.6**3)
    inside = np.zeros((10, 10, 10), bool)
    inside[4:, 4:, 4:] = True
    assert np.all(crop.array[inside] == 100) and np.all(crop.array[~inside] == -1000)
    np.testing.assert_allclose(crop.origin, [-4.5, -4.5, -4.5])


def _write_scan(folder: Path) -> Path:
    from medeff.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    img = ImageData(np.full((30, 30, 10), 50, np.int16), (2.0, 2.0, 5.0), (-30.0, -30.0, -25.0), np.eye(3))
    return write_image(img, folder / "scan.nii.gz")


def _csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_padding_is_recorded_in_the_manifest(tmp_path):
    _write_scan(tmp_path / "data")
    pos = _csv(tmp_path / "data" / "pos.csv", "series,x_mm,y_mm,z_mm,label,patient_id",
               "scan.nii.gz,0,0,0,benign,p1", "scan.nii.gz,27.9,27.9,19.9,malignant,p1")
    rows = list(csv.DictReader(open(extract_crops(pos, tmp_path / "out", crops_config(["size_voxels=16"])))))
    assert [int(r["padded"]) for r in rows] == [0, 1]
    assert 0.5 < float(rows[1]["padded_fraction"]) < 1.0
    assert rows[0]["patient_id"] == rows[1]["patient_id"].strip() and rows[0]["patient_id"].startswith("grp_")
    assert read_image(tmp_path / "out" / rows[1]["image"]).array.min() == -1000


@pytest.mark.parametrize("header,row,expect", [
    ("series,x_mm,y_mm,zz", "scan.nii.gz,0,0,0", "lacks column(s) 'z_mm' (z)"),
    ("series,x_mm,y_mm,z_mm", "missing_scan.nii.gz,0,0,0", "row 2: series 'missing_scan.nii.gz' does not exist"),
    ("series,x_mm,y_mm,z_mm", "scan.nii.gz,0,0,400", "row 2: position [0.0, 0.0, 400.0] mm (LPS) lies outside"),
    ("series,x_mm,y_mm,z_mm", "scan.nii.gz,0,abc,0", "row 2: column 'y_mm' holds 'abc'"),
    ("series,x_mm,y_mm,z_mm,label", "scan.nii.gz,0,0,0,X", "row 2: label 'X' is not one of the classes"),
])
def test_bad_csv_gives_a_clear_error_naming_row_and_file(tmp_path, header, row, expect):
    _write_scan(tmp_path)
    pos = _csv(tmp_path / "positions.csv", header, row)
    with pytest.raises(InputError) as err:
        extract_crops(pos, tmp_path / "out", crops_config())
    assert expect in str(err.value) and str(pos) in str(err.value)
    assert not (tmp_path / "out" / "crops").exists()  # nothing written


def test_cli_reports_a_bad_row_in_one_paragraph(tmp_path):
    _write_scan(tmp_path)
    pos = _csv(tmp_path / "positions.csv", "series,x_mm,y_mm,z_mm", "scan.nii.gz,0,0,0", "scan.nii.gz,-500,0,0")
    r = subprocess.run([sys.executable, "-m", "medeff.cli.main", "crops", str(pos), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "row 3" in r.stderr and "lies outside its series" in r.stderr and "Traceback" not in r.stderr


def test_unlabelled_positions_give_a_manifest_without_labels(tmp_path):
    _write_scan(tmp_path)
    pos = _csv(tmp_path / "positions.csv", "series,x_mm,y_mm,z_mm", "scan.nii.gz,0,0,0", "scan.nii.gz,5,5,5")
    rows = list(csv.DictReader(open(extract_crops(pos, tmp_path / "out", crops_config(["size_voxels=8"])))))
    assert [r["case_id"] for r in rows] == ["nodule_0001", "nodule_0002"] and "label" not in rows[0]
    mixed = _csv(tmp_path / "mixed.csv", "series,x_mm,y_mm,z_mm,label", "scan.nii.gz,0,0,0,benign",
                 "scan.nii.gz,5,5,5,")
    with pytest.raises(InputError, match=r"rows \[3\] have no label"):
        extract_crops(mixed, tmp_path / "out2", crops_config())


# ---- data root: series paths may not lead outside it ----------------------------------------------------------------
def _escape_layout(tmp_path: Path) -> tuple[Path, Path]:
    """``data/`` (the CSV's folder, the root) with a scan, and ``elsewhere/scan.nii.gz`` outside it, reachable
    through ``..``, an absolute path, a linked file and a linked folder inside the root."""
    root, outside = tmp_path / "data", _write_scan(tmp_path / "elsewhere")
    _write_scan(root)
    (root / "link.nii.gz").symlink_to(outside)
    (root / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    return root, outside


ESCAPES = {"dotdot": "../elsewhere/scan.nii.gz", "deep dotdot": "../../../../../../../../etc",
           "absolute": "ABS", "linked file": "link.nii.gz", "linked folder": "linkdir/scan.nii.gz",
           "etc": "/etc"}


@pytest.mark.parametrize("escape", list(ESCAPES))
def test_series_outside_the_root_are_refused(tmp_path, escape):
    root, outside = _escape_layout(tmp_path)
    series = str(outside) if ESCAPES[escape] == "ABS" else ESCAPES[escape]
    pos = _csv(root / "pos.csv", "series,x_mm,y_mm,z_mm", "scan.nii.gz,0,0,0", f"{series},0,0,0")
    with pytest.raises(InputError) as err:
        extract_crops(pos, tmp_path / "out", crops_config(["size_voxels=8"]))
    text = str(err.value)
    assert "row 3" in text and "outside the data root" in text and "allow_outside_root=true" in text, text
    assert not (tmp_path / "out" / "crops").exists() and not (tmp_path / "out" / "crops.csv").exists()


def test_series_outside_the_root_refused_on_the_command_line(tmp_path):
    root, _ = _escape_layout(tmp_path)
    pos = _csv(root / "pos.csv", "series,x_mm,y_mm,z_mm", "linkdir/scan.nii.gz,0,0,0")
    r = subprocess.run([sys.executable, "-m", "medeff.cli.main", "crops", str(pos), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "outside the data root" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_links_inside_the_root_and_the_option_are_accepted(tmp_path):
    root, outside = _escape_layout(tmp_path)
    (root / "inner.nii.gz").symlink_to(root / "scan.nii.gz")
    pos = _csv(root / "pos.csv", "series,x_mm,y_mm,z_mm", "inner.nii.gz,0,0,0", "sub/../scan.nii.gz,0,0,0")
    (root / "sub").mkdir()
    assert len(list(csv.DictReader(open(extract_crops(pos, tmp_path / "a", crops_config(["size_voxels=8"])))))) == 2
    trusted = _csv(root / "trusted.csv", "series,x_mm,y_mm,z_mm", "linkdir/scan.nii.gz,0,0,0", f"{outside},0,0,0")
    cfg = crops_config(["size_voxels=8", "allow_outside_root=true"])
    assert len(list(csv.DictReader(open(extract_crops(trusted, tmp_path / "b", cfg))))) == 2


@pytest.mark.parametrize("escape", ["../elsewhere/x.dcm", "ABS", "linkdir/x.dcm"])
def test_pixel_box_files_outside_the_root_are_refused(tmp_path, escape):
    root, outside = _escape_layout(tmp_path)
    (outside.parent / "x.dcm").write_bytes(b"not read")
    f = str(outside.parent / "x.dcm") if escape == "ABS" else escape
    pos = _csv(root / "boxes.csv", "dicom_file,xmin,ymin,xmax,ymax,label", f"{f},1,1,5,5,A")
    with pytest.raises(InputError, match="row 2: column 'dicom_file' names .* outside the data root"):
        extract_crops(pos, tmp_path / "out", crops_config(["input_format=pixel_boxes", "label_map={A: malignant}"]))
    assert not (tmp_path / "out" / "crops").exists() and not (tmp_path / "out" / "crops.csv").exists()


# ---- size limits: a typo in the size may not ask for petabytes ---------------------------------------------------
def _never_read(monkeypatch):
    import medeff.io

    def refuse(*a, **k):
        raise AssertionError("a series was read before the sizes were checked")

    monkeypatch.setattr(medeff.io, "read_image", refuse)


def test_huge_size_column_is_refused_before_reading(tmp_path, monkeypatch):
    _write_scan(tmp_path)
    pos = _csv(tmp_path / "positions.csv", "series,x_mm,y_mm,z_mm,size_mm", "scan.nii.gz,0,0,0,48",
               "scan.nii.gz,0,0,0,100000")
    _never_read(monkeypatch)
    with pytest.raises(InputError) as err:
        extract_crops(pos, tmp_path / "out", crops_config())
    text = str(err.value)
    assert "row 3" in text and "column 'size_mm' (100000 mm)" in text and "100000 voxels per edge" in text, text
    assert "memory available" in text and "spacing_mm" in text and "Fix:" in text, text
    assert not (tmp_path / "out" / "crops").exists()


def test_huge_size_voxels_is_refused_naming_the_key(tmp_path, monkeypatch):
    _write_scan(tmp_path)
    pos = _csv(tmp_path / "positions.csv", "series,x_mm,y_mm,z_mm", "scan.nii.gz,0,0,0")
    _never_read(monkeypatch)
    with pytest.raises(InputError, match=r"row 2: size_voxels=100000 asks for a cube of 100000 mm"):
        extract_crops(pos, tmp_path / "out", crops_config(["size_voxels=100000"]))
    with pytest.raises(MedeffError, match="spacing_mm=0.0 is not a positive spacing"):
        extract_crops(pos, tmp_path / "out", crops_config(["spacing_mm=0"]))


def test_cube_much_larger_than_its_series_is_refused(tmp_path):
    _write_scan(tmp_path)  # 60 x 60 x 50 mm: about 96 mm corner to corner
    pos = _csv(tmp_path / "positions.csv", "series,x_mm,y_mm,z_mm,size_mm", "scan.nii.gz,0,0,0,2000")
    with pytest.raises(InputError) as err:  # 40 voxels at 50 mm: fits in memory, but is nearly all padding
        extract_crops(pos, tmp_path / "out", crops_config(["spacing_mm=50"]))
    text = str(err.value)
    assert "row 2" in text and "column 'size_mm' (2000 mm)" in text and "more than twice its series" in text, text
    largest = int(re.search(r"accepts at most (\d+) mm", text).group(1))
    assert 150 < largest < 2000, text
    rows = list(csv.DictReader(open(extract_crops(_csv(tmp_path / "ok.csv", "series,x_mm,y_mm,z_mm,size_mm",
                                                       "scan.nii.gz,0,0,0,150"), tmp_path / "ok",
                                                  crops_config(["spacing_mm=5"])))))
    assert rows[0]["edge_mm"] == "150.0"  # under twice the series: accepted


def test_all_crops_together_must_fit_in_memory(tmp_path, monkeypatch):
    import medeff.data.crop_limits as limits

    _write_scan(tmp_path)
    pos = _csv(tmp_path / "positions.csv", "series,x_mm,y_mm,z_mm", *["scan.nii.gz,0,0,0"] * 30)
    one = 8**3 * limits.CUT_BYTES_PER_VOXEL
    monkeypatch.setattr(limits, "available_memory", lambda: 2 * (one + 8**3 * limits.KEPT_BYTES_PER_VOXEL * 10))
    _never_read(monkeypatch)
    with pytest.raises(InputError, match="its 30 crops together need about .* split the CSV"):
        extract_crops(pos, tmp_path / "out", crops_config(["size_voxels=8"]))
