"""DDP on CPU: two gloo processes (``strategy=ddp``, ``devices=2``) end a few steps with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from .helpers import SMALL_NET

HERE = Path(__file__).resolve().parent

SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {here!r})
from medeff.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_ddp_two_cpu_ranks_end_with_identical_weights(nodule_index, tmp_path):
    script = tmp_path / "run_train.py"  # the DDP launcher re-runs this script for rank 1
    script.write_text(SCRIPT.format(here=str(HERE)))
    overrides = ["experiment=nodule_2d", f"data.index={nodule_index}", f"run_dir={tmp_path / 'run'}",
                 "data.batch_size=4", "trainer.accelerator=cpu", "trainer.devices=2", "+trainer.strategy=ddp",
                 "+trainer.num_nodes=1", "trainer.max_epochs=1", "++trainer.limit_train_batches=2",
                 "++trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
                 "+trainer.enable_model_summary=false", "logger=none", "callbacks.lr_monitor=null",
                 "+callbacks.final._target_=crash_callback.SaveWeightsAtEnd",
                 "trusted_targets=[crash_callback.SaveWeightsAtEnd]",
                 f"+callbacks.final.path={tmp_path}/rank_LOCAL_RANK.pt"] + SMALL_NET
    env = dict(os.environ, PYTHONPATH=str(HERE), OMP_NUM_THREADS="1", PL_TORCH_DISTRIBUTED_BACKEND="gloo")
    proc = subprocess.run([sys.executable, str(script), "train", *overrides], env=env, capture_output=True,
                          text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    w0 = torch.load(tmp_path / "rank_0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank_1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # the ranks did train (2 synchronised steps moved the weights away from the start)
    start = torch.load(tmp_path / "rank_0.pt.start", weights_only=True)
    assert any(not torch.equal(w0[k], start[k]) for k in w0 if w0[k].is_floating_point())


def test_ddp_validation_metrics_equal_single_process_metrics(tmp_path):
    """AUC, balanced accuracy and Dice under 2 gloo ranks are those of one process on the same data: predictions
    are gathered across ranks and the item the DistributedSampler repeats (odd item count) is counted once."""
    import json

    from .ddp_validation import validate

    validate(1, tmp_path / "single")
    env = dict(os.environ, PYTHONPATH=str(HERE.parents[1]), OMP_NUM_THREADS="1", PL_TORCH_DISTRIBUTED_BACKEND="gloo")
    proc = subprocess.run([sys.executable, str(HERE / "ddp_validation.py"), str(tmp_path / "ddp"), "2"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name, keys in (("classification", {"val/auc", "val/balanced_accuracy", "val/accuracy"}),
                       ("segmentation", {"val/dice", "val/dice_organ"})):
        single = json.loads((tmp_path / "single" / f"{name}_rank0.json").read_text())
        assert keys <= set(single), single
        for rank in (0, 1):
            ddp = json.loads((tmp_path / "ddp" / f"{name}_rank{rank}.json").read_text())
            for key in keys:
                assert abs(ddp[key] - single[key]) < 1e-6, (name, rank, key, ddp[key], single[key])


def test_ddp_validation_data_expose_a_twice_counted_item():
    """Control for the test above: counting the repeated item 0 twice changes the classification AUC, and the
    segmentation case 0 (Dice 1) lies above the mean, so a twice-counted item could not pass unnoticed."""
    import numpy as np

    from medeff.engine.metrics import aggregate_by_case, classification_metrics

    from .ddp_validation import CLASSIFICATION_ITEMS

    def auc(items):
        logits = np.array([v for *_, v in items])
        p = 1.0 / (1.0 + np.exp(-logits))
        _, probs, targets, _ = aggregate_by_case(np.stack([1 - p, p], 1), [c for c, *_ in items],
                                                 np.array([t for _, _, t, _ in items]))
        return classification_metrics(probs, targets)["auc"]

    assert abs(auc(CLASSIFICATION_ITEMS) - auc(CLASSIFICATION_ITEMS + CLASSIFICATION_ITEMS[:1])) > 0.05
