"""Fuzzing the DICOM reader: mutated headers, transfer syntaxes and truncated or foreign files.

Every case must end in the unmutated volume, in a volume whose difference is stated in ``meta["warnings"]`` /
``meta["repairs"]`` (a logged, documented repair), or in a :class:`medeff.errors.MedeffError` with a message.
Any other exception, and any silently different or non-finite volume, fails the test.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import record
from dicom_synth import make_series
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medeff.errors import MedeffError
from medeff.io import read_image

REAL_SERIES = "chest_ct_lung_pet_ct_dx/Lung_Dx-A0002_CT_8mm_B40f"
N_REAL = 3  # consecutive slices copied from the real series

GEOMETRY_TAGS = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2}
NUMBER_TAGS = ("RescaleSlope", "RescaleIntercept")
SIZE_TAGS = ("Rows", "Columns", "BitsAllocated", "BitsStored", "PixelRepresentation", "SamplesPerPixel")
TRANSFER_SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
                     "1.2.840.10008.1.2.4", "1.2.840.10008.1.2.4.50", "", "garbage", "1.2.3"]
BAD_TEXT = st.sampled_from(["", "nan", "NaN", "inf", "-inf", "0", "abc", "1e400", "\\", "1\\2", " ", "0.0"])

_settings = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                       HealthCheck.too_slow], derandomize=False)


# ----------------------------------------------------------------------------------------------- mutations
@st.composite
def header_mutation(draw):
    """(tag, new value or None for delete, which slices) for one header tag."""
    kind = draw(st.sampled_from(["geometry", "number", "size"]))
    if kind == "geometry":
        tag = draw(st.sampled_from(sorted(GEOMETRY_TAGS)))
        n = GEOMETRY_TAGS[tag]
        value = draw(st.one_of(
            st.none(),
            BAD_TEXT.filter(lambda v: v.count("\\") != n - 1 or v == "\\"),  # "1\\2" is a valid PixelSpacing
            st.lists(st.sampled_from(["nan", "inf", "0", "abc", "1e30", "-0"]), min_size=n, max_size=n)
            .map("\\".join),
            st.lists(st.floats(-1e3, 1e3).map(lambda v: f"{v:.4g}"), min_size=1, max_size=n + 2)
            .filter(lambda v: len(v) != n).map("\\".join)))  # a wrong count (a right one would be valid data)
    elif kind == "number":
        tag = draw(st.sampled_from(NUMBER_TAGS))
        bad = BAD_TEXT if tag == "RescaleSlope" else BAD_TEXT.filter(lambda v: v not in ("0", "0.0"))
        value = draw(st.one_of(st.none(), bad))  # (a zero intercept is valid data, a zero slope is not)
    else:
        tag = draw(st.sampled_from(SIZE_TAGS))
        value = draw(st.one_of(st.none(), st.sampled_from([0, 1, 3, 7, 8, 12, 16, 24, 32, 64, 511, 513, 65535])))
    where = draw(st.sampled_from(["all", "first", "middle", "last"]))
    return "header", (tag, value, where)


@st.composite
def file_mutation(draw):
    """Byte-level damage to one file of the series."""
    kind = draw(st.sampled_from(["syntax", "truncate_pixels", "truncate_header", "zero", "random_dicm"]))
    where = draw(st.sampled_from(["first", "middle", "last"]))
    frac = draw(st.floats(0.0, 0.999))
    syntax = draw(st.sampled_from(TRANSFER_SYNTAXES))
    seed = draw(st.integers(0, 2 ** 16))
    return kind, (where, frac, syntax, seed)


MUTATIONS = st.one_of(header_mutation(), file_mutation())


def _targets(files: list[Path], where: str) -> list[Path]:
    return {"all": files, "first": files[:1], "middle": files[len(files) // 2:len(files) // 2 + 1],
            "last": files[-1:]}[where]


def _set_tag(path: Path, tag: str, value) -> None:
    from pydicom import config

    ds = pydicom.dcmread(path, force=True)
    if value is None:
        if tag in ds:
            del ds[tag]
    else:
        vr = pydicom.datadict.dictionary_VR(tag)
        old = config.settings.writing_validation_mode, config.settings.reading_validation_mode
        config.settings.writing_validation_mode = config.settings.reading_validation_mode = config.IGNORE
        try:
            if vr == "US":
                ds.add_new(tag, "US", int(value))
            else:  # a raw element, so garbage reaches the file as it is
                from pydicom.dataelem import RawDataElement
                from pydicom.tag import Tag

                raw = str(value).encode("latin-1")
                raw += b" " if len(raw) % 2 else b""
                t = Tag(pydicom.datadict.tag_for_keyword(tag))
                ds._dict[t] = RawDataElement(t, vr, len(raw), raw, 0, False, True)
            ds.save_as(path, enforce_file_format=False)
        finally:
            config.settings.writing_validation_mode, config.settings.reading_validation_mode = old
        return
    ds.save_as(path, enforce_file_format=False)


def _pixel_offset(data: bytes) -> int:
    at = data.rfind(b"\xe0\x7f\x10\x00")
    return at if at > 132 else len(data) // 2


def _patch_syntax(data: bytes, syntax: str) -> bytes:
    at = data.find(b"\x02\x00\x10\x00UI")
    if at < 0:
        return data
    (length,) = struct.unpack_from("<H", data, at + 6)
    value = syntax.encode()[:length].ljust(length, b"\x00")
    return data[:at + 8] + value + data[at + 8 + length:]


def apply_mutation(folder: Path, mutation) -> None:
    kind, args = mutation
    files = sorted(folder.iterdir())
    if kind == "header":
        tag, value, where = args
        for f in _targets(files, where):
            _set_tag(f, tag, value)
        return
    where, frac, syntax, seed = args
    path = _targets(files, where)[0]
    data = path.read_bytes()
    if kind == "syntax":
        data = _patch_syntax(data, syntax)
    elif kind == "truncate_pixels":
        start = _pixel_offset(data) + 12
        data = data[:start + int(frac * (len(data) - start))]
    elif kind == "truncate_header":
        data = data[:int(frac * _pixel_offset(data))]
    elif kind == "zero":
        data = b""
    else:
        rng = np.random.default_rng(seed)
        data = b"\x00" * 128 + b"DICM" + rng.integers(0, 256, size=int(64 + frac * 4000), dtype=np.uint8).tobytes()
    path.write_bytes(data)


# ----------------------------------------------------------------------------------------------- the oracle
def check_read(folder: Path, reference, suite: str) -> str:
    """Read ``folder``; assert the outcome is acceptable; return and count the outcome."""
    try:
        img = read_image(folder)
    except MedeffError as exc:
        assert str(exc).strip() and len(str(exc)) > 20, f"MedeffError without a useful message: {exc!r}"
        record(suite, "error")
        return "error"
    arr = img.array
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all(), "volume with NaN/inf values returned without an error"
    assert np.isfinite(img.spacing).all() and (np.asarray(img.spacing) > 0).all(), img.spacing
    assert np.isfinite(img.origin).all() and np.isfinite(img.direction).all()
    same = (arr.shape == reference.array.shape and np.array_equal(arr, reference.array)
            and np.allclose(img.spacing, reference.spacing, atol=1e-4)
            and np.allclose(img.origin, reference.origin, atol=1e-3)
            and np.allclose(img.direction, reference.direction, atol=1e-4))
    if same:
        record(suite, "equal")
        return "equal"
    noted = list(img.meta.get("warnings", [])) + list(img.meta.get("repairs", []))
    assert noted, ("volume differs from the unmutated one but meta['warnings'/'repairs'] say nothing "
                   f"(shape {arr.shape} vs {reference.array.shape})")
    record(suite, "repaired")
    return "repaired"


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synthetic_series(tmp_path_factory):
    folder, _ = make_series(tmp_path_factory.mktemp("synth") / "series", n=4, shape=(6, 8))
    return folder, read_image(folder)


@pytest.fixture(scope="module")
def real_series(shared_data, tmp_path_factory):
    src = sorted((shared_data / REAL_SERIES).glob("*.dcm"))
    folder = tmp_path_factory.mktemp("real") / "series"
    folder.mkdir()
    for f in src[10:10 + N_REAL]:
        shutil.copy(f, folder / f.name)
    return folder, read_image(folder)


def _fuzz_once(tmp_path_factory, base, mutation, suite):
    folder, reference = base
    work = tmp_path_factory.mktemp("case") / "series"
    shutil.copytree(folder, work)
    apply_mutation(work, mutation)
    check_read(work, reference, suite)
    shutil.rmtree(work.parent)


@settings(max_examples=120, **_settings)
@given(mutation=MUTATIONS)
def test_fuzz_synthetic_series(synthetic_series, tmp_path_factory, mutation):
    _fuzz_once(tmp_path_factory, synthetic_series, mutation, "dicom-synthetic")


@settings(max_examples=40, **_settings)
@given(mutation=MUTATIONS)
def test_fuzz_real_series(real_series, tmp_path_factory, mutation):
    _fuzz_once(tmp_path_factory, real_series, mutation, "dicom-real")


@pytest.mark.slow
@settings(max_examples=1500, **_settings)
@given(mutation=MUTATIONS)
def test_fuzz_synthetic_series_long(synthetic_series, tmp_path_factory, mutation):
    _fuzz_once(tmp_path_factory, synthetic_series, mutation, "dicom-synthetic-long")


@pytest.mark.slow
@settings(max_examples=400, **_settings)
@given(mutation=MUTATIONS)
def test_fuzz_real_series_long(real_series, tmp_path_factory, mutation):
    _fuzz_once(tmp_path_factory, real_series, mutation, "dicom-real-long")


# ----------------------------------------------------------------------------------------------- fixed cases
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "0", "abc", "1e400"])
def test_bad_rescale_slope_is_refused(synthetic_series, tmp_path, value):
    work = tmp_path / "s"
    shutil.copytree(synthetic_series[0], work)
    apply_mutation(work, ("header", ("RescaleSlope", value, "all")))
    with pytest.raises(MedeffError, match="RescaleSlope"):
        read_image(work)


def test_missing_intercept_is_noted(synthetic_series, tmp_path):
    work = tmp_path / "s"
    shutil.copytree(synthetic_series[0], work)
    apply_mutation(work, ("header", ("RescaleIntercept", None, "all")))
    img = read_image(work)
    assert any("RescaleIntercept" in w for w in img.meta["warnings"])


@pytest.mark.parametrize("tag,value", [("Rows", 3), ("Columns", 7), ("BitsAllocated", 8), ("BitsAllocated", 0),
                                       ("BitsAllocated", 12), ("Rows", 0)])
def test_pixel_layout_mismatch_is_refused(synthetic_series, tmp_path, tag, value):
    work = tmp_path / "s"
    shutil.copytree(synthetic_series[0], work)
    apply_mutation(work, ("header", (tag, value, "all")))
    with pytest.raises(MedeffError):
        read_image(work)


@pytest.mark.parametrize("kind", ["zero", "random_dicm", "truncate_header"])
def test_unreadable_file_in_series_is_reported(synthetic_series, tmp_path, kind):
    work = tmp_path / "s"
    shutil.copytree(synthetic_series[0], work)
    apply_mutation(work, (kind, ("last", 0.5, "", 1)))
    try:
        img = read_image(work)
    except MedeffError:
        return
    assert any("skipped" in w for w in img.meta["warnings"]), img.meta["warnings"]
