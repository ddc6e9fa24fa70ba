"""Sliding-window inference shared by validation and ``medeff predict``.

:func:`sliding_window` visits the same windows with the same Gaussian (or constant) weights as MONAI's
``sliding_window_inference`` (it uses MONAI's window grid and importance map), but blends in place: the importance
map and the normaliser are computed once, each window's logits are accumulated with one fused multiply-add into
the output, and the output is divided by the normaliser in place at the end. With ``fold_norms`` (default) the
network runs as an inference copy with its batch norms folded into the convolutions
(:func:`medeff.models.fold_batch_norms`). ``MetaTensor`` inputs go through MONAI's function unchanged.

**Padding.** An image smaller than the window along some axis is padded to the window (centred, as MONAI pads) and
the output cropped back. MONAI and nnU-Net pad with 0 in the normalised space, which is mid-grey after z-scoring
and not air; medeff pads with ``pad`` (``task.sw_pad``), by default ``"min"``: each image's and channel's own
minimum, which for CT is air / background under any intensity normalisation (the normalised HU clip minimum after
windowing, the z-scored air value after z-scoring). ``"replicate"`` repeats the edge voxels; a number pads with
that constant (``0`` gives MONAI's behaviour).

:func:`inference_context` is the mode ``medeff predict`` runs its forward passes in: ``torch.inference_mode``, plus
autocast on CUDA devices (bfloat16 where the GPU supports it, else float16); CPU runs stay in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import ExitStack

import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from torch import nn

from medeff.layers.kinds import BATCH_NORMS

__all__ = ["first_output", "inference_context", "sliding_window", "window_slices", "PAD_MODES", "check_pad",
           "pad_to_window"]

PAD_MODES = ("min", "replicate")  # or a number: a constant in the normalised space


def first_output(out):
    """The full-resolution logits of a net that may return a list of scales (deep supervision)."""
    return out[0] if isinstance(out, (list, tuple)) else out


def inference_context(device: str | torch.device) -> ExitStack:
    """Context for forward passes at prediction time: ``torch.inference_mode`` (no autograd bookkeeping), and on a
    CUDA ``device`` autocast to bfloat16 (float16 where the GPU has no bfloat16). CPU: no autocast (float32).

    Outputs are inference tensors, possibly in half precision: cast them with ``.float()`` before use.
    """
    stack = ExitStack()
    stack.enter_context(torch.inference_mode())
    if torch.device(device).type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        stack.enter_context(torch.autocast(device_type="cuda", dtype=dtype))
    return stack


def window_slices(image_size: Sequence[int], roi_size: Sequence[int], overlap: float) -> list[tuple[slice, ...]]:
    """The windows MONAI's ``sliding_window_inference`` visits for an image at least as large as the window.

    Args:
        image_size: spatial size of the image.
        roi_size: window size.
        overlap: fraction of overlap between neighbouring windows.

    Returns:
        One tuple of per-axis slices per window.
    """
    # the step between window starts per axis, as sliding_window_inference steps: the window size times
    # (1 - overlap), at least 1; an axis the window spans exactly has one window (tests/engine/test_window_grid.py)
    interval = tuple(int(roi) if int(roi) == int(size) else max(int(roi * (1 - overlap)), 1)
                     for size, roi in zip(image_size, roi_size))
    return [tuple(s) for s in dense_patch_slices(tuple(image_size), tuple(roi_size), interval, return_slice=True)]


def check_pad(pad: str | float) -> str | float:
    """``pad`` as :func:`sliding_window` takes it: ``"min"``, ``"replicate"`` or a finite number.

    Raises:
        ConfigError: anything else (naming ``task.sw_pad``).
    """
    from medeff.errors import ConfigError

    if isinstance(pad, (int, float)) and not isinstance(pad, bool):
        if not math.isfinite(float(pad)):
            raise ConfigError(f"task.sw_pad={pad!r} is not a finite number.",
                              hint="use min (default), replicate or a finite number such as 0.")
        return float(pad)
    if isinstance(pad, str) and pad.strip().lower() in PAD_MODES:
        return pad.strip().lower()
    raise ConfigError(f"task.sw_pad={pad!r} is not a padding of the sliding window.",
                      hint="use min (each channel's minimum: air/background, the default), replicate (edge voxels) "
                           "or a number (a constant in the normalised space; 0 is MONAI's padding).")


def pad_to_window(image: torch.Tensor, roi_size: Sequence[int], pad: str | float = "min"
                  ) -> tuple[torch.Tensor, tuple[slice, ...] | None]:
    """Pad ``image`` ``(B, C, *spatial)`` to at least ``roi_size`` along every axis, centred as MONAI pads.

    Returns:
        The padded image (``image`` itself when no axis is short) and the slices that crop an output of the padded
        size back to the image (None when nothing was padded).
    """
    size = [int(n) for n in image.shape[2:]]
    diffs = [max(int(r) - n, 0) for n, r in zip(size, roi_size)]
    if not any(diffs):
        return image, None
    lows = [d // 2 for d in diffs]
    crop = (slice(None), slice(None), *(slice(lo, lo + n) for lo, n in zip(lows, size)))
    pad = check_pad(pad)
    if pad == "replicate":
        widths = [w for lo, d in zip(reversed(lows), reversed(diffs)) for w in (lo, d - lo)]
        return torch.nn.functional.pad(image, widths, mode="replicate"), crop
    if pad == "min":
        fill = image.amin(dim=tuple(range(2, image.dim())), keepdim=True)
    else:
        fill = torch.full((1, 1) + (1,) * len(size), float(pad), dtype=image.dtype, device=image.device)
    padded_shape = (*image.shape[:2], *(n + d for n, d in zip(size, diffs)))
    out = fill.expand(padded_shape).clone()
    out[crop] = image
    return out, crop


def _has_batch_norm(net: nn.Module) -> bool:
    return any(isinstance(m, BATCH_NORMS) for m in net.modules())


def _blend(net, image, roi_size, sw_batch_size, overlap, mode, joint):
    b, _, *size = image.shape
    slices = window_slices(size, roi_size, overlap)
    weight = compute_importance_map(tuple(roi_size), mode=mode, sigma_scale=0.125, device=image.device,
                                    dtype=torch.float32)
    weight = weight.reshape(1, 1, *roi_size)
    norm = torch.zeros(1, 1, *size, dtype=torch.float32, device=image.device)
    for s in slices:
        norm[(slice(None), slice(None), *s)] += weight
    out: torch.Tensor | None = None
    class_logits: list[torch.Tensor] = []
    jobs = [(i, s) for i in range(b) for s in slices]  # image by image, as MONAI
    for start in range(0, len(jobs), sw_batch_size):
        chunk = jobs[start:start + sw_batch_size]
        windows = torch.cat([image[(slice(i, i + 1), slice(None), *s)] for i, s in chunk])
        pred = net(windows)
        if joint:
            pred, cls = pred
            class_logits.append(cls.float())
        pred = first_output(pred)
        if out is None:
            out = torch.zeros(b, pred.shape[1], *size, dtype=torch.float32, device=image.device)
        for k, (i, s) in enumerate(chunk):
            out[(slice(i, i + 1), slice(None), *s)].addcmul_(pred[k:k + 1].float(), weight)
    out.div_(norm)
    if not joint:
        return out
    stacked = torch.cat(class_logits, dim=0)
    return out, stacked.reshape(b, -1, stacked.shape[-1]).mean(dim=1)


@torch.no_grad()
def sliding_window(net: nn.Module, image: torch.Tensor, *, roi_size: Sequence[int], sw_batch_size: int = 2,
                   overlap: float = 0.5, mode: str = "gaussian", joint: bool = False, fold_norms: bool = True,
                   pad: str | float = "min"):
    """Segment ``image`` ``(B, C, *spatial)`` window by window with Gaussian (or constant) blending.

    Args:
        net: segmentation net (or joint net returning ``(seg_logits, class_logits)`` when ``joint``).
        image: input batch.
        roi_size: window size (the training patch).
        sw_batch_size: windows per forward pass.
        overlap: fraction of overlap between windows.
        mode: ``gaussian`` or ``constant`` blending.
        joint: also return class logits averaged over the windows.
        fold_norms: when ``net`` is in eval mode and has batch norms, run a copy with the norms folded into the
            convolutions (same results up to float rounding, one pass less per conv); ``net`` is not changed.
        pad: how an image smaller than the window is padded: ``"min"`` (each image's and channel's minimum, i.e.
            air/background; default), ``"replicate"`` or a constant (see the module docstring).

    Returns:
        Segmentation logits ``(B, C, *spatial)`` (float32); with ``joint``, ``(seg_logits, class_logits (B, K))``.
    """
    roi = [int(r) for r in roi_size]
    crop = None
    if len(roi) == image.dim() - 2:
        image, crop = pad_to_window(image, roi, pad)
    if fold_norms and not net.training and _has_batch_norm(net):
        from medeff.models.fold import fold_batch_norms

        net = fold_batch_norms(net)
    plain = type(image) is torch.Tensor and len(roi) == image.dim() - 2
    if plain and all(s >= r for s, r in zip(image.shape[2:], roi)) and mode in ("gaussian", "constant"):
        out = _blend(net, image, roi, sw_batch_size, overlap, mode, joint)
        return _crop(out, crop, joint)

    class_logits: list[torch.Tensor] = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        if joint:
            seg, cls = out
            class_logits.append(cls.float())
            return first_output(seg)
        return first_output(out)

    seg = sliding_window_inference(image, roi_size=roi, sw_batch_size=sw_batch_size, predictor=predictor,
                                   overlap=overlap, mode=mode)
    if not joint:
        return _crop(seg, crop, joint)
    # MONAI visits windows image by image (window index = image * n_windows + k), so rows group per image
    stacked = torch.cat(class_logits, dim=0)
    return _crop((seg, stacked.reshape(image.shape[0], -1, stacked.shape[-1]).mean(dim=1)), crop, joint)


def _crop(out, crop: tuple[slice, ...] | None, joint: bool):
    if crop is None:
        return out
    if joint:
        seg, cls = out
        return seg[crop].contiguous(), cls
    return out[crop].contiguous()
