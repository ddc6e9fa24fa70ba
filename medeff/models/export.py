"""Export a medeff model to TorchScript (by tracing) or ONNX, written atomically.

Export always runs the model in eval mode, without autograd, and with every training-only custom op replaced
by its native equivalent (:func:`native_layers`): :class:`medeff.layers.FastDepthwiseConv3d` and
:class:`medeff.ops.Conv3d` become a plain ``nn.Conv3d`` and :class:`medeff.layers.MemoryEfficientSiLU` a plain
``F.silu`` (same parameters, same outputs). Their custom autograd functions cannot be exported to ONNX.

The graphs are specialised to the example input's shape: the padding of inputs that are not multiples of the
total stride, and TF "SAME" padding, are computed from the example shape and fixed in the graph. Export with the
shape you will run (a patch size for sliding-window inference).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medeff.layers import FastDepthwiseConv3d, MemoryEfficientSiLU
from medeff.ops.dense import Conv3d as DenseConv3d
from medeff.utils.atomic import atomic_path
from medeff.utils.logging import get_logger
from medeff.utils.options import look_up

__all__ = ["EXPORT_FORMATS", "export_model", "native_layers"]

log = get_logger(__name__)

#: Supported formats.
EXPORT_FORMATS = ("onnx", "torchscript")



class _NativeSiLU(nn.Module):
    """``F.silu`` with no state: what a :class:`MemoryEfficientSiLU` becomes during export."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return F.silu(x)


_NATIVE: dict[type, type] = {FastDepthwiseConv3d: nn.Conv3d, DenseConv3d: nn.Conv3d, MemoryEfficientSiLU: _NativeSiLU}


@contextlib.contextmanager
def native_layers(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, layers with custom autograd ops run as their native PyTorch classes.

    The swap changes each module's class only (parameters, buffers and hooks stay); it is undone on exit.

    Args:
        model: the model, modified in place for the duration of the block.

    Yields:
        ``model``.
    """
    swapped: list[tuple[nn.Module, type]] = []
    try:
        for module in model.modules():
            native = _NATIVE.get(type(module))
            if native is not None:
                swapped.append((module, type(module)))
                module.__class__ = native
        yield model
    finally:
        for module, cls in swapped:
            module.__class__ = cls


def _outputs(out: object) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _outputs(o)]
    raise TypeError(f"cannot export a model returning {type(out).__name__}; expected tensors, lists or tuples.")


def export_model(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    format: str = "onnx",
    example_input: torch.Tensor,
    opset: int | None = None,
    dynamo: bool = False,
    overwrite: bool = True,
) -> Path:
    """Export ``model`` for inference and write it atomically to ``path``.

    TorchScript uses ``torch.jit.trace`` (not ``script``): the graph records the example's shapes and control
    flow. ONNX uses ``torch.onnx.export``, by default the TorchScript-based exporter (``dynamo=False``: fast, no
    extra dependency); ``dynamo=True`` uses the ``torch.export`` based exporter (needs ``onnxscript``). Inputs
    and outputs are named ``input`` and ``output`` (``output_0``, ``output_1``, ... when the model returns several
    tensors, e.g. the joint task's ``(segmentation, classification)``).

    Args:
        model: any medeff model; its training mode is restored afterwards.
        path: output file (``.onnx``, ``.pt``); its folder is created.
        format: ``"onnx"`` or ``"torchscript"``.
        example_input: an input of the shape to export, ``(B, in_channels, *spatial)``.
        opset: ONNX opset version (None: the exporter's default).
        dynamo: use the ``torch.export`` based ONNX exporter.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        ConfigError: unknown format.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    look_up(format, EXPORT_FORMATS, what="export format", key="format")
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with native_layers(model), torch.no_grad(), atomic_path(path, overwrite=overwrite) as tmp:
            n_out = len(_outputs(model(example_input)))
            names = ["output"] if n_out == 1 else [f"output_{i}" for i in range(n_out)]
            if format == "torchscript":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    traced = torch.jit.trace(model, example_input, strict=False, check_trace=False)
                torch.jit.save(traced, str(tmp))
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.onnx.export(model, (example_input,), str(tmp), input_names=["input"], output_names=names,
                                      opset_version=opset, dynamo=dynamo, external_data=False)
    finally:
        model.train(was_training)
    log.info("exported %s to %s (%s, input shape %s)", type(model).__name__, path, format,
             tuple(example_input.shape))
    return path
