"""FLOPs of a benchmark side: the work of one forward pass and of one train step.

Counted with torch's public ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; a
multiply-add is 2 FLOPs; norms, activations and element-wise ops are not counted) on a copy of the model built on
the ``meta`` device, so counting allocates nothing and takes well under a second even for a 96^3 U-Net. A builder
that cannot build on ``meta`` is counted with one real forward on CPU instead.

A train step is reported as **3x the forward FLOPs** (forward, gradient of the input, gradient of the weights: each
costs about one forward). It is a convention, not a measurement: the counter's formula for the backward of a
convolution ignores ``groups`` and counts a depthwise layer's weight gradient ``channels`` times over, so a measured
backward of an EfficientNet would be wrong by a factor of up to ~70. The convention is the same for every side, so
time per GFLOP compares implementations on the same footing (work that a side redoes, e.g. medeff's recomputed
expansion convolutions, counts as its cost, not as extra work).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from medeff.benchmarks.peers import build_side

__all__ = ["TRAIN_STEP_FACTOR", "forward_flops", "side_flops"]

#: train-step FLOPs per forward FLOP (forward + gradient of the input + gradient of the weights)
TRAIN_STEP_FACTOR = 3


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``model`` on an input of ``input_shape`` ``(B, C, *spatial)``.

    The model is put in eval mode for the count (same convolutions and products as in training; batch statistics
    of a 1-voxel feature map would fail in training mode) and restored to its previous mode afterwards. The input
    lives on the device of the model's parameters (``meta`` for a free count).
    """
    params = next(iter(model.parameters()), None)
    device = params.device if params is not None else torch.device("cpu")
    was_training = model.training
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.eval()(torch.zeros(*[int(s) for s in input_shape], device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def side_flops(side: dict[str, Any], spec: dict[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Forward and train-step FLOPs of a benchmark side (``{"builder", "kwargs"}``) for a case input ``spec``.

    Args:
        side: the side as in ``conf/bench.yaml``.
        spec: the case input (batch, channels, size, classes).
        model: the side's real model, counted with one CPU forward when the builder cannot build on ``meta``.

    Returns:
        ``{"forward_flops", "train_step_flops", "flops_counted_on"}`` (``meta`` or ``cpu``).
    """
    shape = (int(spec["batch"]), int(spec["channels"]), *[int(s) for s in spec["size"]])
    try:
        with torch.device("meta"):
            meta_model = build_side(side, int(spec["channels"]), int(spec["classes"]), len(spec["size"]))
        flops, where = forward_flops(meta_model, shape), "meta"
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        if model is None:
            raise
        flops, where = forward_flops(model, shape), "cpu"
    return {"forward_flops": flops, "train_step_flops": TRAIN_STEP_FACTOR * flops, "flops_counted_on": where}
