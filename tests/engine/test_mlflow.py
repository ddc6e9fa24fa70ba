"""``logger=mlflow``: a tiny training run writes an MLflow run with metrics; without mlflow, a clear ConfigError."""

from __future__ import annotations

import importlib.util

import pytest
from .helpers import fast_overrides

from medeff.config import compose
from medeff.engine.train import train
from medeff.errors import ConfigError

HAVE_MLFLOW = importlib.util.find_spec("mlflow") is not None


def _cfg(nodule_index, run_dir):
    return compose("train", ["experiment=nodule_2d", f"data.index={nodule_index}", "data.batch_size=8",
                             "logger=mlflow", "callbacks=none"] + fast_overrides(run_dir))


def test_mlflow_run_is_written_to_the_local_store(nodule_index, tmp_path):
    cfg = _cfg(nodule_index, tmp_path / "run")
    if not HAVE_MLFLOW:  # the environment without the extra: the option must say how to get it
        with pytest.raises(ConfigError, match=r"medeff\[mlflow\]"):
            train(cfg)
        return
    from mlflow.tracking import MlflowClient

    from medeff.engine.mlflow_logger import local_tracking_uri

    result = train(cfg)
    store = tmp_path / "run" / "mlruns"
    assert store.is_dir()
    client = MlflowClient(tracking_uri=local_tracking_uri(store))
    exp = client.get_experiment_by_name("nodule_2d")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "fold0" and run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert {"train/loss_step", "val/loss", "val/auc"} <= set(metrics), sorted(metrics)
    assert metrics["val/loss"] == pytest.approx(result["metrics"]["val/loss"], rel=1e-5)
    history = client.get_metric_history(run.info.run_id, "train/loss_step")
    assert len(history) == 2  # debug=fast: two training steps, logged every step


def test_missing_mlflow_is_a_config_error_naming_the_extra(monkeypatch, tmp_path):
    import medeff.engine.mlflow_logger as M

    real = importlib.util.find_spec
    monkeypatch.setattr(M.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError) as info:
        M.mlflow_logger(save_dir=tmp_path / "mlruns")
    text = str(info.value)
    assert "logger=mlflow" in text and 'medeff[mlflow]' in text and "mlflow-skinny" in text
    assert not (tmp_path / "mlruns").exists()
