"""A run killed with SIGKILL mid-epoch and resumed with ``ckpt_path=last`` ends with the uninterrupted weights.

The guarantee tested: with ``seed`` set and ``trainer.deterministic=true`` (``num_workers=0``), resuming from the
last epoch-end checkpoint replays the uninterrupted run exactly; the steps done after that checkpoint and before
the kill are lost and redone identically.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from .helpers import SMALL_NET

from medeff.config import compose
import medeff.engine.train as train_module
from medeff.engine.train import train

HERE = Path(__file__).resolve().parent


def _overrides(index: Path, run_dir: Path) -> list[str]:
    return ["experiment=nodule_2d", f"data.index={index}", f"run_dir={run_dir}", "seed=7", "data.batch_size=8",
            "data.num_workers=0", "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.max_epochs=2",
            "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false", "logger=none",
            "callbacks.lr_monitor=null",
            "trusted_targets=[crash_callback.SaveWeightsAtEnd,crash_callback.KillAt]"] + SMALL_NET


def _train(overrides: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    code = "import sys, torch; torch.set_num_threads(1); from medeff.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, "train", *overrides], env=env, capture_output=True, text=True,
                          timeout=300)


def _final(run_dir: Path) -> list[str]:
    return ["+callbacks.final._target_=crash_callback.SaveWeightsAtEnd", f"+callbacks.final.path={run_dir}/final.pt"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    sd = sd.get("state_dict", sd)
    return {k: v for k, v in sd.items() if k.startswith("net.")}


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(nodule_index, tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "crashed"
    ref = _train(_overrides(nodule_index, ref_dir) + _final(ref_dir))
    assert ref.returncode == 0, ref.stderr[-3000:]

    # killed at the 2nd batch of epoch 1: epoch 0's checkpoint exists, epoch 1 is half done
    crashed = _train(_overrides(nodule_index, run_dir) + ["+callbacks.kill._target_=crash_callback.KillAt",
                                                          "+callbacks.kill.epoch=1", "+callbacks.kill.batch=1"])
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr[-3000:])
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    assert not [p for p in last.parent.iterdir() if p.name.startswith(".tmp-")]

    epoch0 = _weights(last)

    resumed = _train(_overrides(nodule_index, run_dir) + ["ckpt_path=last"] + _final(run_dir))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(ref_dir / "final.pt"), _weights(run_dir / "final.pt")
    assert a.keys() == b.keys() == epoch0.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the replayed epoch did move the weights, so the equality above is not trivially true
    assert any(not torch.equal(a[k], epoch0[k]) for k in a)


_BUILD_GROUP = train_module._instantiate_group  # the engine's own, before any test patches it


def _train_in_process(monkeypatch, nodule_index, run_dir: Path, extra: list[str], callbacks: list) -> None:
    """``medeff train`` in this process with the test's ``callbacks`` added to the configured ones."""
    import medeff.engine.train as T

    def with_test_callbacks(group, what, *args, **kwargs):
        built = _BUILD_GROUP(group, what, *args, **kwargs)
        return built + list(callbacks) if what == "callbacks" else built

    monkeypatch.setattr(T, "_instantiate_group", with_test_callbacks)
    train(compose("train", _overrides(nodule_index, run_dir) + extra))


def test_crash_mid_epoch_then_resume_matches_uninterrupted_run_in_process(nodule_index, tmp_path, monkeypatch):
    """The same guarantee in one process (a raised error instead of SIGKILL): fast enough for every run."""
    import lightning as L

    monkeypatch.syspath_prepend(str(HERE))
    from crash_callback import SaveWeightsAtEnd

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                raise RuntimeError("simulated crash")

    def run(run_dir: Path, extra: list[str], crash: bool = False) -> None:
        _train_in_process(monkeypatch, nodule_index, run_dir, extra,
                          [SaveWeightsAtEnd(str(run_dir / "final.pt"))] + ([Crash()] if crash else []))

    ref_dir, run_dir = tmp_path / "ref", tmp_path / "crashed"
    run(ref_dir, [])
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(run_dir, [], crash=True)
    epoch0 = _weights(run_dir / "checkpoints" / "last.ckpt")
    run(run_dir, ["ckpt_path=last"])
    a, b = _weights(ref_dir / "final.pt"), _weights(run_dir / "final.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], epoch0[k]) for k in a)


def test_killed_between_epoch_checkpoint_and_last_ckpt_resumes_from_the_epoch_checkpoint(nodule_index, tmp_path,
                                                                                          monkeypatch, caplog):
    """Stopped after ``epoch_000.ckpt`` was written and before the first ``last.ckpt``: ``ckpt_path=last`` takes
    ``epoch_000.ckpt`` (the newest complete checkpoint), says so, and ends with the uninterrupted run's weights."""
    import logging

    monkeypatch.syspath_prepend(str(HERE))
    from crash_callback import FailBeforeFirstLast, SaveWeightsAtEnd

    def run(run_dir: Path, extra: list[str], stop: bool = False) -> None:
        _train_in_process(monkeypatch, nodule_index, run_dir, extra,
                          [SaveWeightsAtEnd(str(run_dir / "final.pt"))] + ([FailBeforeFirstLast()] if stop else []))

    ref_dir, run_dir = tmp_path / "ref", tmp_path / "stopped"
    run(ref_dir, [])
    with pytest.raises(RuntimeError, match="stopped before last.ckpt"):
        run(run_dir, [], stop=True)
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_000.ckpt"]
    epoch0 = _weights(ckpts / "epoch_000.ckpt")

    with caplog.at_level(logging.INFO, logger="medeff"):
        run(run_dir, ["ckpt_path=last"])
    assert any("epoch_000.ckpt" in r.getMessage() and "resuming from" in r.getMessage() for r in caplog.records)
    a, b = _weights(ref_dir / "final.pt"), _weights(run_dir / "final.pt")
    assert a.keys() == b.keys() == epoch0.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], epoch0[k]) for k in a)  # epoch 1 was trained after the resume


def _fake_checkpoint(path: Path, step: int) -> None:
    from medeff.engine.checkpoint import FORMAT, FORMAT_VERSION

    torch.save({"medeff": {"format": FORMAT, "format_version": FORMAT_VERSION, "task": "classification"},
                "state_dict": {"net.w": torch.full((2,), float(step))}, "global_step": step, "epoch": step}, path)


def test_ckpt_path_last_takes_the_newest_checkpoint_that_loads(tmp_path):
    from medeff.engine.train import resolve_ckpt_path
    from medeff.errors import CheckpointError

    ckpts = tmp_path / "checkpoints"
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_ckpt_path("last", tmp_path)
    ckpts.mkdir()
    (ckpts / "epoch_003.ckpt").write_bytes(b"cut")  # does not load: skipped, named in the error
    with pytest.raises(CheckpointError, match="no checkpoint that loads"):
        resolve_ckpt_path("last", tmp_path)
    _fake_checkpoint(ckpts / "last.ckpt", 2)
    _fake_checkpoint(ckpts / "epoch_001.ckpt", 4)  # written after last.ckpt of step 2; the kill came before its update
    _fake_checkpoint(ckpts / ".tmp-last.ckpt", 9)  # an interrupted atomic write is never taken
    assert resolve_ckpt_path("last", tmp_path) == str(ckpts / "epoch_001.ckpt")
    _fake_checkpoint(ckpts / "last.ckpt", 4)  # a tie goes to last.ckpt
    assert resolve_ckpt_path("last", tmp_path) == str(ckpts / "last.ckpt")
    assert resolve_ckpt_path("some/file.ckpt", tmp_path) == "some/file.ckpt"
    assert resolve_ckpt_path(None, tmp_path) is None


def test_without_epoch_seeding_the_resumed_run_differs(nodule_index, tmp_path):
    """Control: the epoch-seeded sampler is what makes resume exact (two epochs draw different orders)."""
    from medeff.data.datamodule import EpochSeededSampler, epoch_seed

    epochs = iter([0, 1, 0])
    sampler = EpochSeededSampler(50, seed=3, epoch_fn=lambda: next(epochs))
    first, second, again = list(sampler), list(sampler), list(sampler)
    assert sorted(first) == list(range(50)) and first != second and first == again
    assert epoch_seed(3, 0) != epoch_seed(3, 1) != epoch_seed(4, 1)
