"""``medeff predict`` over many cases: flat memory, and bad cases reported and skipped without stopping the batch.

Memory: the predicting process's memory is sampled after every case (a hook around the sliding-window call, in a
forked child with medeff imported), after ``malloc_trim`` has handed freed heap pages back to the system, counting
anonymous and shared-memory pages (file-backed code pages are paged in on first use of a code path, not leaked).
Without the trim, raw RSS wandered by up to 190 KB per case from the allocator alone. From case ``warm`` on, the
trend over cases (Theil-Sen slope: robust to a one-time jump) must stay below ``MAX_GROWTH_PER_CASE``, a quarter of
one input volume (64x56x32 float32 = 459 KB after loading): a leak that kept any per-case image, probability map or
mask (all at least 115 KB) adds that much at every case and fails (keeping each case's output measured 339 KB per
case), while the predictions table legitimately grows by a few hundred bytes per case. The total growth must stay
below that bound times the number of cases, or 16 MB (the allocator may grow once by a few MB).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.stats import theilslopes
import pytest
from conftest import record
from engine_helpers import assert_seg_mask, phantom_niftis

from medeff.cli.main import main

VOLUME_BYTES = 64 * 56 * 32 * 4
MAX_GROWTH_PER_CASE = VOLUME_BYTES / 4
MAX_ONE_TIME_GROWTH = 16 * 2 ** 20

RSS_PRELUDE = """
import medeff.engine.predict_segment as P  # the module that segments each case
import ctypes, ctypes.util
try:  # glibc keeps freed heap pages; trimming before each sample leaves only what is still held
    _trim = ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
except (OSError, AttributeError, TypeError):
    _trim = lambda pad: 0
def rss_bytes():
    # anonymous + shared-memory pages (heap, tensors, tensors received from loader workers); file-backed pages
    # (shared libraries paged in on first use of a code path) cannot be a per-case leak and are left out
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    if "RssAnon" not in fields:
        return int(fields["VmRSS"].split()[0]) * 1024
    return (int(fields["RssAnon"].split()[0]) + int(fields.get("RssShmem", "0 kB").split()[0])) * 1024
samples = []
_real = P.sliding_window
def _hook(*a, **k):
    out = _real(*a, **k)
    _trim(0)
    samples.append(rss_bytes())
    return out
P.sliding_window = _hook
"""


def _bad_inputs(folder: Path) -> dict[str, str]:
    """Three bad files beside good ones: name -> what is wrong with it."""
    (folder / "bad_corrupt.nii.gz").write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)) * 4)
    nib.save(nib.Nifti1Image(np.zeros((30, 20), np.float32), np.eye(4)), str(folder / "bad_flat2d.nii.gz"))
    arr = np.asarray(nib.load(str(folder / "ct000.nii.gz")).dataobj).astype(np.float32)
    arr[5:9, 5:9, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, nib.load(str(folder / "ct000.nii.gz")).affine), str(folder / "bad_nan.nii.gz"))
    return {"bad_corrupt": "corrupt", "bad_flat2d": "2D", "bad_nan": "NaN"}


def test_bad_cases_are_reported_and_skipped(seg_run, tmp_path, capsys):
    inputs = tmp_path / "in"
    good = phantom_niftis(inputs, 2, seed=30, labels=False)
    bad = _bad_inputs(inputs)
    out = tmp_path / "out"
    rc = main(["predict", f"ckpt={seg_run[0]['last_checkpoint']}", f"input={inputs}", f"output_dir={out}",
               "device=cpu", "case_ids.naming=input"])  # synthetic names, kept to check them
    text = capsys.readouterr()
    assert rc == 1, text.err[-2000:]
    assert "3 case(s) failed" in text.out and "2 case(s) ->" in text.out
    for p in good:  # the good cases around the bad ones are predicted
        assert_seg_mask(out / f"{p.name[:-7]}_seg.nii.gz", p)
    doc = json.loads((out / "predictions.json").read_text())
    assert sorted(c["case_id"] for c in doc["cases"]) == sorted(p.name[:-7] for p in good)
    failed = {f["case_id"]: f for f in doc["failed"]}
    assert set(failed) == set(bad)
    with open(out / "failed_cases.csv", newline="") as fh:
        rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    assert set(rows) == set(bad)
    assert "NaN" in failed["bad_nan"]["reason"]
    for name in bad:
        assert failed[name]["image"].endswith(f"{name}.nii.gz") and failed[name]["reason"]
        assert rows[name]["reason"] == failed[name]["reason"]
        assert (text.out + text.err).count(f"{name}.nii.gz") >= 2  # the log warning and the summary name each one
        assert not (out / f"{name}_seg.nii.gz").exists()
        record("bad-case", "reported-and-skipped")


def test_on_error_stop_and_all_failed(seg_run, tmp_path, capsys):
    inputs = tmp_path / "in"
    phantom_niftis(inputs, 1, seed=40, labels=False)
    _bad_inputs(inputs)
    ckpt = f"ckpt={seg_run[0]['last_checkpoint']}"
    keep = "case_ids.naming=input"  # synthetic names, kept to check them
    assert main(["predict", ckpt, f"input={inputs}", f"output_dir={tmp_path / 'o1'}", "on_error=stop", keep]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "bad_corrupt" in err and "Traceback" not in err  # the first bad file (sorted) stops the run
    assert main(["predict", ckpt, f"input={inputs / 'bad_nan.nii.gz'}", f"output_dir={tmp_path / 'o2'}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "All 1 case(s) failed" in err and "NaN" in err
    assert (tmp_path / "o2" / "failed_cases.csv").is_file() and not (tmp_path / "o2" / "predictions.json").exists()
    assert main(["predict", ckpt, f"input={inputs}", f"output_dir={tmp_path / 'o3'}", "on_error=maybe"]) == 2
    assert "on_error" in capsys.readouterr().err


def test_classification_batch_skips_a_bad_case(seg_run, tmp_path, monkeypatch):
    """The per-case loop of volume classification reports and skips like segmentation (a stand-in network)."""
    import torch

    import medeff.engine.predict as P

    class Mean(torch.nn.Module):  # logits from the mean intensity: finite for finite inputs
        def forward(self, x):
            m = x.mean(dim=tuple(range(1, x.ndim)))
            return torch.stack([m, -m], dim=1)

    real_load = P.load_model

    def fake_load(path, *, device, expect=None, **kwargs):
        _, meta = real_load(path, device=device, expect=expect)
        data = dict(meta["data"], kind="volume")
        return Mean(), dict(meta, task="classification", class_names=["benign", "malignant"], positive_classes=[1],
                            data=data)

    monkeypatch.setattr(P, "load_model", fake_load)
    inputs = tmp_path / "in"
    phantom_niftis(inputs, 2, seed=50, labels=False)
    _bad_inputs(inputs)
    res = P.predict({"ckpt": seg_run[0]["last_checkpoint"], "input": str(inputs), "output_dir": str(tmp_path / "o"),
                     "device": "cpu", "case_ids": {"naming": "input"}})
    assert [r["case_id"] for r in res["cases"]] == ["ct000", "ct001"]
    assert {f["case_id"] for f in res["failed"]} == {"bad_corrupt", "bad_flat2d", "bad_nan"}
    doc = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert len(doc["failed"]) == 3 and len(doc["cases"]) == 2


def _memory_case(zygote, seg_run, tmp_path, n_cases: int, warm: int, suite: str) -> dict:
    from medeff.demo.phantom import make_phantom_ct

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(n_cases):
        ct, _ = make_phantom_ct((64, 56, 32), (5.0, 5.0, 6.0), seed=i)
        nib.save(nib.Nifti1Image(ct.array, ct.affine_ras), str(inputs / f"c{i:03d}.nii.gz"))
    rss_out = tmp_path / "rss.json"
    epilogue = f"import json; json.dump(samples, open({str(rss_out)!r}, 'w'))"
    rc, text = zygote.run(["predict", f"ckpt={seg_run[0]['last_checkpoint']}", f"input={inputs}",
                           f"output_dir={tmp_path / 'out'}", "device=cpu", "sliding_window.overlap=0"],
                          prelude=RSS_PRELUDE, epilogue=epilogue)
    assert rc == 0, text[-3000:]
    rss = json.loads(rss_out.read_text())
    assert len(rss) == n_cases
    growth = rss[-1] - rss[warm - 1]
    per_case = growth / (n_cases - warm)
    median_step = float(np.median(np.diff(rss[warm - 1:])))
    slope = float(theilslopes(rss[warm - 1:])[0])  # bytes per case
    figures = {"cases": n_cases, "rss_after_warm_mb": rss[warm - 1] / 2 ** 20, "rss_after_last_mb": rss[-1] / 2 ** 20,
               "growth_mb": growth / 2 ** 20, "growth_per_case_kb": per_case / 1024,
               "median_step_kb": median_step / 1024, "trend_kb_per_case": slope / 1024}
    print(f"{suite}: " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))
    record(suite, "cases predicted", n_cases)
    # a leak adds at every case (the trend); the allocator may also grow once by a few MB (the total)
    assert slope < MAX_GROWTH_PER_CASE, figures
    assert growth < max(MAX_GROWTH_PER_CASE * (n_cases - warm), MAX_ONE_TIME_GROWTH), figures
    assert len(list((tmp_path / "out").glob("*_seg.nii.gz"))) == n_cases
    return figures


def test_memory_is_flat_over_a_batch(zygote, seg_run, tmp_path):
    _memory_case(zygote, seg_run, tmp_path, 40, 10, "memory-40")


@pytest.mark.slow
def test_memory_is_flat_over_200_cases(zygote, seg_run, tmp_path):
    _memory_case(zygote, seg_run, tmp_path, 200, 20, "memory-200")
