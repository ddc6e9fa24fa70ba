"""Contradictory or misspelt configuration is a clear ConfigError: batch sizes below 1, keys that the evaluate,
report, predict and index configs do not define (with a "did you mean"), and a pickled checkpoint is refused
without repeating torch's advice to load it unsafely."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from medeff.cli.evaluate import evaluate_from_config
from medeff.cli.main import main
from medeff.config import compose
from medeff.engine.checkpoint import load_checkpoint
from medeff.errors import CheckpointError, ConfigError
from medeff.models.weights import read_state_dict

PREDICT = ["ckpt=a.ckpt", "input=b.nii.gz"]


@pytest.mark.parametrize("value", ["0", "-1", "-16", "1.5", "abc"])
@pytest.mark.parametrize("config, key, base", [("predict", "batch_size", PREDICT),
                                               ("train", "data.batch_size", ["data.index=x.json"]),
                                               ("train", "data.val_batch_size",
                                                ["data.index=x.json", "experiment=organ_seg_3d"])])
def test_batch_size_below_one_is_refused(config, key, base, value):
    with pytest.raises(ConfigError, match=rf"Config key '{key}' is .*whole number of at least 1"):
        compose(config, [*base, f"{key}={value}"])


def test_train_cli_refuses_batch_size_zero_in_one_line(tmp_path, capsys):
    assert main(["train", f"data.index={tmp_path / 'x.json'}", f"run_dir={tmp_path / 'run'}",
                 "data.batch_size=0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'data.batch_size' is 0" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("config, base, override, shown, meant", [
    ("evaluate", [], "+classification.aggregrate=mean", "classification.aggregrate", "classification.aggregate"),
    ("evaluate", [], "+bootstrap.n_resample=10", "bootstrap.n_resample", "bootstrap.n_resamples"),
    ("evaluate", [], "+bootsrap.n_resamples=10", "bootsrap", "bootstrap"),
    ("evaluate", [], "classification.columns={case: id, lable: y}", "classification.columns.lable",
     "classification.columns.label"),
    ("report", [], "+formts=[json]", "formts", "formats"),
    ("predict", PREDICT, "+sliding_window.overlapp=0.5", "sliding_window.overlapp", "sliding_window.overlap"),
    ("predict", PREDICT, "+tresholds=0.3", "tresholds", "threshold"),
    ("index", [], "+folds.kk=3", "folds.kk", "folds.k"),
    ("index", [], "folds.kk=3", "folds.kk", "folds.k"),
])
def test_unknown_key_is_refused_with_a_suggestion(config, base, override, shown, meant):
    with pytest.raises(ConfigError) as info:
        compose(config, [*base, override])
    text = str(info.value)
    assert f"'{shown}' is not a key of conf/{config}.yaml" in text, text
    assert f"did you mean '{meant}'" in text, text
    assert "use +" not in text  # Hydra's advice to append the key would be wrong here


@pytest.mark.parametrize("config, overrides", [
    ("index", ["+labels.spleen=1"]),  # labels: {} takes the user's names
    ("evaluate", ["classification.compare={score_column: prob_b, name: B}"]),  # compare: null takes a mapping
    ("evaluate", ["+segmentation.labels.1=spleen"]),
    ("predict", [*PREDICT, "+expect.task=classification"]),
])
def test_keys_below_free_form_values_are_accepted(config, overrides):
    compose(config, overrides)


def test_evaluate_cli_names_the_misspelt_key(tmp_path, capsys):
    out = tmp_path / "eval"
    rc = main(["evaluate", f"classification.predictions={tmp_path / 'p.csv'}", f"output_dir={out}",
               "+classification.aggregrate=mean"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err and "TypeError" not in err
    assert "did you mean 'classification.aggregate'" in err and not out.exists()


def test_evaluate_from_config_refuses_an_unknown_key_in_a_plain_dict():
    cfg = OmegaConf.to_container(compose("evaluate", ["classification.predictions=p.csv"]), resolve=True)
    cfg["classification"]["aggregrate"] = "mean"
    with pytest.raises(ConfigError, match="did you mean 'classification.aggregate'"):
        evaluate_from_config(cfg)


def _no_unsafe_advice(text: str) -> None:
    assert "weights_only=False" not in text and "weights_only` set to `False" not in text, text
    assert "can still be loaded" not in text and "add_safe_globals" not in text and "\x1b" not in text, text


def test_pickled_checkpoint_refusal_does_not_repeat_torchs_advice(tmp_path, capsys):
    path = tmp_path / "pickled.ckpt"
    torch.save({"state_dict": {}, "medeff": {"dtype": np.dtype("float32")}}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "holds objects other than tensors" in text and "numpy.dtype" in text
    _no_unsafe_advice(text)
    rc = main(["predict", f"ckpt={path}", f"input={tmp_path}", f"output_dir={tmp_path / 'out'}"])
    err = capsys.readouterr().err
    assert rc == 2 and "numpy.dtype" in err
    _no_unsafe_advice(err)


def test_pickled_weights_file_refusal_does_not_repeat_torchs_advice(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"w": torch.zeros(2), "dtype": np.dtype("float32")}, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    assert "numpy.dtype" in str(info.value)
    _no_unsafe_advice(str(info.value))
