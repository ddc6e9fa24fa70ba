"""Sweeps through Hydra's own multirun: the Optuna sweeper (``hparams_search=lr_sweep``) and the basic launcher."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import yaml

from .helpers import fast_overrides

REPO = Path(__file__).resolve().parents[2]


def test_lr_sweep_runs_optuna_trials_and_records_the_best(nodule_index, tmp_path, monkeypatch):
    import medeff.engine.train as T
    from medeff.cli.main import main

    trials: list[dict] = []
    real_train = T.train

    def recording_train(cfg):
        result = real_train(cfg)
        trials.append({"lr": float(cfg.optimizer.lr), "weight_decay": float(cfg.optimizer.weight_decay),
                       "value": result["optimized_metric"], "run_dir": result["run_dir"]})
        return result

    monkeypatch.setattr(T, "train", recording_train)
    sweep_dir, run_dir = tmp_path / "sweep", tmp_path / "run"
    overrides = ["hparams_search=lr_sweep", "experiment=nodule_2d", f"data.index={nodule_index}",
                 "data.batch_size=8", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "logger=none",
                 "callbacks.lr_monitor=null", "optimized_metric=val/loss", "hydra.sweeper.direction=minimize",
                 "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=2",
                 f"hydra.sweep.dir={sweep_dir}"] + fast_overrides(run_dir)
    assert main(["train", *overrides]) == 0  # no -m: the hparams_search config asks for the multirun

    assert len(trials) == 3
    assert len({t["run_dir"] for t in trials}) == 3  # each trial in its own sub-folder of run_dir
    for t in trials:
        assert Path(t["run_dir"]).parent == run_dir and "optimizer.lr=" in Path(t["run_dir"]).name
        assert (Path(t["run_dir"]) / "checkpoints" / "last.ckpt").is_file()
        assert math.isfinite(t["value"])
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    best = min(trials, key=lambda t: t["value"])
    assert results["name"] == "optuna"
    assert results["best_value"] == pytest.approx(best["value"], rel=1e-6)
    assert results["best_params"]["optimizer.lr"] == pytest.approx(best["lr"], rel=1e-6)
    assert results["best_params"]["optimizer.weight_decay"] == pytest.approx(best["weight_decay"])
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1", "2"]  # Hydra's per-trial record


def test_grid_sweep_with_m_trains_each_point_in_a_named_folder(nodule_index, tmp_path, monkeypatch):
    import medeff.engine.train as T
    from medeff.cli.main import main

    seen: list[tuple[int, str]] = []
    monkeypatch.setattr(T, "train", lambda cfg: seen.append((int(cfg.seed), str(cfg.run_dir))) or
                        {"metrics": {"val/auc": 0.5}, "optimized_metric": 0.5, "best_checkpoint": None,
                         "last_checkpoint": None, "run_dir": str(cfg.run_dir)})
    overrides = ["-m", "experiment=nodule_2d", f"data.index={nodule_index}", "seed=1,2", "data.fold=0,1",
                 f"run_dir={tmp_path}/fold${{data.fold}}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    assert main(["train", *overrides]) == 0
    assert sorted(seen) == [(1, f"{tmp_path}/fold0/seed=1"), (1, f"{tmp_path}/fold1/seed=1"),
                            (2, f"{tmp_path}/fold0/seed=2"), (2, f"{tmp_path}/fold1/seed=2")]
    assert (tmp_path / "sweep" / "multirun.yaml").is_file()


def test_no_private_hydra_api_in_medeff():
    out = subprocess.run(["grep", "-rnF", "hydra._internal", str(REPO / "medeff")], capture_output=True, text=True)
    assert out.stdout == "", out.stdout
