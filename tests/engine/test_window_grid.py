"""The sliding-window grid medeff computes itself (``window_slices``) is the one MONAI's public
``sliding_window_inference`` visits (medeff's in-place blending relies on it; no private MONAI function is used)."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference

from medeff.engine.inference import window_slices


def _monai_window_starts(size, roi, overlap):
    """Start corner of every window ``sliding_window_inference`` passes to the predictor: the image holds each
    voxel's flat index, so a window's first element names its corner."""
    image = torch.arange(int(torch.tensor(size).prod()), dtype=torch.float64).reshape(1, 1, *size)
    starts = []

    def predictor(x):
        for window in x:
            starts.append(tuple(int(v) for v in torch.unravel_index(window.reshape(-1)[0].long(), size)))
        return x

    sliding_window_inference(image, list(roi), 4, predictor, overlap=overlap, mode="constant")
    return sorted(starts)


@pytest.mark.parametrize(("size", "roi", "overlap"), [
    ((40, 37, 29), (16, 16, 16), 0.25),
    ((40, 37, 29), (16, 16, 16), 0.5),
    ((33, 16, 20), (16, 16, 8), 0.5),     # an axis the window spans exactly: one window along it
    ((21, 19), (8, 7), 0.0),              # 2D, no overlap, last window aligned to the end
    ((12, 10, 9), (4, 3, 3), 0.9),        # step rounds to 0 -> 1
    ((30, 30, 30), (10, 10, 10), 0.33),
])
def test_window_grid_is_monais(size, roi, overlap):
    ours = sorted(tuple(s.start for s in w) for w in window_slices(size, roi, overlap))
    assert ours == _monai_window_starts(size, roi, overlap)
    assert all(w[i].stop - w[i].start == roi[i] for w in window_slices(size, roi, overlap) for i in range(len(roi)))
