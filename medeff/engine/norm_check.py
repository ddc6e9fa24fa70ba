"""A warning when batch norms train on too few values per channel (``callbacks.batch_norm_check``).

In training a batch norm normalises each channel by the statistics of the values it sees: the batch size times the
voxels of its feature map. A 3D EfficientNet halves each axis five times, so a 32^3 patch reaches 1x1x1 in its last
two stages; with a batch of 2 every norm there sees two values per channel. Its output is then +-1 whatever the
input, and its backward multiplies the gradient by up to ``1/sqrt(eps)`` (about 30 at ``eps=1e-3``) per norm. Over
a few blocks the gradients explode: in float16 mixed precision they pass float16's range at any loss scale, so the
gradient scaler skips every step and the weights never move, without any error (seen on an H200 and on CPU).

:class:`BatchNormCheck` looks at the first training batch of a fit: forward pre-hooks on every batch norm in
training mode record the values per channel it receives (``numel / channels`` of its input, from shapes only: no
device synchronisation), and a warning names the norms below ``min_values`` with the fixes (larger patches, a larger
batch, or a precision that does not overflow). Nothing is changed. For that batch the fused BN+SiLU of
:mod:`medeff.layers.fused` steps aside (it does not call the norm modules), and the hooks are removed after it.
Checkpoints record that the batch was watched, so a resumed run does not watch (and run unfused) a batch that the
uninterrupted run ran fused: resume stays bit-identical.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from medeff.errors import ConfigError
from medeff.layers.fused import unfused
from medeff.layers.kinds import BATCH_NORMS

__all__ = ["BatchNormCheck", "values_per_channel"]

log = logging.getLogger(__name__)


def values_per_channel(x: torch.Tensor) -> int:
    """How many values per channel a batch norm normalises over for its input ``x`` ``(B, C, *spatial)``."""
    return x.numel() // max(1, x.shape[1]) if x.dim() >= 2 else x.numel()


class BatchNormCheck(Callback):
    """Warn once, at the first training batch, about batch norms that see fewer than ``min_values`` per channel.

    Args:
        min_values: the smallest acceptable number of values per channel (batch size x feature-map voxels).
    """

    def __init__(self, min_values: int = 8) -> None:
        if isinstance(min_values, bool) or not isinstance(min_values, int) or min_values < 2:
            raise ConfigError(f"callbacks.batch_norm_check.min_values must be an integer >= 2, got {min_values!r}.")
        self.min_values = min_values
        self.done = False
        self.seen: dict[str, int] = {}
        self._handles: list[Any] = []
        self._stack = ExitStack()

    def _record(self, name: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if module.training and args and isinstance(args[0], torch.Tensor):
                count = values_per_channel(args[0])
                self.seen[name] = min(count, self.seen.get(name, count))
        return hook

    def on_train_batch_start(self, trainer: Any, pl_module: nn.Module, batch: Any,  # noqa: D102
                             batch_idx: int) -> None:
        if self.done:
            return
        for name, module in pl_module.named_modules():
            if isinstance(module, BATCH_NORMS):
                self._handles.append(module.register_forward_pre_hook(self._record(name)))
        self._stack.enter_context(unfused())  # the fused BN+SiLU would not call the norms (nor their hooks)

    def on_train_batch_end(self, trainer: Any, pl_module: nn.Module, outputs: Any, batch: Any,  # noqa: D102
                           batch_idx: int) -> None:
        if self.done:
            return
        self._finish()
        low = {name: n for name, n in self.seen.items() if n < self.min_values}
        if low:
            log.warning(self.message(low))

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: a resumed run does not watch its first batch again. Resumed training stays
        bit-identical to an uninterrupted run (the watched batch runs the unfused BN+SiLU, equal only up to
        rounding)."""
        return {"done": self.done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.done = bool(state_dict.get("done", False))

    def on_exception(self, trainer: Any, pl_module: nn.Module, exception: BaseException) -> None:  # noqa: D102
        self._finish()

    def _finish(self) -> None:
        self.done = True
        self._stack.close()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def message(self, low: dict[str, int]) -> str:
        """The warning text for the norms in ``low`` (name -> values per channel)."""
        fewest = min(low.values())
        names = ", ".join(list(low)[:4]) + (f" and {len(low) - 4} more" if len(low) > 4 else "")
        return (f"{len(low)} batch norm(s) train on fewer than {self.min_values} values per channel (fewest: "
                f"{fewest}; {names}): their statistics come from the batch size times the voxels of a small feature "
                "map. Gradients can explode there, and in float16 mixed precision every step can overflow and be "
                "skipped. Fix: larger patches (data.patch_size), a larger batch (data.batch_size), or "
                "trainer.precision=bf16-mixed / 32. Set callbacks.batch_norm_check.min_values to change the "
                "threshold, or turn the check off with ~callbacks.batch_norm_check.")
