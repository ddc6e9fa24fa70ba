"""Sliding-window inference of a synthetic CT: medeff B0 U-Net vs MONAI FlexibleUNet (efficientnet-b0), CPU fp32.

Both sides segment the same 1x1x512x512x200 volume into ``--classes`` labels with MONAI's
``sliding_window_inference`` (roi 96^3, overlap 0.25, Gaussian blending) under ``torch.inference_mode``; only the
network differs (and each side's ``sw_batch_size`` / memory layout, chosen by ``--sw-batch``). The two run as
interleaved pairs (alternating which goes first) and the report is the median ratio medeff / MONAI.

Usage::

    .venv/bin/python benchmarks/bench_sliding_window.py --repeats 1 --out benchmarks/results/sliding_window.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

from medeff.utils.atomic import write_json_atomic

__all__ = ["main"]


def _medeff_net(classes: int, channels_last: bool) -> torch.nn.Module:
    from medeff.models import create_model

    net = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=classes, task="segmentation",
                       deep_supervision=False, channels_last=channels_last)
    return net.eval()


def _monai_net(classes: int) -> torch.nn.Module:
    from monai.networks.nets import FlexibleUNet

    return FlexibleUNet(in_channels=1, out_channels=classes, backbone="efficientnet-b0", pretrained=False,
                        spatial_dims=3).eval()


def _run(net, image, roi, overlap, sw_batch, channels_last: bool) -> float:
    x = image.contiguous(memory_format=torch.channels_last_3d) if channels_last else image
    start = time.perf_counter()
    with torch.inference_mode():
        out = sliding_window_inference(x, roi_size=roi, sw_batch_size=sw_batch, predictor=net, overlap=overlap,
                                       mode="gaussian")
    elapsed = time.perf_counter() - start
    assert out.shape[2:] == image.shape[2:]
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown table; ``--out`` writes JSON (atomically)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=3, default=[512, 512, 200])
    p.add_argument("--roi", type=int, default=96)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--sw-batch", type=int, nargs=2, default=[4, 4], metavar=("MEDEFF", "MONAI"))
    p.add_argument("--channels-last", action="store_true", help="medeff side in channels_last_3d")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    image = torch.randn(1, 1, *a.shape)
    roi = [a.roi] * 3
    nets = {"medeff": _medeff_net(a.classes, a.channels_last), "monai": _monai_net(a.classes)}
    times: dict[str, list[float]] = {"medeff": [], "monai": []}
    for r in range(a.repeats):
        order = ["medeff", "monai"] if r % 2 == 0 else ["monai", "medeff"]
        for side in order:
            sw = a.sw_batch[0] if side == "medeff" else a.sw_batch[1]
            cl = a.channels_last and side == "medeff"
            times[side].append(_run(nets[side], image, roi, a.overlap, sw, cl))
            print(f"repeat {r} {side}: {times[side][-1]:.1f} s", file=sys.stderr, flush=True)
    ratios = [m / n for m, n in zip(times["medeff"], times["monai"])]
    result = {"shape": a.shape, "roi": roi, "overlap": a.overlap, "classes": a.classes, "sw_batch": a.sw_batch,
              "channels_last": a.channels_last, "threads": a.threads, "times_s": times,
              "median_ratio_medeff_over_monai": statistics.median(ratios), "torch": torch.__version__}
    print("| side | median time (s) | runs |\n|---|---|---|")
    for side, ts in times.items():
        print(f"| {side} | {statistics.median(ts):.1f} | {len(ts)} |")
    print(f"\nmedeff / MONAI = {result['median_ratio_medeff_over_monai']:.2f}")
    if a.out:
        write_json_atomic(a.out, result, overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
