"""SIGKILL at random points of ``medeff convert``, ``medeff index`` and ``medeff report``.

Each command runs in a subprocess that has already imported medeff and waits for a "go" line, so the kill
delays spread over the command's own work (reading, computing, writing), not over interpreter start-up. The
delays are stratified over the measured runtime. After every kill: an output under its final name is absent or
complete and loadable, every other file in the output folder is a recognisable ``.tmp-*`` file, and at the end a
rerun succeeds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, record
from dicom_synth import make_series

RUNNER = ("import sys, medeff.cli.main as m; m.build_parser(); print('ready', flush=True); sys.stdin.readline(); "
          "sys.exit(m.main(sys.argv[1:]))")
N_KILLS, N_KILLS_LONG = 10, 30


def _spawn(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, *args], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc


def _wait_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == b"ready", (line, proc.stderr.read() if proc.poll() is not None else b"")


def _go(proc: subprocess.Popen) -> None:
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def _runtime(args: list[str]) -> float:
    proc = _spawn(args)
    _wait_ready(proc)
    t0 = time.perf_counter()
    _go(proc)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    return time.perf_counter() - t0


def kill_at_random_points(args: list[str], check, out_dir: Path, finals: set[str], n: int, seed: int, suite: str):
    """Measure the runtime, then run ``n`` copies killed at stratified random delays; check after each kill."""
    total = _runtime(args)
    check()
    rng = np.random.default_rng(seed)
    delays = total * (np.arange(n) + rng.random(n)) / n
    procs = [_spawn(args) for _ in range(min(n, 4))]  # a few warm runners ahead: imports overlap with the kills
    for i, delay in enumerate(delays):
        proc = procs.pop(0)
        if len(procs) + i + 1 < n:
            procs.append(_spawn(args))
        _wait_ready(proc)
        _go(proc)
        time.sleep(float(delay))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        record(suite, "killed" if proc.returncode == -signal.SIGKILL else "finished")
        check()
        for f in out_dir.iterdir():
            assert f.name in finals or f.name.startswith(".tmp-"), f"unexpected file {f.name} after a kill"
    for proc in procs:
        proc.kill()
        proc.communicate()
    return total


# ----------------------------------------------------------------------------------------------- convert
@pytest.fixture(scope="module")
def big_series(tmp_path_factory):
    folder, _ = make_series(tmp_path_factory.mktemp("kill") / "series", n=48, shape=(160, 160))
    return folder


def _convert_case(big_series, tmp_path, n, seed, suite):
    import nibabel as nib

    from medeff.io import read_image

    expected = read_image(big_series).array
    out_dir = tmp_path / "out"
    out = out_dir / "ct.nii.gz"
    out_dir.mkdir()

    def check():
        if out.exists():
            arr = np.asanyarray(nib.load(str(out)).dataobj)
            np.testing.assert_array_equal(arr, expected)

    args = ["convert", str(big_series), str(out), "--overwrite"]
    kill_at_random_points(args, check, out_dir, {out.name}, n, seed, suite)
    out.unlink(missing_ok=True)
    assert subprocess.run([sys.executable, "-m", "medeff.cli.main", *args[:-1]], cwd=REPO).returncode == 0
    check()
    assert out.exists()


def test_kill_convert(big_series, tmp_path):
    _convert_case(big_series, tmp_path, N_KILLS, 1, "kill-convert")


@pytest.mark.slow
def test_kill_convert_long(big_series, tmp_path):
    _convert_case(big_series, tmp_path, N_KILLS_LONG, 2, "kill-convert-long")


# ----------------------------------------------------------------------------------------------- index
@pytest.fixture(scope="module")
def nifti_source(tmp_path_factory):
    import nibabel as nib

    root = tmp_path_factory.mktemp("kill_index") / "src"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        img = rng.normal(0, 100, size=(40, 40, 24)).astype(np.float32)
        lab = (rng.random((40, 40, 24)) > 0.7).astype(np.uint8)
        nib.save(nib.Nifti1Image(img, np.eye(4)), str(root / "imagesTr" / f"c{i:02d}.nii.gz"))
        nib.save(nib.Nifti1Image(lab, np.eye(4)), str(root / "labelsTr" / f"c{i:02d}.nii.gz"))
    return root


def _index_case(nifti_source, tmp_path, n, seed, suite):
    from medeff.data.index_types import DatasetIndex

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "index.json"

    def check():
        if out.exists():
            index = DatasetIndex.from_json(json.loads(out.read_text()))
            assert len(index.all_cases) == 10

    args = ["index", str(nifti_source), str(out), "overwrite=true", "folds.k=2"]
    kill_at_random_points(args, check, out_dir, {out.name}, n, seed, suite)
    assert subprocess.run([sys.executable, "-m", "medeff.cli.main", *args], cwd=REPO,
                          capture_output=True).returncode == 0
    check()


def test_kill_index(nifti_source, tmp_path):
    _index_case(nifti_source, tmp_path, N_KILLS, 3, "kill-index")


@pytest.mark.slow
def test_kill_index_long(nifti_source, tmp_path):
    _index_case(nifti_source, tmp_path, N_KILLS_LONG, 4, "kill-index-long")


# ----------------------------------------------------------------------------------------------- report
def make_predictions(path: Path, n: int = 60, seed: int = 0) -> Path:
    """A predictions CSV (case_id, label, score) with informative scores."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    score = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    pd.DataFrame({"case_id": [f"case_{i:03d}" for i in range(n)], "label": y, "score": score}).to_csv(path,
                                                                                                     index=False)
    return path


@pytest.fixture(scope="module")
def results_json(tmp_path_factory):
    from medeff.evaluation import evaluate_classification, save_results

    tmp = tmp_path_factory.mktemp("kill_report")
    res = evaluate_classification(make_predictions(tmp / "preds.csv"), n_resamples=50)
    return save_results(res, tmp / "results.json")


def _check_report(out_dir: Path, n_cases: int = 60) -> None:
    import pandas as pd

    files = {p.name: p for p in out_dir.iterdir()}
    if "report.html" in files:
        assert files["report.html"].read_text().rstrip().endswith("</html>")
    if "report.pdf" in files:
        data = files["report.pdf"].read_bytes()
        assert data.startswith(b"%PDF") and b"%%EOF" in data[-64:]
    if "summary.json" in files:
        assert json.loads(files["summary.json"].read_text())["kind"] == "classification"
    if "per_case.csv" in files:
        assert len(pd.read_csv(files["per_case.csv"])) == n_cases
    if "metrics.csv" in files:
        assert len(pd.read_csv(files["metrics.csv"])) > 0


def _report_case(results_json, tmp_path, n, seed, suite, formats):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    finals = {"html": {"report.html"}, "pdf": {"report.pdf"}, "json": {"summary.json"},
              "csv": {"per_case.csv", "metrics.csv"}}
    names = set().union(*(finals[f] for f in formats))
    args = ["report", f"results={results_json}", f"output_dir={out_dir}", "overwrite=true",
            f"formats=[{','.join(formats)}]"]
    kill_at_random_points(args, lambda: _check_report(out_dir), out_dir, names, n, seed, suite)
    assert subprocess.run([sys.executable, "-m", "medeff.cli.main", *args], cwd=REPO,
                          capture_output=True).returncode == 0
    _check_report(out_dir)
    assert names == {p.name for p in out_dir.iterdir() if not p.name.startswith(".tmp-")}


def test_kill_report(results_json, tmp_path):
    # the PDF (slowest to render) is in the long variant; HTML/JSON/CSV go through the same atomic writers
    _report_case(results_json, tmp_path, N_KILLS, 5, "kill-report", ("html", "json", "csv"))


@pytest.mark.slow
def test_kill_report_long(results_json, tmp_path):
    _report_case(results_json, tmp_path, N_KILLS_LONG, 6, "kill-report-long", ("html", "pdf", "json", "csv"))
