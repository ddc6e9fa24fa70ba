"""Progress bars (medeff.utils.progress): drawn on a terminal only, silent when piped or quiet, never in workers."""

from __future__ import annotations

import io
import multiprocessing
import sys

import pytest
from rich.console import Console

from medeff.utils import progress
from medeff.utils.progress import progress_enabled, set_quiet, track

BAR = "━"  # rich's bar glyph


class FakeTTY(io.StringIO):
    """A stderr that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_state(monkeypatch):
    for var in ("MEDEFF_QUIET", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(progress, "DELAY_S", 0.0)  # draw at once (the delay has its own test)
    set_quiet(False)
    yield
    set_quiet(False)


def fake_tty_stderr(monkeypatch) -> FakeTTY:
    """Make stderr a terminal; called in the test body (pytest's capture resets sys.stderr after fixtures)."""
    fake = FakeTTY()
    monkeypatch.setattr(sys, "stderr", fake)
    return fake


def terminal() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=100), buf


def test_bar_is_drawn_on_an_injected_terminal_console():
    console, buf = terminal()
    assert list(track(range(5), "Indexing cases", console=console)) == [0, 1, 2, 3, 4]
    text = buf.getvalue()
    assert "Indexing cases" in text and "5/5" in text and BAR in text


def test_bar_is_drawn_on_stderr_when_it_is_a_terminal(monkeypatch):
    tty_stderr = fake_tty_stderr(monkeypatch)
    assert list(track(iter("abc"), "Reading DICOM headers", total=3)) == ["a", "b", "c"]
    assert "Reading DICOM headers" in tty_stderr.getvalue() and "3/3" in tty_stderr.getvalue()
    assert sys.stderr is tty_stderr  # the redirection made while the bar was shown is undone


def test_nothing_is_printed_when_stderr_is_not_a_terminal(capsys):
    assert not progress_enabled()
    assert list(track(range(4), "Indexing cases")) == [0, 1, 2, 3]
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_set_quiet_silences_a_terminal(monkeypatch):
    tty_stderr = fake_tty_stderr(monkeypatch)
    set_quiet(True)
    console, buf = terminal()
    assert list(track(range(3), "Cutting crops", console=console)) == [0, 1, 2]
    assert list(track(range(3), "Cutting crops")) == [0, 1, 2]
    assert buf.getvalue() == "" and tty_stderr.getvalue() == ""


@pytest.mark.parametrize("value, quiet", [("1", True), ("true", True), ("0", False), ("", False)])
def test_environment_variable_controls_quiet(monkeypatch, value, quiet):
    monkeypatch.setenv("MEDEFF_QUIET", value)
    console, buf = terminal()
    list(track(range(2), "Predicting cases", console=console))
    assert progress.is_quiet() is quiet
    assert (buf.getvalue() == "") is quiet


def test_every_item_once_without_len_and_with_an_unknown_total():
    console, buf = terminal()
    items = [object() for _ in range(7)]
    assert list(track((x for x in items), "Bootstrap", console=console)) == items
    assert "7" in buf.getvalue()  # the count is shown even though the total was unknown


def test_exception_from_the_iterable_propagates_and_the_bar_is_removed(monkeypatch):
    tty_stderr = fake_tty_stderr(monkeypatch)
    def broken():
        yield 1
        raise ValueError("unreadable case")

    seen = []
    with pytest.raises(ValueError, match="unreadable case"):
        for x in track(broken(), "Indexing cases"):
            seen.append(x)
    assert seen == [1]
    assert sys.stderr is tty_stderr
    assert list(track(range(2), "Next step")) == [0, 1]  # a later step draws its own bar again
    assert "Next step" in tty_stderr.getvalue()


def test_exception_from_the_loop_body_propagates_and_the_bar_is_removed(monkeypatch):
    tty_stderr = fake_tty_stderr(monkeypatch)
    with pytest.raises(KeyError):
        with track(range(10), "Writing crops") as items:
            for x in items:
                if x == 3:
                    raise KeyError(x)
    assert sys.stderr is tty_stderr
    assert "3/10" in tty_stderr.getvalue()
    assert list(track(range(2), "Next step")) == [0, 1]
    assert "Next step" in tty_stderr.getvalue()


def test_nested_loops_share_one_display():
    console, buf = terminal()
    out = [(i, j) for i in track(range(2), "Predicting cases", console=console)
           for j in track(range(3), "Reading DICOM slices", console=console)]
    assert out == [(i, j) for i in range(2) for j in range(3)]
    text = buf.getvalue()
    assert "Predicting cases" in text and "Reading DICOM slices" in text and "2/2" in text


def test_a_transient_step_leaves_no_line():
    console, buf = terminal()
    assert list(track(range(3), "Reading DICOM headers", transient=True, console=console)) == [0, 1, 2]
    assert buf.getvalue().endswith("\r\x1b[2K\x1b[?25h")  # the line is erased at the end, no newline left


def test_short_steps_draw_nothing_and_long_ones_appear_after_the_delay(monkeypatch):
    clock = iter(range(0, 1000))  # one second per call: deterministic, not wall-clock
    monkeypatch.setattr(progress, "_now", lambda: next(clock))
    monkeypatch.setattr(progress, "DELAY_S", 3.5)
    console, buf = terminal()
    assert list(track(range(2), "Quick step", console=console)) == [0, 1]
    assert buf.getvalue() == ""
    assert list(track(range(6), "Slow step", console=console)) == list(range(6))
    assert "Slow step" in buf.getvalue() and "6/6" in buf.getvalue()  # the count includes items before the bar


def test_an_outer_loop_shown_after_its_inner_loop_keeps_its_line(monkeypatch):
    clock = iter(range(0, 1000))
    monkeypatch.setattr(progress, "_now", lambda: next(clock))
    monkeypatch.setattr(progress, "DELAY_S", 4.5)
    console, buf = terminal()
    for _ in track(range(3), "Outer step", console=console):
        assert list(track(range(8), "Inner step", console=console)) == list(range(8))
    assert "Outer step" in buf.getvalue() and "3/3" in buf.getvalue()
    monkeypatch.setattr(progress, "DELAY_S", 0.0)
    assert list(track(range(1), "Later step", console=console)) == [0]  # the display was released
    assert "Later step" in buf.getvalue()


def test_log_lines_go_above_the_bar_when_stdout_is_the_terminal_too(monkeypatch):
    tty_stderr = fake_tty_stderr(monkeypatch)
    monkeypatch.setattr(sys, "stdout", tty_stderr)
    for i in track(range(2), "Indexing cases"):
        print(f"case {i} done")  # what a log handler writing to stdout does
    assert "case 0 done" in tty_stderr.getvalue() and "case 1 done" in tty_stderr.getvalue()
    assert sys.stdout is tty_stderr


def test_a_redirected_stdout_keeps_its_lines_while_a_bar_is_shown(monkeypatch):
    tty_stderr = fake_tty_stderr(monkeypatch)
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stdout", log_file)
    for i in track(range(2), "Indexing cases"):
        print(f"case {i} done")
    assert log_file.getvalue() == "case 0 done\ncase 1 done\n"
    assert "Indexing cases" in tty_stderr.getvalue() and "case 0" not in tty_stderr.getvalue()


def _child_report(conn):
    conn.send((type(sys.stdout).__name__, type(sys.stderr).__name__,
               progress_enabled(Console(file=io.StringIO(), force_terminal=True))))
    print("child writes without blocking")
    conn.close()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_worker_processes_never_draw_and_get_the_real_streams(monkeypatch):
    fake_tty_stderr(monkeypatch)
    ctx = multiprocessing.get_context("fork")
    for _ in track(range(1), "Predicting cases"):  # fork while a bar is shown
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child_report, args=(child,))
        proc.start()
        report = parent.recv() if parent.poll(60) else None
        proc.join(60)
    assert proc.exitcode == 0
    stdout_type, stderr_type, enabled = report
    assert stdout_type != "FileProxy" and stderr_type == "FakeTTY" and enabled is False


def test_cli_index_prints_no_progress_when_stderr_is_not_a_terminal(tmp_path, capsys):
    from medeff.cli.main import main
    from medeff.demo.phantom import make_nodule_archive

    make_nodule_archive(tmp_path / "arc", n_exams=6, seed=3)
    assert main(["index", str(tmp_path / "arc"), str(tmp_path / "i.json")]) == 0
    captured = capsys.readouterr()
    assert "Indexing cases" not in captured.out + captured.err
    assert BAR not in captured.out + captured.err


def test_cli_index_draws_on_a_terminal_unless_quiet(tmp_path, monkeypatch):
    tty_stderr = fake_tty_stderr(monkeypatch)
    from medeff.cli.main import main
    from medeff.demo.phantom import make_nodule_archive

    make_nodule_archive(tmp_path / "arc", n_exams=6, seed=3)
    assert main(["--quiet", "index", str(tmp_path / "arc"), str(tmp_path / "q.json")]) == 0
    assert "Indexing cases" not in tty_stderr.getvalue() and BAR not in tty_stderr.getvalue()
    assert main(["index", str(tmp_path / "arc"), str(tmp_path / "i.json")]) == 0
    assert "Indexing cases" in tty_stderr.getvalue()  # the same call without --quiet shows the step


def test_segmentation_scoring_shows_a_count_and_no_file_names(tmp_path, monkeypatch):
    import nibabel as nib
    import numpy as np

    from medeff.evaluation import evaluate_segmentation

    for role, shift in (("ref", 0), ("pred", 1)):
        (tmp_path / role).mkdir()
        for i in range(3):
            arr = np.zeros((12, 12, 6), np.uint8)
            arr[2 + shift:8 + shift, 2:8, 1:5] = 1
            nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / role / f"DOE_JANE_{i}.nii.gz")
    tty_stderr = fake_tty_stderr(monkeypatch)
    evaluate_segmentation(prediction_dir=tmp_path / "pred", reference_dir=tmp_path / "ref", n_resamples=10)
    shown = tty_stderr.getvalue()
    assert "Scoring cases" in shown and "3/3" in shown
    assert "DOE_JANE" not in shown


def test_classification_subgroup_intervals_show_a_count(monkeypatch):
    import numpy as np
    import pandas as pd

    from medeff.evaluation.subgroups import subgroup_tables

    rng = np.random.default_rng(0)
    n = 40
    y = np.arange(n) % 2 == 0
    scores = np.clip(y * 0.3 + rng.random(n) * 0.7, 0, 1)
    cases = pd.DataFrame({"scanner": np.array(["A", "B", "C", "D"])[np.arange(n) % 4]})
    tty_stderr = fake_tty_stderr(monkeypatch)
    tables = subgroup_tables(cases, [{"column": "scanner"}], scores, y, np.arange(n).astype(str), 0.5,
                             n_resamples=20, confidence=0.95, method="percentile", seed=0)
    assert [r["level"] for r in tables[0]["rows"]] == ["A", "B", "C", "D"]
    assert "Subgroup intervals" in tty_stderr.getvalue() and "4/4" in tty_stderr.getvalue()


def test_other_threads_never_draw():
    import threading

    console, buf = terminal()
    seen: list[int] = []
    worker = threading.Thread(target=lambda: seen.extend(track(range(5), "Reading DICOM headers", console=console)))
    worker.start()
    worker.join()
    assert seen == [0, 1, 2, 3, 4] and buf.getvalue() == ""
    assert list(track(range(2), "Indexing cases", console=console)) == [0, 1]
    assert "Indexing cases" in buf.getvalue()  # the main thread does
