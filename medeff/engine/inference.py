"""Sliding-window inference shared by validation and ``medeff predict``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.inferers import sliding_window_inference
from torch import nn

__all__ = ["sliding_window", "first_output"]


def first_output(out):
    """The full-resolution logits of a net that may return a list of scales (deep supervision)."""
    return out[0] if isinstance(out, (list, tuple)) else out


@torch.no_grad()
def sliding_window(net: nn.Module, image: torch.Tensor, *, roi_size: Sequence[int], sw_batch_size: int = 2,
                   overlap: float = 0.5, mode: str = "gaussian", joint: bool = False):
    """Segment ``image`` ``(B, C, *spatial)`` window by window with Gaussian (or constant) blending.

    Args:
        net: segmentation net (or joint net returning ``(seg_logits, class_logits)`` when ``joint``).
        image: input batch.
        roi_size: window size (the training patch).
        sw_batch_size: windows per forward pass.
        overlap: fraction of overlap between windows.
        mode: ``gaussian`` or ``constant`` blending.
        joint: also return class logits averaged over the windows.

    Returns:
        Segmentation logits ``(B, C, *spatial)``; with ``joint``, ``(seg_logits, class_logits (B, K))``.
    """
    class_logits: list[torch.Tensor] = []

    def predictor(x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        if joint:
            seg, cls = out
            class_logits.append(cls.float())
            return first_output(seg)
        return first_output(out)

    seg = sliding_window_inference(image, roi_size=list(roi_size), sw_batch_size=sw_batch_size, predictor=predictor,
                                   overlap=overlap, mode=mode)
    if not joint:
        return seg
    # MONAI visits windows image by image (window index = image * n_windows + k), so rows group per image
    stacked = torch.cat(class_logits, dim=0)
    return seg, stacked.reshape(image.shape[0], -1, stacked.shape[-1]).mean(dim=1)
