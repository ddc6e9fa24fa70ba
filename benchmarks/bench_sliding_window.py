"""Sliding-window inference of a synthetic CT: medeff B0 U-Net vs MONAI FlexibleUNet (efficientnet-b0), CPU fp32.

Both sides segment the same ``1x1xSHAPE`` volume into ``--classes`` labels with roi 96^3, overlap 0.25, Gaussian
blending and the same ``sw_batch_size``, under ``torch.inference_mode``, float32, the same thread count:

* medeff: ``medeff.engine.inference.sliding_window`` (MONAI's windows and importance map, in-place blending,
  batch norms folded into the convs) on ``create_model("efficientnet_b0", task="segmentation")``, in
  ``channels_last_3d`` unless ``--no-channels-last``;
* MONAI: ``monai.inferers.sliding_window_inference`` on ``FlexibleUNet(backbone="efficientnet-b0")`` as shipped.

Each side is warmed up with one window batch, then ``--repeats`` rounds run one full inference per side,
alternating which goes first; the result is the median over rounds of ``time(medeff) / time(MONAI)`` of the same
round (a slow phase of a shared machine hits both sides). The script re-executes itself once with the allocator
settings of ``medeff bench`` (``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10000000000``) and medeff's thread policy
(``medeff.utils.threads.thread_env``: the OpenMP wait policy chosen from the load at startup) for both sides.

Usage::

    .venv/bin/python benchmarks/bench_sliding_window.py                  # full: 512x512x200, 3 rounds
    .venv/bin/python benchmarks/bench_sliding_window.py --preset quick   # 192x192x128, 3 rounds (a few minutes)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

from medeff.engine.inference import sliding_window
from medeff.utils.atomic import write_json_atomic
from medeff.utils.threads import thread_env, wait_settings

__all__ = ["PRESETS", "main"]

ALLOCATOR_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "10000000000"}
#: preset -> (shape, repeats, default output)
PRESETS = {
    "full": ([512, 512, 200], 3, "benchmarks/results/sliding_window.json"),
    "quick": ([192, 192, 128], 3, "benchmarks/results/sliding_window_quick.json"),
}


def _medeff_net(classes: int, channels_last: bool) -> torch.nn.Module:
    from medeff.models import create_model

    return create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=classes, task="segmentation",
                        deep_supervision=False, channels_last=channels_last).eval()


def _monai_net(classes: int) -> torch.nn.Module:
    from monai.networks.nets import FlexibleUNet

    return FlexibleUNet(in_channels=1, out_channels=classes, backbone="efficientnet-b0", pretrained=False,
                        spatial_dims=3).eval()


def _run_medeff(net, image, roi, overlap, sw_batch):
    return sliding_window(net, image, roi_size=roi, sw_batch_size=sw_batch, overlap=overlap, mode="gaussian")


def _run_monai(net, image, roi, overlap, sw_batch):
    return sliding_window_inference(image, roi_size=roi, sw_batch_size=sw_batch, predictor=net, overlap=overlap,
                                    mode="gaussian")


def _timed(fn, net, image, roi, overlap, sw_batch) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        out = fn(net, image, roi, overlap, sw_batch)
    elapsed = time.perf_counter() - start
    assert out.shape[2:] == image.shape[2:] and out.dtype == torch.float32
    del out
    return elapsed


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a Markdown summary and write the JSON report (atomically)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--shape", type=int, nargs=3, default=None, help="override the preset's volume size")
    p.add_argument("--roi", type=int, default=96)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--classes", type=int, default=7)
    p.add_argument("--sw-batch", type=int, default=4, help="windows per forward pass (both sides)")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="run the medeff net in contiguous layout")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default: the preset's)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="JSON report (default: the preset's)")
    a = p.parse_args(argv)
    # same allocator settings for both sides, and medeff's thread policy (the wait policy chosen from the load now)
    wanted = {**ALLOCATOR_ENV, **thread_env(threads=a.threads)}
    if any(os.environ.get(k) != v for k, v in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
    shape, repeats, out_path = PRESETS[a.preset]
    shape = a.shape or shape
    repeats = a.repeats or repeats
    out_path = a.out or Path(out_path)
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    image = torch.randn(1, 1, *shape)
    roi = [a.roi] * 3
    load_start = _load()
    nets = {"medeff": _medeff_net(a.classes, a.channels_last), "monai": _monai_net(a.classes)}
    runs = {"medeff": _run_medeff, "monai": _run_monai}
    warm = image[..., : a.roi, : a.roi, : a.roi]
    for side in nets:  # one window batch each: first-call costs (oneDNN kernels, allocator) out of the timing
        _timed(runs[side], nets[side], warm, roi, a.overlap, a.sw_batch)
    times: dict[str, list[float]] = {"medeff": [], "monai": []}
    loads = []
    for r in range(repeats):
        for side in (["medeff", "monai"] if r % 2 == 0 else ["monai", "medeff"]):
            times[side].append(_timed(runs[side], nets[side], image, roi, a.overlap, a.sw_batch))
            print(f"round {r} {side}: {times[side][-1]:.1f} s (load {_load()})", file=sys.stderr, flush=True)
        loads.append(_load())
    ratios = [m / n for m, n in zip(times["medeff"], times["monai"])]
    result = {
        "preset": a.preset, "shape": shape, "roi": roi, "overlap": a.overlap, "classes": a.classes,
        "sw_batch": a.sw_batch, "channels_last_medeff": a.channels_last, "threads": a.threads, "repeats": repeats,
        "times_s": times, "ratios": ratios, "median_ratio_medeff_over_monai": statistics.median(ratios),
        "min_time_ratio": min(times["medeff"]) / min(times["monai"]),
        "median_s": {k: statistics.median(v) for k, v in times.items()},
        "load_average_start": load_start, "load_average_per_round": loads, "load_average_end": _load(),
        "torch": torch.__version__, "python": platform.python_version(), "allocator_env": ALLOCATOR_ENV,
        "wait_policy": wait_settings(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    print("| side | median time (s) | min (s) | rounds |\n|---|---|---|---|")
    for side, ts in times.items():
        print(f"| {side} | {statistics.median(ts):.1f} | {min(ts):.1f} | {len(ts)} |")
    print(f"\nmedeff / MONAI: median of per-round ratios {result['median_ratio_medeff_over_monai']:.3f} "
          f"(ratios {[round(r, 3) for r in ratios]}), load {load_start} -> {result['load_average_end']}")
    write_json_atomic(out_path, result, overwrite=True)
    print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
