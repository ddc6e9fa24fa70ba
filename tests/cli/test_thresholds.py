"""A score threshold is a finite number in [0, 1]: anything else is a ConfigError naming the key, for `medeff predict`
(``threshold``) and `medeff evaluate` (``classification.threshold``, ``classification.target_sensitivities``)."""

from __future__ import annotations

import pytest

from medeff.cli.evaluate import evaluate_from_config
from medeff.cli.main import main
from medeff.config import compose
from medeff.engine.predict import predict
from medeff.errors import ConfigError
from omegaconf import OmegaConf

BAD = ["nan", "inf", "-inf", "2", "-0.1", "1.0001", "abc", "true"]


@pytest.mark.parametrize("value", BAD)
def test_predict_refuses_a_threshold_outside_0_1(value):
    with pytest.raises(ConfigError, match=r"Config key 'threshold' is .*finite number between 0 and 1"):
        compose("predict", ["ckpt=a.ckpt", "input=b.nii.gz", f"threshold={value}"])


@pytest.mark.parametrize("value", ["0", "1", "0.35", "null"])
def test_predict_accepts_thresholds_in_0_1_and_null(value):
    cfg = compose("predict", ["ckpt=a.ckpt", "input=b.nii.gz", f"threshold={value}"])
    assert cfg.threshold == (None if value == "null" else float(value))


@pytest.mark.parametrize("value", [float("nan"), 2.0, "abc"])
def test_predict_function_checks_a_plain_dict_before_loading_the_checkpoint(tmp_path, value):
    cfg = {"ckpt": str(tmp_path / "missing.ckpt"), "input": str(tmp_path), "threshold": value,
           "output_dir": str(tmp_path / "out")}
    with pytest.raises(ConfigError, match="'threshold'"):  # not a CheckpointError: the config is checked first
        predict(cfg)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["abc", "nan", "2"])
def test_predict_cli_gives_one_paragraph_not_a_traceback(tmp_path, capsys, value):
    rc = main(["predict", f"ckpt={tmp_path / 'a.ckpt'}", f"input={tmp_path}", f"output_dir={tmp_path / 'out'}",
               f"threshold={value}"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("medeff predict: error: Config key 'threshold'"), err


@pytest.mark.parametrize("override", ["classification.threshold=nan", "classification.threshold=2",
                                      "classification.threshold=abc", "classification.threshold=null",
                                      "classification.target_sensitivities=[0.9,nan]"])
def test_evaluate_refuses_a_threshold_outside_0_1(tmp_path, capsys, override):
    preds = tmp_path / "preds.csv"
    preds.write_text("case_id,label,score\n" + "".join(f"c{i},{i % 2},{(i % 2) * 0.5 + 0.1 * (i % 3)}\n"
                                                       for i in range(12)))
    out = tmp_path / "eval"
    rc = main(["evaluate", f"classification.predictions={preds}", f"output_dir={out}", "bootstrap.n_resamples=20",
               "render=false", override])
    err = capsys.readouterr().err
    key = override.split("=")[0]
    assert rc == 2 and f"Config key '{key}" in err and "Traceback" not in err, err
    assert not out.exists()


def test_evaluate_from_config_checks_a_plain_dict():
    cfg = OmegaConf.to_container(compose("evaluate", ["classification.predictions=p.csv"]), resolve=True)
    cfg["classification"]["threshold"] = float("nan")
    with pytest.raises(ConfigError, match="classification.threshold"):
        evaluate_from_config(cfg)
