"""SIGKILL at random points of ``medeff train`` and ``medeff predict``.

Each command runs in a process forked from one that has already imported medeff (torch, Lightning, MONAI), so
the kill delays fall on the command's own work and no run pays the import time; the delays are stratified over
the measured runtime (as in ``test_killed.py``). After every kill, every file under the output folder either has
its final name and loads completely (checkpoints through ``load_checkpoint`` with ``weights_only``,
``metrics.csv`` with full rows, YAML, NIfTI masks, JSON) or is a recognisable ``.tmp-*`` file. Then
``ckpt_path=last`` resumes a killed training run to its end, and a rerun of predict completes.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import record
from engine_helpers import SMALL_NET, Zygote, assert_seg_mask, nodule_index, phantom_niftis

EPOCHS = 2


def kill_series(zygote: Zygote, make_args, check, n: int, seed: int, suite: str) -> list[tuple[Path, bool]]:
    """Measure one full run, then ``n`` runs killed at stratified random delays; ``check(folder)`` after each.

    ``make_args(i)`` returns ``(argv, output folder)`` of run ``i`` (run 0 is the measured one).

    Returns:
        ``[(output folder, killed?)]`` of the ``n`` killed runs.
    """
    args, folder = make_args(0)
    t0 = time.perf_counter()
    rc, text = zygote.run(args)
    total = time.perf_counter() - t0
    assert rc == 0, text[-3000:]
    check(folder)
    print(f"{suite}: one full run takes {total:.1f} s")
    rng = np.random.default_rng(seed)
    delays = total * (np.arange(n) + rng.random(n)) / n
    out = []
    for i, delay in enumerate(delays, start=1):
        args, folder = make_args(i)
        pid, log = zygote.start(args)
        time.sleep(float(delay))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        rc = zygote.wait(pid)
        killed = rc == -signal.SIGKILL
        assert killed or rc == 0, log.read_text(errors="replace")[-3000:]
        record(suite, "killed" if killed else "finished")
        check(folder)
        out.append((folder, killed))
    return out


# ----------------------------------------------------------------------------------------------- train
def check_run_dir(run_dir: Path, task: str = "classification") -> None:
    """Every file of a (possibly killed) run folder is complete under its final name, or a ``.tmp-*`` file."""
    from medeff.engine.checkpoint import load_checkpoint

    for f in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        if f.name.startswith(".tmp-"):
            continue
        if f.suffix == ".ckpt":
            meta, ckpt = load_checkpoint(f, task=task)  # weights_only; a truncated file raises CheckpointError
            assert ckpt["state_dict"] and "epoch" in ckpt
        elif f.name == "metrics.csv":
            with open(f, newline="") as fh:
                rows = list(csv.reader(fh))
            assert rows and all(len(r) == len(rows[0]) for r in rows), f"cut row in {f}"
        elif f.name == "config.yaml":
            cfg = yaml.safe_load(f.read_text())
            assert {"trainer", "run_dir", "model", "data"} <= set(cfg), f"incomplete {f}"
        elif f.name == "hparams.yaml":
            assert isinstance(yaml.safe_load(f.read_text()) or {}, dict)
        else:
            raise AssertionError(f"unexpected file {f} in a run folder")


@pytest.fixture(scope="module")
def nodules(tmp_path_factory):
    return nodule_index(tmp_path_factory.mktemp("kill_train") / "data", n_exams=6)


def _train_case(zygote, nodules, tmp_path, n, seed, suite, n_resume):
    import torch

    def make_args(i):
        run_dir = tmp_path / f"run{i:02d}"
        return (["train", "experiment=nodule_2d", f"data.index={nodules}", "data.batch_size=8", *SMALL_NET,
                 "debug=fast", f"trainer.max_epochs={EPOCHS}", "trainer.limit_train_batches=1",
                 "trainer.limit_val_batches=1", "trainer.accelerator=cpu", "+trainer.enable_model_summary=false",
                 f"run_dir={run_dir}"], run_dir)

    runs = kill_series(zygote, make_args, check_run_dir, n, seed, suite)
    full = torch.load(tmp_path / "run00" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (full["epoch"], full["global_step"]) == (EPOCHS - 1, EPOCHS)  # last.ckpt follows every epoch
    # resume killed runs that left a complete checkpoint (last.ckpt or, killed between the two writes of an epoch
    # end, only epoch_XXX.ckpt) of an unfinished training: ckpt_path=last takes the newest of them
    def last_step(d: Path) -> int:  # one optimiser step per epoch; -1: no checkpoint loads
        from medeff.engine.checkpoint import newest_checkpoint

        return newest_checkpoint(d / "checkpoints")[1]

    # one targeted position on top of the random ones: right after the first last.ckpt appears
    args, target_dir = make_args(len(runs) + 1)
    pid, log = zygote.start(args)
    deadline = time.perf_counter() + 300
    while not (target_dir / "checkpoints" / "last.ckpt").exists() and time.perf_counter() < deadline:
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    assert zygote.wait(pid) == -signal.SIGKILL, log.read_text(errors="replace")[-3000:]
    record(suite, "killed")
    check_run_dir(target_dir)
    assert 0 <= last_step(target_dir) < EPOCHS

    killed = [(d, i) for i, (d, k) in enumerate(runs, start=1) if k]
    resumable = [(d, i) for d, i in killed if 0 <= last_step(d) < EPOCHS]
    fresh = [(d, i) for d, i in killed if last_step(d) < 0]
    for run_dir, i in resumable[-n_resume:] + [(target_dir, len(runs) + 1)] + fresh[-1:]:
        args = make_args(i)[0] + (["ckpt_path=last"] if last_step(run_dir) >= 0 else [])
        rc, text = zygote.run(args)
        assert rc == 0, text[-3000:]
        check_run_dir(run_dir)
        last = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
        # last.ckpt is the end of the final epoch: every step done once, none repeated
        assert (last["epoch"], last["global_step"]) == (EPOCHS - 1, EPOCHS)
        record(suite, "resumed" if "ckpt_path=last" in args else "rerun")


def test_kill_train(zygote, nodules, tmp_path):
    _train_case(zygote, nodules, tmp_path, 2, 11, "kill-train", n_resume=1)


@pytest.mark.slow
def test_kill_train_long(zygote, nodules, tmp_path):
    _train_case(zygote, nodules, tmp_path, 12, 12, "kill-train-long", n_resume=3)


# ----------------------------------------------------------------------------------------------- predict
def _predict_case(zygote, seg_run, tmp_path, n_inputs, n, seed, suite):
    inputs = phantom_niftis(tmp_path / "inputs", n_inputs, seed=10, labels=False)
    ckpt = seg_run[0]["last_checkpoint"]
    finals = {f"{p.name[:-7]}_seg.nii.gz": p for p in inputs}

    def check(out_dir: Path) -> None:
        for f in out_dir.iterdir() if out_dir.exists() else []:
            if f.name.startswith(".tmp-"):
                continue
            if f.name in finals:
                assert_seg_mask(f, finals[f.name])
            elif f.name == "predictions.json":
                doc = json.loads(f.read_text())
                assert len(doc["cases"]) == n_inputs and doc["failed"] == []
            elif f.name == "run_manifest.jsonl":  # appended line by line: at most the last line is cut
                lines = f.read_bytes().split(b"\n")
                assert all(json.loads(line) for line in lines[:-1])
            else:
                raise AssertionError(f"unexpected file {f.name} after a kill")

    out_dir = tmp_path / "out"

    def make_args(i):  # every run writes into the same folder, over what the killed ones left
        return (["predict", f"ckpt={ckpt}", f"input={tmp_path / 'inputs'}", f"output_dir={out_dir}", "device=cpu",
                 "case_ids.naming=input", "overwrite=true"], out_dir)

    kill_series(zygote, make_args, check, n, seed, suite)
    rc, text = zygote.run(make_args(0)[0][:-1])  # a rerun without overwrite resumes what the killed runs left
    assert rc == 0, text[-3000:]
    check(out_dir)
    assert set(finals) | {"predictions.json"} <= {p.name for p in out_dir.iterdir()}


def test_kill_predict(zygote, seg_run, tmp_path):
    _predict_case(zygote, seg_run, tmp_path, 4, 2, 21, "kill-predict")


@pytest.mark.slow
def test_kill_predict_long(zygote, seg_run, tmp_path):
    _predict_case(zygote, seg_run, tmp_path, 8, 12, 22, "kill-predict-long")
