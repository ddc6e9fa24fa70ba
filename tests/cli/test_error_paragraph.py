"""CLI errors are one line per paragraph on a stderr that is not a terminal, whatever the path length or COLUMNS."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import pytest

from medeff.cli.main import format_error, main


def _short_dir() -> Path:
    """A folder with a path much shorter than pytest's tmp_path."""
    return Path(tempfile.mkdtemp(prefix="m", dir="/tmp" if Path("/tmp").is_dir() else None))


@pytest.mark.parametrize("length", ["long", "short"])
def test_missing_source_error_is_one_line_with_the_whole_phrase(tmp_path, capsys, monkeypatch, length):
    monkeypatch.setenv("COLUMNS", "20")
    if length == "long":
        base = tmp_path / ("a_rather_long_folder_name_" * 4) / ("another_long_part_" * 5)
        base.mkdir(parents=True)
    else:
        base = _short_dir()
    try:
        missing = base / "nope"
        assert main(["index", str(missing), str(base / "o.json")]) == 2
        err = capsys.readouterr().err
    finally:
        if length == "short":
            shutil.rmtree(base)
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, err
    assert lines[0].startswith("medeff index: error: ")
    assert str(missing) in lines[0] and "does not exist" in lines[0]
    assert "Traceback" not in err


def test_a_config_error_is_one_line_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "20")
    assert main(["index", str(tmp_path), str(tmp_path / "o.json"), "folds.kk=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "folds.kk" in err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_only_a_terminal_gets_wrapped_lines_and_never_split_words(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    word = "/a/path/" + "x" * 80
    text = f"medeff index: error: Source '{word}' does not exist. Fix: give an existing folder.\nsecond problem"
    assert format_error(text, io.StringIO()) == text
    wrapped = format_error(text, _Tty())
    assert wrapped != text and f"'{word}'" in wrapped.split()  # the long path is kept whole on its own line
    assert " ".join(wrapped.split()) == " ".join(text.split())
    assert all(len(line) <= 60 for line in wrapped.splitlines() if word not in line)
