"""Package skeleton: CLI dispatch, config discovery, errors, atomic writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medeff.cli.main import main
from medeff.config import conf_dir
from medeff.errors import ConfigError, OutputExistsError
from medeff.utils.atomic import atomic_path, write_json_atomic
from medeff.utils.options import look_up


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert "medeff" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "COMMAND" in capsys.readouterr().out


def test_conf_dir_found():
    d = conf_dir()
    assert (d / "paths" / "default.yaml").is_file()


def test_conf_dir_env_override(tmp_path, monkeypatch):
    (tmp_path / "paths").mkdir()
    (tmp_path / "paths" / "default.yaml").write_text("output_dir: x\n")
    monkeypatch.setenv("MEDEFF_CONF_DIR", str(tmp_path))
    assert conf_dir() == tmp_path


def test_look_up_did_you_mean():
    assert look_up("batch", ["batch", "instance", "group"], what="norm") == "batch"
    with pytest.raises(ConfigError) as exc:
        look_up("bach", ["batch", "instance", "group"], what="norm", key="model.norm")
    msg = str(exc.value)
    assert "did you mean 'batch'" in msg and "model.norm" in msg and "instance" in msg


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_refuses_overwrite(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_json_atomic(target, {"a": 2}, overwrite=False)


def test_console_script_runs():
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-m", "medeff.cli.main", "--help"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "medeff" in out.stdout
