"""A Lightning callback that SIGKILLs its own process at a chosen training batch (resume tests)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L

__all__ = ["KillAt", "SaveWeightsAtEnd", "FailBeforeFirstLast"]


class KillAt(L.Callback):
    """Kill the process with SIGKILL when batch ``batch`` of epoch ``epoch`` is about to start.

    Args:
        epoch: epoch index.
        batch: batch index within the epoch.
    """

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = int(epoch), int(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)


class SaveWeightsAtEnd(L.Callback):
    """Save the module's state dict to ``path`` when training ends (and to ``path + ".start"`` when it starts).

    Args:
        path: output file; ``LOCAL_RANK`` in it is replaced by the process rank.
    """

    def __init__(self, path: str) -> None:
        self.path = str(path)

    def on_train_start(self, trainer, pl_module) -> None:
        import torch

        path = self.path.replace("LOCAL_RANK", str(trainer.global_rank)) + ".start"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}, path)

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        path = self.path.replace("LOCAL_RANK", str(trainer.global_rank))  # one file per DDP rank
        torch.save({k: v.detach().cpu() for k, v in pl_module.state_dict().items()}, path)


class FailBeforeFirstLast(L.Callback):
    """Stop the run when Lightning is about to write ``last.ckpt`` for the first time (after ``epoch_000.ckpt``).

    Wraps the trainer's checkpoint I/O (``trainer.strategy.checkpoint_io``), so the stop falls exactly between the
    two writes of the first epoch end.

    Args:
        kill: SIGKILL the process (True) or raise ``RuntimeError("stopped before last.ckpt")`` (False).
    """

    def __init__(self, kill: bool = False) -> None:
        self.kill = bool(kill)

    def setup(self, trainer, pl_module, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def save_or_stop(checkpoint, path, storage_options=None):
            if Path(path).name == "last.ckpt" and not Path(path).exists():
                if self.kill:
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError("stopped before last.ckpt")
            save(checkpoint, path, storage_options)

        io.save_checkpoint = save_or_stop
