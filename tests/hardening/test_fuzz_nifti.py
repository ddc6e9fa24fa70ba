"""Fuzzing the NIfTI reader: bad affines, scaling, dimensions and damaged files.

Every case must give the unmutated volume (or the documented variant: a trailing axis of length 1 is dropped) or a
:class:`medeff.errors.MedeffError` with a message; never another exception, never NaN/inf voxels or geometry.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import record
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medeff.errors import MedeffError
from medeff.io import read_image

_settings = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BAD_FLOATS = st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e38, -1e-38])

AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 120.0], [0, 0, 2.5, -50.0], [0, 0, 0, 1]])


def _reference_array(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=(7, 6, 5)).astype(np.int16)


@st.composite
def nifti_case(draw):
    kind = draw(st.sampled_from(["affine", "slope", "dims", "bytes"]))
    if kind == "affine":
        which = draw(st.sampled_from(["sform", "qform", "both"]))
        how = draw(st.sampled_from(["singular", "bad_value", "zero_row"]))
        cell = (draw(st.integers(0, 2)), draw(st.integers(0, 3)))
        bad = draw(BAD_FLOATS if cell[1] < 3 else st.sampled_from([np.nan, np.inf, -np.inf]))  # any finite offset
        return kind, (which, how, cell, bad)                                                     # is valid
    if kind == "slope":
        # values that make no sense as scaling (a tiny finite slope would be valid data)
        name = draw(st.sampled_from(["scl_slope", "scl_inter"]))
        extra = [0.0, 1e38, -3e38] if name == "scl_slope" else []  # overflowing slopes; a big intercept is valid
        return kind, (name, draw(st.sampled_from([np.nan, np.inf, -np.inf] + extra)))
    if kind == "dims":
        shape = draw(st.sampled_from([(7,), (7, 6, 5, 3), (7, 6, 5, 1), (0, 6, 5), (7, 0, 5), (7, 6, 5, 1, 2),
                                      (1, 1, 1)]))
        return kind, (shape,)
    return kind, (draw(st.sampled_from(["truncate_gz", "truncate", "zero", "random", "bad_magic"])),
                  draw(st.floats(0.0, 0.99)), draw(st.integers(0, 2 ** 16)))


def build_case(tmp, case):
    """Write the mutated file; returns (path, expected array or None when an error or a variant is expected)."""
    kind, args = case
    data = _reference_array()
    path = tmp / "img.nii.gz"
    img = nib.Nifti1Image(data, AFFINE)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    if kind == "affine":
        which, how, (r, c), bad = args
        aff = AFFINE.copy()
        if how == "singular":
            aff[:, 1] = aff[:, 0]
        elif how == "zero_row":
            aff[r, :3] = 0
        else:
            aff[r, c] = bad
        nib.save(img, str(path))
        with gzip.open(path, "rb") as fh:
            body = fh.read()
        hdr = nib.Nifti1Header(body[:348])  # patched in the file: nibabel's save would rewrite the affine
        if which in ("sform", "both"):
            hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = aff[0], aff[1], aff[2]
        if which in ("qform", "both"):
            hdr["pixdim"][1:4] = [aff[0, 0], aff[1, 1], aff[2, 2]] if how == "bad_value" else [0, 0, 0]
            hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"] = aff[:3, 3]
        path.write_bytes(gzip.compress(hdr.binaryblock + body[348:]))
        return path, None
    if kind == "slope":
        name, bad = args
        # patch the header field in the written file: nibabel would otherwise reset scl_* on save
        nib.save(img, str(path))
        with gzip.open(path, "rb") as fh:
            body = fh.read()
        hdr = nib.Nifti1Header(body[:348])
        hdr[name] = bad
        path.write_bytes(gzip.compress(hdr.binaryblock + body[348:]))
        return path, None
    if kind == "dims":
        (shape,) = args
        arr = np.random.default_rng(1).integers(0, 100, size=shape).astype(np.int16)
        nib.save(nib.Nifti1Image(arr, AFFINE), str(path))
        return path, arr
    how, frac, seed = args
    nib.save(img, str(path))
    blob = path.read_bytes()
    if how == "truncate_gz":
        blob = blob[:int(frac * len(blob))]
    elif how == "truncate":
        path = tmp / "img.nii"
        raw = gzip.decompress(blob)
        blob = raw[:int(frac * len(raw))]
    elif how == "zero":
        blob = b""
    elif how == "random":
        blob = np.random.default_rng(seed).integers(0, 256, size=1 + int(frac * 5000), dtype=np.uint8).tobytes()
    else:
        raw = bytearray(gzip.decompress(blob))
        raw[344:348] = b"xx\x00\x00"
        blob = gzip.compress(bytes(raw))
    path.write_bytes(blob)
    return path, None


def check_nifti(path, expected, suite: str) -> str:
    try:
        img = read_image(path)
    except MedeffError as exc:
        assert len(str(exc)) > 20, repr(exc)
        record(suite, "error")
        return "error"
    arr = img.array
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all(), "NaN/inf voxels returned without an error"
    assert arr.size > 0, "an empty volume was returned without an error"
    assert np.isfinite(img.spacing).all() and (np.asarray(img.spacing) > 0).all(), img.spacing
    assert np.isfinite(img.origin).all() and np.isfinite(img.direction).all()
    d = img.direction
    assert abs(abs(np.linalg.det(d)) - 1) < 1e-3, "direction is not a rotation"
    if expected is None:
        np.testing.assert_array_equal(arr, _reference_array())
        if not np.allclose(img.affine_ras, AFFINE, atol=1e-4):
            # a different affine is only acceptable when the reader says why (e.g. "qform and sform differ")
            assert img.meta.get("warnings"), f"affine changed silently:\n{img.affine_ras}"
            record(suite, "noted")
            return "noted"
    else:
        # 3D files read as they are; X x Y x Z x 1 reads as X x Y x Z; a file holding several volumes is an error
        squeezed = expected.reshape(expected.shape[:3]) if expected.ndim > 3 else expected
        assert arr.shape == squeezed.shape, (arr.shape, expected.shape)
        np.testing.assert_array_equal(arr, squeezed)
    record(suite, "equal")
    return "equal"


@settings(max_examples=120, **_settings)
@given(case=nifti_case())
def test_fuzz_nifti(tmp_path_factory, case):
    tmp = tmp_path_factory.mktemp("nii")
    path, expected = build_case(tmp, case)
    check_nifti(path, expected, "nifti")


@pytest.mark.slow
@settings(max_examples=2000, **_settings)
@given(case=nifti_case())
def test_fuzz_nifti_long(tmp_path_factory, case):
    tmp = tmp_path_factory.mktemp("nii")
    path, expected = build_case(tmp, case)
    check_nifti(path, expected, "nifti-long")


@pytest.mark.parametrize("name", ["scl_slope", "scl_inter"])
def test_nan_scaling_never_gives_nan_voxels(tmp_path, name):
    path, _ = build_case(tmp_path, ("slope", (name, np.nan)))
    # NIfTI: a NaN/0 slope means "no scaling" (documented); a NaN intercept with a set slope is refused
    outcome = check_nifti(path, None, "nifti-fixed")
    assert outcome == ("equal" if name == "scl_slope" else "error")


def test_singular_affine_is_refused(tmp_path):
    path, _ = build_case(tmp_path, ("affine", ("both", "singular", (0, 0), 0.0)))
    with pytest.raises(MedeffError, match="img.nii.gz"):
        read_image(path)
