"""``medeff predict`` outputs: correct per case, never naming the patient, resumable, exactly one run's files.

* names: inputs named after a patient (a DICOM folder ``DOE_JANE_MRN884213``) give pseudonymous case ids; the name
  reaches no output file name, no file content and no log line (``medeff convert`` too);
* reruns: a run stopped part-way resumes (complete cases are skipped), ``overwrite=true`` leaves exactly that run's
  outputs, and files medeff did not write are never deleted;
* inputs: every DICOM series of a study folder is its own case; two inputs with one case id are refused before
  inference; an output folder that is a file is refused before the checkpoint is loaded;
* failures: non-finite voxels fail their case on every input path, a requested output that cannot be written makes
  the case partial (exit status 1), and ``predictions.json`` is always strict JSON.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from engine_helpers import FAST, SHAPE, SMALL_NET, SPACING, nodule_index, phantom_niftis, train_in_process

import medeff.engine.predict as P
import medeff.engine.predict_segment as PS  # the module that segments each case
from medeff.cli.main import main
from medeff.errors import InputError, MedeffError
from medeff.utils.text_scan import decoded_texts

NAME = "DOE_JANE_MRN884213"
NEEDLES = [NAME, "MRN884213", "DOE_JANE", "DOE^JANE"]
PSEUDONYM = re.compile(r"^case_[0-9a-f]{12}$")


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cls_ckpt(tmp_path_factory) -> str:
    """A tiny 2D nodule classifier (one optimiser step) on a phantom slice archive."""
    root = tmp_path_factory.mktemp("cls")
    index = nodule_index(root / "data", n_exams=4)
    res = train_in_process(["experiment=nodule_2d", f"data.index={index}", "data.batch_size=8", "logger=none",
                            "callbacks.lr_monitor=null", f"run_dir={root / 'run'}"] + SMALL_NET + FAST)
    return res["last_checkpoint"]


def _series(folder: Path, *, seed: int, identity: dict[str, str] | None = None, tilt_deg: float = 0.0,
            series_uid_seed: int | None = None) -> Path:
    """A phantom CT written as a DICOM series (optionally with a gantry tilt, resampled when read)."""
    from medeff.demo.dicom_writer import write_ct_series
    from medeff.demo.phantom import make_phantom_ct
    from medeff.io.base import ImageData

    ct, _ = make_phantom_ct(SHAPE, SPACING, seed=seed)
    direction = np.asarray(ct.direction, dtype=float).copy()
    if tilt_deg:
        t = np.deg2rad(tilt_deg)
        direction[:, 2] = direction[:, 2] * np.cos(t) + direction[:, 1] * np.sin(t)
    img = ImageData(ct.array, ct.spacing, ct.origin, direction)
    write_ct_series(img, folder, identity=identity, seed=seed if series_uid_seed is None else series_uid_seed)
    return folder


def _predict(ckpt: str, inputs: Path, out: Path, **extra):
    cfg = {"ckpt": ckpt, "input": str(inputs), "output_dir": str(out), "device": "cpu"}
    cfg.update(extra)
    return P.predict(cfg)


def _strict_json(path: Path):
    def refuse(token):
        raise AssertionError(f"{path.name} holds the bare token {token}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _failed_rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "failed_cases.csv", newline="") as fh:
        return {r["case_id"]: r for r in csv.DictReader(fh)}


class _Counter:
    """Counts sliding-window calls (one per segmented case) and can raise at the n-th."""

    def __init__(self, monkeypatch, stop_at: int | None = None, exc: type[BaseException] = KeyboardInterrupt):
        self.n, self.stop_at, self.exc = 0, stop_at, exc
        real = PS.sliding_window

        def hook(*a, **k):
            self.n += 1
            if self.stop_at is not None and self.n == self.stop_at:
                raise self.exc("stopped here")
            return real(*a, **k)

        monkeypatch.setattr(PS, "sliding_window", hook)


# ----------------------------------------------------------------------------------------------- item 7
def test_output_dir_that_is_a_file_is_refused_before_loading(seg_run, tmp_path, monkeypatch):
    phantom_niftis(tmp_path / "in", 1, labels=False)
    (tmp_path / "out").write_text("a file, not a folder")

    def no_load(*a, **k):
        raise AssertionError("the checkpoint was loaded although the output folder is a file")

    monkeypatch.setattr(P, "load_models", no_load)
    with pytest.raises(MedeffError, match="output_dir") as err:
        _predict(seg_run[0]["last_checkpoint"], tmp_path / "in", tmp_path / "out")
    assert "is a file" in str(err.value)
    assert (tmp_path / "out").read_text() == "a file, not a folder"


# ----------------------------------------------------------------------------------------------- item 8
def _archive_with(folder: Path, values: dict[int, float]) -> tuple[Path, list[str]]:
    """A phantom slice archive (float pixels) with ``value`` written into the slices of nodule ``i``."""
    from medeff.demo.phantom import make_nodule_archive

    src = make_nodule_archive(folder / "src", n_exams=3, seed=3) / "nodule_slices_64x64.npz"
    with np.load(src) as z:
        data = {k: z[k] for k in z.files}
    keys = list(dict.fromkeys(data["nodule_key"].astype(str)))
    images = data["images"].astype(np.float32)
    for i, value in values.items():
        rows = np.flatnonzero(data["nodule_key"].astype(str) == keys[i])
        images[rows[0], 10:14, 10:14] = value
    data["images"] = images
    path = folder / "archive.npz"
    np.savez(path, **data)
    return path, keys


def test_non_finite_archive_pixels_fail_their_nodule_only(cls_ckpt, tmp_path, capsys):
    archive, keys = _archive_with(tmp_path, {0: np.nan, 1: np.inf})
    out = tmp_path / "out"
    rc = main(["predict", f"ckpt={cls_ckpt}", f"input={archive}", f"output_dir={out}", "device=cpu"])
    text = capsys.readouterr()
    assert rc == 1, text.err[-2000:]
    doc = _strict_json(out / "predictions.json")
    assert sorted(c["case_id"] for c in doc["cases"]) == sorted(keys[2:])
    assert {f["case_id"] for f in doc["failed"]} == {keys[0], keys[1]}
    rows = _failed_rows(out)
    assert set(rows) == {keys[0], keys[1]}
    assert all(re.search("NaN|inf", r["reason"]) for r in rows.values())
    with open(out / "predictions.csv", newline="") as fh:
        assert {r["case_id"] for r in csv.DictReader(fh)} == set(keys[2:])


def test_non_finite_network_output_fails_the_case_and_json_stays_strict(cls_ckpt, tmp_path, monkeypatch):
    import torch

    archive, keys = _archive_with(tmp_path, {})
    real = P.load_models

    class NanFirstRow(torch.nn.Module):  # finite input; NaN output for the first slice of the first nodule
        def __init__(self, net):
            super().__init__()
            self.net, self.calls = net, 0

        def forward(self, x):
            out = self.net(x)
            self.calls += 1
            if self.calls == 1:
                out = out.clone()
                out[0] = float("nan")
            return out

    def load(*a, **k):
        net, meta, paths = real(*a, **k)
        return NanFirstRow(net), meta, paths

    monkeypatch.setattr(P, "load_models", load)
    res = _predict(cls_ckpt, archive, tmp_path / "out", case_ids={"naming": "input"})
    assert [f["case_id"] for f in res["failed"]] == [keys[0]]
    doc = _strict_json(tmp_path / "out" / "predictions.json")
    assert keys[0] not in {c["case_id"] for c in doc["cases"]} and len(doc["cases"]) == len(keys) - 1


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_non_finite_voxels_fail_the_case_before_windowing(seg_run, tmp_path, monkeypatch, kind):
    """Even when a reader hands over inf voxels, predict refuses the case (the window would clip them)."""
    import medeff.io

    inputs = tmp_path / "in"
    if kind == "nifti":
        phantom_niftis(inputs, 2, labels=False)
    else:
        _series(inputs / "s0", seed=0)
        _series(inputs / "s1", seed=1)
    real = medeff.io.read_image
    calls = []

    def leaky(path, **k):
        img = real(path, **k)
        calls.append(path)
        if len(calls) == 1:
            arr = np.asarray(img.array).astype(np.float32)
            arr[3, 3, 3] = np.inf
            img.array = arr
        return img

    monkeypatch.setattr(medeff.io, "read_image", leaky)
    out = tmp_path / "out"
    res = _predict(seg_run[0]["last_checkpoint"], inputs, out)
    assert len(res["failed"]) == 1 and len(res["cases"]) == 1
    assert re.search("NaN|inf", res["failed"][0]["reason"])
    bad = res["failed"][0]["case_id"]
    assert not list(out.glob(f"{bad}*")), "an output was written for the non-finite case"
    assert set(_failed_rows(out)) == {bad}


# ----------------------------------------------------------------------------------------------- item 5
@pytest.mark.parametrize("naming", ["input", "pseudonym"])
def test_two_inputs_with_one_case_id_are_refused_before_inference(seg_run, tmp_path, monkeypatch, naming):
    inputs = tmp_path / "in"
    (p,) = phantom_niftis(inputs, 1, labels=False)
    img = nib.load(str(p))
    nib.save(img, str(inputs / "scan.nii"))
    nib.save(img, str(inputs / "scan.nii.gz"))
    p.unlink()
    counter = _Counter(monkeypatch)
    with pytest.raises(InputError) as err:
        _predict(seg_run[0]["last_checkpoint"], inputs, tmp_path / "out", case_ids={"naming": naming})
    text = " ".join(str(err.value).split())
    assert counter.n == 0 and not (tmp_path / "out").exists()
    assert "scan.nii'" in text.replace("scan.nii.gz", "") or ".nii'" in text
    assert ".nii.gz" in text and "same case id" in text
    if naming == "input":
        assert "scan.nii" in text and "scan.nii.gz" in text


# ----------------------------------------------------------------------------------------------- item 4
def test_each_dicom_series_of_a_study_is_its_own_case(seg_run, tmp_path):
    study = tmp_path / "study"
    _series(study / "patientA", seed=0, identity={"PatientID": "PA-1", "PatientName": "Alpha^Ann"})
    _series(study / "patientB", seed=1, identity={"PatientID": "PB-2", "PatientName": "Beta^Bob"})
    out = tmp_path / "out"
    res = _predict(seg_run[0]["last_checkpoint"], study, out, case_ids={"naming": "input"})
    assert res["failed"] == []
    assert sorted(c["case_id"] for c in res["cases"]) == ["patientA", "patientB"]
    for name in ("patientA", "patientB"):
        mask = nib.load(str(out / f"{name}_seg.nii.gz"))
        assert mask.shape == SHAPE
    res = _predict(seg_run[0]["last_checkpoint"], study, tmp_path / "out2")
    assert len(res["cases"]) == 2 and all(PSEUDONYM.match(c["case_id"]) for c in res["cases"])


def test_series_of_two_patients_in_one_folder_are_refused(seg_run, tmp_path):
    study = tmp_path / "mixed"
    _series(study, seed=0, identity={"PatientID": "PA-1"})
    from medeff.demo.dicom_writer import write_ct_series
    from medeff.demo.phantom import make_phantom_ct

    ct, _ = make_phantom_ct(SHAPE, SPACING, seed=1)
    write_ct_series(ct, study, identity={"PatientID": "PB-2"}, seed=7, file_names="other_{k:04d}.dcm")
    with pytest.raises(InputError, match="several patients") as err:
        _predict(seg_run[0]["last_checkpoint"], study, tmp_path / "out")
    assert "PA-1" not in str(err.value) and "PB-2" not in str(err.value)


# ----------------------------------------------------------------------------------------------- item 1
def _texts(root: Path) -> list[tuple[str, bytes]]:
    return [(str(p), t) for p in sorted(root.rglob("*")) if p.is_file() for t in decoded_texts(p)]


def _leaks(where: str, text: bytes | str) -> list[tuple[str, str]]:
    raw = text.encode() if isinstance(text, str) else text
    squeezed = re.sub(rb"\s+", b"", raw).lower()  # a console may wrap a long line anywhere
    return [(where, n) for n in NEEDLES if n.lower().encode() in squeezed]


def test_patient_named_inputs_leak_into_no_name_content_or_log(zygote, seg_run, tmp_path):
    ident = {"PatientName": "DOE^JANE", "PatientID": "MRN884213"}
    study = tmp_path / "study"
    _series(study / NAME, seed=0, identity=ident, tilt_deg=12.0)  # a tilt: the reader logs a repair
    _series(study / "other_patient", seed=1, identity={"PatientID": "X-1"})
    nifti_in = tmp_path / "nifti_in"
    phantom_niftis(nifti_in, 1, labels=False)
    (nifti_in / f"{NAME}.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)  # fails to read
    out = tmp_path / "outputs"
    private = tmp_path / "private"
    ckpt = seg_run[0]["last_checkpoint"]
    logs = []
    for args, ok in [
        (["predict", f"ckpt={ckpt}", f"input={study}", f"output_dir={out / 'dicom'}", "device=cpu",
          "output_format=[nifti,dicom_seg]", f"case_ids.mapping_out={private / 'map.csv'}"], (1,)),
        (["predict", f"ckpt={ckpt}", f"input={study / NAME}", f"output_dir={out / 'one'}", "device=cpu"], (0,)),
        (["predict", f"ckpt={ckpt}", f"input={nifti_in}", f"output_dir={out / 'nifti'}", "device=cpu"], (1,)),
        (["predict", f"ckpt={ckpt}", f"input={nifti_in / (NAME + '.nii.gz')}", f"output_dir={out / 'bad'}",
          "device=cpu"], (2,)),
        (["predict", f"ckpt={ckpt}", f"input={nifti_in}", f"output_dir={out / 'stop'}", "device=cpu",
          "on_error=stop"], (2,)),
        (["convert", str(study), str(out / "converted.nii.gz")], (0,)),
        (["convert", str(study / NAME), str(out / "converted_one.nii.gz")], (0,)),
    ]:
        rc, text = zygote.run(["--log-level", "DEBUG", *args])
        assert rc in ok, text[-3000:]
        assert "DEBUG" in text or "INFO" in text or "Wrote" in text, text[-2000:]
        logs.append((f"`medeff {' '.join(args[:2])}` rc={rc}", text))
    names = [str(p.relative_to(out)) for p in out.rglob("*")]
    found = [("file name", n) for p in names for n in NEEDLES if n.lower() in p.lower()]
    found += [hit for where, t in _texts(out) + logs for hit in _leaks(where, t)]
    assert found == [], found
    # the masks exist, under pseudonyms; the mapping links them back, outside the outputs
    doc = json.loads((out / "dicom" / "predictions.json").read_text())
    ids = [c["case_id"] for c in doc["cases"]]
    assert len(ids) == 2 and all(PSEUDONYM.match(i) for i in ids)
    with open(private / "map.csv", newline="") as fh:
        mapping = {Path(r["input"]).name: r["case_id"] for r in csv.DictReader(fh)}
    assert set(mapping) == {NAME, "other_patient"} and set(mapping.values()) == set(ids)
    # the tilted series' SEG cannot be written: the case is partial, not silently complete
    assert [f["case_id"] for f in doc["failed"]] == [mapping[NAME]]


def test_mapping_inside_the_outputs_is_refused_and_names_kept_on_request(seg_run, tmp_path):
    inputs = tmp_path / "in"
    phantom_niftis(inputs, 1, labels=False)
    ckpt = seg_run[0]["last_checkpoint"]
    with pytest.raises(MedeffError, match="mapping_out"):
        _predict(ckpt, inputs, tmp_path / "out", case_ids={"mapping_out": str(tmp_path / "out" / "map.csv")})
    res = _predict(ckpt, inputs, tmp_path / "kept", case_ids={"naming": "input"})
    assert [c["case_id"] for c in res["cases"]] == ["ct000"]
    assert (tmp_path / "kept" / "ct000_seg.nii.gz").is_file()
    a = _predict(ckpt, inputs, tmp_path / "s1", case_ids={"salt": "k3y"})["cases"][0]["case_id"]
    b = _predict(ckpt, inputs, tmp_path / "s2", case_ids={"salt": "k3y"})["cases"][0]["case_id"]
    assert a == b and PSEUDONYM.match(a)  # a salt makes the pseudonyms reproducible across output folders


# ----------------------------------------------------------------------------------------------- item 2
def test_rerun_after_a_stop_resumes_without_overwrite(seg_run, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    phantom_niftis(inputs, 3, labels=False)
    out = tmp_path / "out"
    ckpt = seg_run[0]["last_checkpoint"]
    _Counter(monkeypatch, stop_at=3)  # killed while predicting the third case
    with pytest.raises(KeyboardInterrupt):
        _predict(ckpt, inputs, out)
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    assert len(first) == 2 and not (out / "predictions.json").exists()
    counter = _Counter(monkeypatch)
    res = _predict(ckpt, inputs, out)
    assert counter.n == 1, "the rerun predicted complete cases again"
    assert res["failed"] == [] and len(res["cases"]) == 3
    masks = {Path(c["mask"]).name for c in res["cases"]}
    assert set(first) < masks and all((out / m).is_file() for m in masks)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz") if p.name in first} == first
    doc = _strict_json(out / "predictions.json")
    assert sorted(c["case_id"] for c in doc["cases"]) == sorted(c["case_id"] for c in res["cases"])
    counter = _Counter(monkeypatch)
    _predict(ckpt, inputs, out)  # a third run finds everything complete
    assert counter.n == 0


def test_rerun_redoes_a_case_whose_input_changed(seg_run, tmp_path, monkeypatch):
    inputs = tmp_path / "in"
    paths = phantom_niftis(inputs, 2, labels=False)
    out = tmp_path / "out"
    ckpt = seg_run[0]["last_checkpoint"]
    _predict(ckpt, inputs, out, case_ids={"naming": "input"})
    img = nib.load(str(paths[0]))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), str(paths[0]))
    counter = _Counter(monkeypatch)
    with pytest.raises(MedeffError, match="overwrite"):  # a different prediction would replace the old one
        _predict(ckpt, inputs, out, case_ids={"naming": "input"})
    assert counter.n == 0
    _predict(ckpt, inputs, out, case_ids={"naming": "input"}, overwrite=True)
    assert counter.n == 2


def test_archive_rerun_skips_complete_nodules(cls_ckpt, tmp_path, monkeypatch):
    import torch

    archive, keys = _archive_with(tmp_path, {})
    out = tmp_path / "out"
    real = P.load_models
    seen: list[int] = []

    class Stop(torch.nn.Module):
        def __init__(self, net, stop_after):
            super().__init__()
            self.net, self.stop_after = net, stop_after

        def forward(self, x):
            seen.append(len(x))
            if self.stop_after is not None and len(seen) > self.stop_after:
                raise KeyboardInterrupt("stopped")
            return self.net(x)

    def loader(stop_after):
        def load(*a, **k):
            net, meta, paths = real(*a, **k)
            return Stop(net, stop_after), meta, paths
        return load

    monkeypatch.setattr(P, "load_models", loader(1))
    with pytest.raises(KeyboardInterrupt):
        _predict(cls_ckpt, archive, out, batch_size=8)
    seen.clear()
    monkeypatch.setattr(P, "load_models", loader(None))
    res = _predict(cls_ckpt, archive, out, batch_size=8)
    with np.load(archive) as z:
        n_rows = len(z["images"])
    assert len(res["cases"]) == len(keys) and 0 < sum(seen) < n_rows, (seen, n_rows)


# ----------------------------------------------------------------------------------------------- item 3
def test_overwrite_leaves_exactly_this_runs_outputs(seg_run, tmp_path):
    inputs = tmp_path / "in"
    good = phantom_niftis(inputs, 2, labels=False)
    corrupt = b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4
    saved = [p.read_bytes() for p in good]
    good[1].write_bytes(corrupt)  # run 1: ct000 succeeds, ct001 fails
    out = tmp_path / "out"
    ckpt = seg_run[0]["last_checkpoint"]
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a file medeff did not write
    res1 = _predict(ckpt, inputs, out)
    assert len(res1["cases"]) == 1 and len(res1["failed"]) == 1
    good[1].write_bytes(saved[1])
    good[0].write_bytes(corrupt)  # run 2: ct000 fails, ct001 succeeds
    res2 = _predict(ckpt, inputs, out, overwrite=True)
    assert len(res2["cases"]) == 1 and len(res2["failed"]) == 1
    kept = {Path(c["mask"]).name for c in res2["cases"]}
    assert {p.name for p in out.glob("*_seg.nii.gz")} == kept
    assert set(_failed_rows(out)) == {res2["failed"][0]["case_id"]}
    assert (out / "notes.txt").read_text() == "mine"
    expected = kept | {"predictions.json", "failed_cases.csv", "notes.txt", "run_manifest.jsonl"}
    assert {p.name for p in out.iterdir()} == expected
    # everything succeeds now: the old failure list goes
    good[0].write_bytes(saved[0])
    res3 = _predict(ckpt, inputs, out, overwrite=True)
    assert res3["failed"] == [] and not (out / "failed_cases.csv").exists()


def test_files_medeff_did_not_write_are_never_replaced_without_overwrite(seg_run, tmp_path):
    inputs = tmp_path / "in"
    phantom_niftis(inputs, 1, labels=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "ct000_seg.nii.gz").write_text("someone else's file")
    with pytest.raises(MedeffError, match="overwrite"):
        _predict(seg_run[0]["last_checkpoint"], inputs, out, case_ids={"naming": "input"})
    assert (out / "ct000_seg.nii.gz").read_text() == "someone else's file"


# ----------------------------------------------------------------------------------------------- item 6
def test_a_requested_output_that_is_missing_makes_the_case_partial(seg_run, tmp_path, capsys):
    study = tmp_path / "study"
    _series(study / "tilted", seed=0, tilt_deg=12.0)  # resampled when read: no SEG can lie on its slices
    _series(study / "straight", seed=1)
    out = tmp_path / "out"
    rc = main(["predict", f"ckpt={seg_run[0]['last_checkpoint']}", f"input={study}", f"output_dir={out}",
               "device=cpu", "output_format=[nifti,dicom_seg]"])
    text = capsys.readouterr()
    assert rc == 1, text.err[-2000:]
    doc = _strict_json(out / "predictions.json")
    assert len(doc["cases"]) == 2 and len(doc["failed"]) == 1
    partial = doc["failed"][0]["case_id"]
    (complete,) = [c for c in doc["cases"] if c["case_id"] != partial]
    rows = _failed_rows(out)
    assert set(rows) == {partial} and "dicom_seg" in rows[partial]["reason"]
    assert Path(complete["dicom_seg"]).is_file() and not list(out.glob(f"{partial}*.dcm"))
    assert (out / f"{partial}_seg.nii.gz").is_file()  # the outputs it has stay
    assert partial in text.out


# ----------------------------------------------------------------------------------------------- inference mode
def _recording_loader(monkeypatch, seen: list[tuple[bool, bool]]):
    """Wrap the loaded net so each forward records (inference mode on, CPU autocast on). ``seen`` lives outside
    the module: the folded copy sliding_window makes records into the same list."""
    import torch

    real = P.load_models

    class Recorder(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            seen.append((torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cpu")))
            out = self.net(x)
            assert all(t.dtype == torch.float32 for t in (out if isinstance(out, (list, tuple)) else [out])
                       if isinstance(t, torch.Tensor))
            return out

    def load(*a, **k):
        net, meta, paths = real(*a, **k)
        return Recorder(net), meta, paths

    monkeypatch.setattr(P, "load_models", load)


def test_segmentation_forward_runs_in_inference_mode_without_cpu_autocast(seg_run, tmp_path, monkeypatch):
    seen: list[tuple[bool, bool]] = []
    _recording_loader(monkeypatch, seen)
    res = _predict(seg_run[0]["last_checkpoint"], phantom_niftis(tmp_path / "in", 1, labels=False)[0],
                   tmp_path / "out")
    assert len(res["cases"]) == 1 and not res["failed"]
    assert seen and set(seen) == {(True, False)}, seen


def test_classification_forward_runs_in_inference_mode_without_cpu_autocast(cls_ckpt, tmp_path, monkeypatch):
    archive, keys = _archive_with(tmp_path, {})
    seen: list[tuple[bool, bool]] = []
    _recording_loader(monkeypatch, seen)
    res = _predict(cls_ckpt, archive, tmp_path / "out", case_ids={"naming": "input"})
    assert len(res["cases"]) == len(keys) and not res["failed"]
    assert seen and set(seen) == {(True, False)}, seen
