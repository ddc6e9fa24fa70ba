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
