"""Unwritable output folders, a full disk and existing outputs, for convert, index, evaluate and report.

Each must end in exit status 2 with a one-paragraph message naming the path and the fix, and leave no output
under its final name (nor a stray temporary file). Tests run as root, which ignores permission bits: the
unwritable folder is simulated (``os.access`` / ``mkstemp`` refusing) and, where the machine allows ``mount``,
also made real with a read-only and a 64 KiB tmpfs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dicom_synth import make_series

from medeff.cli.main import main
from medeff.errors import OutputWriteError


# ----------------------------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def series(tmp_path_factory):
    folder, _ = make_series(tmp_path_factory.mktemp("disk") / "series", n=6, shape=(64, 64))
    return folder


@pytest.fixture(scope="module")
def nifti_source(tmp_path_factory):
    import nibabel as nib

    root = tmp_path_factory.mktemp("disk_index") / "src"
    (root / "imagesTr").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        nib.save(nib.Nifti1Image(rng.normal(size=(12, 12, 8)).astype(np.float32), np.eye(4)),
                 str(root / "imagesTr" / f"c{i}.nii.gz"))
    return root


@pytest.fixture(scope="module")
def predictions(tmp_path_factory):
    from test_killed import make_predictions

    return make_predictions(tmp_path_factory.mktemp("disk_eval") / "preds.csv", n=30)


def _commands(series, nifti_source, predictions, out: Path) -> dict[str, tuple[list[str], list[Path]]]:
    """command name -> (argv, the files it writes)."""
    evaluate = ["evaluate", f"classification.predictions={predictions}", "bootstrap.n_resamples=20",
                f"output_dir={out}", "formats=[json,csv,html]"]
    return {
        "convert": (["convert", str(series), str(out / "ct.nii.gz")], [out / "ct.nii.gz"]),
        "index": (["index", str(nifti_source), str(out / "index.json"), "folds.k=2"],
                  [out / "index.json"]),
        "evaluate": (evaluate, [out / n for n in ("results.json", "summary.json", "per_case.csv", "metrics.csv",
                                                  "report.html")]),
    }


def assert_one_paragraph(err: str, command: str, path: Path, *words: str) -> None:
    text = err.strip()
    assert text.startswith(f"medeff {command}: error:"), text
    assert "\n" not in text and "Traceback" not in text, text  # one line: never wrapped on a pipe
    assert str(path) in text, (path, text)
    assert "Fix:" in text, text
    for w in words:
        assert w in text, (w, text)


def assert_nothing_written(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], f"left behind: {left}"


COMMANDS = ["convert", "index", "evaluate"]


# ----------------------------------------------------------------------------------------------- permissions
@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_folder_os_access(command, series, nifti_source, predictions, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    argv, files = _commands(series, nifti_source, predictions, out)[command]
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out and mode & os.W_OK
                        else real(p, mode, **kw))
    assert main(argv) == 2
    assert_one_paragraph(capsys.readouterr().err, command, files[0], "not writable")
    assert_nothing_written(out)


@pytest.mark.parametrize("command", COMMANDS)
def test_permission_denied_on_create(command, series, nifti_source, predictions, tmp_path, capsys, monkeypatch):
    """os.access says yes (as it does for root), but creating the file fails with EACCES."""
    import tempfile

    out = tmp_path / "out"
    out.mkdir()
    argv, files = _commands(series, nifti_source, predictions, out)[command]

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    assert main(argv) == 2
    assert_one_paragraph(capsys.readouterr().err, command, files[0], "Permission denied", "permissions")
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------- disk full
class _FullDiskFile:
    """A file object that writes half of the first large chunk, then fails with ENOSPC."""

    def __init__(self, fh):
        self._fh = fh

    def write(self, data):
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


@pytest.mark.parametrize("command", COMMANDS)
def test_disk_full_mid_write(command, series, nifti_source, predictions, tmp_path, capsys, monkeypatch):
    import builtins

    import nibabel as nib

    import medeff.utils.atomic as atomic

    out = tmp_path / "out"
    out.mkdir()
    argv, files = _commands(series, nifti_source, predictions, out)[command]
    real_open = builtins.open
    monkeypatch.setattr(atomic, "open", lambda *a, **k: _FullDiskFile(real_open(*a, **k))
                        if "w" in (a[1] if len(a) > 1 else k.get("mode", "r")) else real_open(*a, **k), raising=False)
    real_save = nib.save

    def save_half(img, filename):
        real_save(img, filename)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(nib, "save", save_half)
    assert main(argv) == 2
    assert_one_paragraph(capsys.readouterr().err, command, files[0], "No space left", "free space")
    assert_nothing_written(out)


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root with CAP_SYS_ADMIN); the monkeypatched tests cover this")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


@pytest.mark.parametrize("command", COMMANDS)
def test_real_small_and_read_only_disks(command, series, nifti_source, predictions, tmp_path, capsys):
    with _tmpfs(tmp_path / "full", "size=12k") as out:
        argv, files = _commands(series, nifti_source, predictions, out)[command]
        if command == "index":  # the index is small: fill the disk first
            with contextlib.suppress(OSError), open(out / "filler", "wb") as fh:
                fh.write(b"\0" * (1 << 20))
        assert main(argv) == 2
        assert_one_paragraph(capsys.readouterr().err, command, files[0], "free space")
        assert sorted(p.name for p in out.iterdir()) in ([], ["filler"])
    with _tmpfs(tmp_path / "ro", "ro,size=1m") as out:
        argv, files = _commands(series, nifti_source, predictions, out)[command]
        assert main(argv) == 2
        assert_one_paragraph(capsys.readouterr().err, command, files[0], "writ")
        assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------- overwrite
@pytest.mark.parametrize("command", COMMANDS)
def test_existing_outputs_are_kept_unless_asked(command, series, nifti_source, predictions, tmp_path, capsys):
    out = tmp_path / "out"
    argv, files = _commands(series, nifti_source, predictions, out)[command]
    assert main(argv) == 0
    before = {p: p.read_bytes() for p in files}
    os.utime(files[0], (1, 1))
    capsys.readouterr()
    assert main(argv) == 2
    assert_one_paragraph(capsys.readouterr().err, command, files[0], "already exists", "overwrite")
    assert {p: p.read_bytes() for p in files} == before and files[0].stat().st_mtime == 1
    again = argv + (["--overwrite"] if command == "convert" else ["overwrite=true"])
    assert main(again) == 0
    assert files[0].stat().st_mtime > 1
    if command == "index":
        assert json.loads(files[0].read_text())["num_cases"] == 4


def test_report_refuses_before_writing_anything(predictions, tmp_path, capsys):
    """One existing report file: nothing else is written either (no mixed report)."""
    from medeff.evaluation import evaluate_classification, save_results

    res = save_results(evaluate_classification(predictions, n_resamples=20), tmp_path / "results.json")
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.csv").write_text("old\n")
    assert main(["report", f"results={res}", f"output_dir={out}", "formats=[json,csv,html]"]) == 2
    assert_one_paragraph(capsys.readouterr().err, "report", out / "metrics.csv", "already exists")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]
    assert (out / "metrics.csv").read_text() == "old\n"
    assert main(["report", f"results={res}", f"output_dir={out}", "formats=[json,csv,html]", "overwrite=true"]) == 0
    assert (out / "metrics.csv").read_text() != "old\n"


def test_output_write_error_is_a_medeff_error():
    from medeff.utils.atomic import write_error

    exc = write_error("/x/y.json", OSError(errno.ENOSPC, "No space left on device"))
    assert isinstance(exc, OutputWriteError) and "free space" in str(exc) and exc.path == "/x/y.json"


def test_report_failure_midway_removes_the_files_it_created(predictions, tmp_path, monkeypatch):
    import medeff.evaluation.report as report
    from medeff.evaluation import evaluate_classification, render_report
    from medeff.utils.atomic import write_error

    res = evaluate_classification(predictions, n_resamples=20)

    def disk_full(path, *args, **kwargs):  # the PDF is written last, after summary.json and the CSVs
        raise write_error(path, OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(report, "_write_pdf", disk_full)
    out = tmp_path / "r"
    with pytest.raises(OutputWriteError, match="report.pdf"):
        render_report(res, out, ("json", "csv", "pdf"))
    assert_nothing_written(out)


# ----------------------------------------------------------------------------------------------- file modes
@contextlib.contextmanager
def _umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
def test_atomic_writers_give_files_the_umask_mode(tmp_path, mask):
    """mkstemp creates 0600; every atomically written file ends up 0666 & ~umask, like a plainly created file."""
    import nibabel as nib

    from medeff.utils.atomic import atomic_open, atomic_path, current_umask, write_json_atomic, write_text_atomic

    with _umask(mask):
        assert current_umask() == mask
        (tmp_path / "plain.txt").write_text("x")  # the reference: what open() gives
        write_text_atomic(tmp_path / "a.txt", "x")
        write_json_atomic(tmp_path / "b.json", {"x": 1})
        with atomic_open(tmp_path / "c.bin", "wb") as fh:
            fh.write(b"x")
        with atomic_path(tmp_path / "d.nii.gz") as tmp:
            nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4)), str(tmp))
        write_text_atomic(tmp_path / "a.txt", "replaced")  # overwriting keeps the rule
    want = oct(0o666 & ~mask)
    assert _modes(tmp_path) == {n: want for n in ("plain.txt", "a.txt", "b.json", "c.bin", "d.nii.gz")}


@pytest.mark.parametrize("mask", [0o022, 0o077], ids=["umask022", "umask077"])
@pytest.mark.parametrize("command", COMMANDS)
def test_command_outputs_follow_the_umask(command, mask, series, nifti_source, predictions, tmp_path):
    """Reports, indexes and converted images are readable by others exactly when the umask says so."""
    out = tmp_path / "out"
    argv, files = _commands(series, nifti_source, predictions, out)[command]
    with _umask(mask):
        assert main(argv) == 0
    modes = _modes(out)
    assert set(files) <= {out / n for n in modes}, modes
    assert set(modes.values()) == {oct(0o666 & ~mask)}, modes
