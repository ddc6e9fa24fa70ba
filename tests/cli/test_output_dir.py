"""`output_dir` names the output folder of every configured command; evaluate's and report's former `out_dir` still
works, with a deprecation warning."""

from __future__ import annotations

import logging

import pytest
from omegaconf import OmegaConf

from medeff.cli.evaluate import evaluate_from_config
from medeff.cli.main import main
from medeff.config import compose, rename_deprecated_keys
from medeff.errors import ConfigError


@pytest.fixture()
def warnings_seen(caplog):
    """Warnings of medeff.config, whatever the state of the ``medeff`` logger (its propagation is switched off once
    a command has set up logging, so caplog's root handler is attached directly)."""
    logger = logging.getLogger("medeff.config")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger="medeff.config")
    yield caplog
    logger.removeHandler(caplog.handler)


def _preds(tmp_path):
    path = tmp_path / "preds.csv"
    path.write_text("case_id,label,score\n" + "".join(f"c{i},{i % 2},{0.2 + 0.6 * (i % 2) - 0.01 * i}\n"
                                                      for i in range(12)))
    return path


@pytest.mark.parametrize("config", ["evaluate", "report", "predict"])
def test_every_command_names_its_output_folder_output_dir(config):
    cfg = compose(config, ["ckpt=a", "input=b"] if config == "predict" else [])
    assert "output_dir" in cfg and "out_dir" not in cfg


@pytest.mark.parametrize("config", ["evaluate", "report"])
def test_out_dir_still_works_and_warns(config, warnings_seen):
    cfg = compose(config, ["out_dir=somewhere/else"])
    assert cfg.output_dir == "somewhere/else"
    assert any("'out_dir'" in r.getMessage() and "deprecated" in r.getMessage() and "'output_dir'" in r.getMessage()
               for r in warnings_seen.records), warnings_seen.records


def test_output_dir_gives_no_warning(warnings_seen):
    assert compose("evaluate", ["output_dir=x"]).output_dir == "x"
    assert not [r for r in warnings_seen.records if "deprecated" in r.getMessage()]


def test_out_dir_and_output_dir_with_different_values_is_an_error():
    with pytest.raises(ConfigError, match=r"both 'output_dir' and its deprecated name 'out_dir'"):
        compose("evaluate", ["out_dir=a", "output_dir=b"])
    assert compose("evaluate", ["out_dir=a", "output_dir=a"]).output_dir == "a"


@pytest.mark.parametrize("key", ["output_dir", "out_dir"])
def test_evaluate_and_report_write_into_the_folder_under_either_name(tmp_path, capsys, key):
    out = tmp_path / "eval"
    assert main(["evaluate", f"classification.predictions={_preds(tmp_path)}", f"{key}={out}",
                 "bootstrap.n_resamples=20", "formats=[json]"]) == 0, capsys.readouterr().err
    assert (out / "results.json").is_file() and (out / "summary.json").is_file()
    again = tmp_path / "again"
    assert main(["report", f"results={out / 'results.json'}", f"{key}={again}", "formats=[json]"]) == 0
    assert (again / "summary.json").is_file()


def test_a_plain_dict_with_out_dir_is_renamed(warnings_seen):
    cfg = rename_deprecated_keys("evaluate", {"out_dir": "x", "output_dir": "default"})
    assert cfg == {"output_dir": "x"}
    assert any("deprecated" in r.getMessage() for r in warnings_seen.records)


def test_evaluate_from_config_accepts_an_old_dict(tmp_path):
    cfg = OmegaConf.to_container(compose("evaluate", [f"classification.predictions={_preds(tmp_path)}",
                                                      "bootstrap.n_resamples=20"]), resolve=True)
    cfg["out_dir"] = cfg.pop("output_dir")  # as written before output_dir
    results = evaluate_from_config(cfg)  # not refused as an unknown key
    assert results["kind"] == "classification"
