"""Benchmark medeff's depthwise convolution against torch's native one on CPU (fwd+bwd and a full train step).

Two parts, both measured in one process as interleaved A/B pairs (native, then medeff, alternating which
goes first) and reported as the median of per-pair time ratios medeff/native:

1. ``layers``: every distinct depthwise layer of an EfficientNet-B0 3D at input 2x1x64^3 (the b0 block list:
   expanded channels 32/96/144/240/480/672/1152, spatial 32..2, kernels 3 and 5, strides 1 and 2), forward
   plus backward of one layer, input in contiguous (NCDHW) and channels_last_3d layout.
2. ``model``: MONAI ``EfficientNetBN("efficientnet-b0", spatial_dims=3)`` train step (forward, cross-entropy,
   backward, SGD step) at input 2x1x64^3, unmodified vs ``convert_depthwise`` applied, with model and input
   contiguous and in channels_last_3d.

The process re-executes itself once with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10000000000`` (glibc keeps
freed memory instead of returning it and page-faulting it back) unless ``--no-malloc-env`` is given; both sides
always run under the same settings.

Usage::

    .venv/bin/python benchmarks/bench_depthwise.py --out benchmarks/results/depthwise.json
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medeff.ops import DepthwiseConv, convert_depthwise
from medeff.utils.atomic import write_json_atomic

#: EfficientNet-B0 blocks: (repeats, kernel, stride, expand ratio, output channels); the stem gives 32 channels at /2.
B0_BLOCKS = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
             (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "10000000000"}


def b0_depthwise_layers(input_size: int = 64, stem_channels: int = 32) -> list[tuple[int, int, int, int]]:
    """Depthwise layers of EfficientNet-B0 (channels, input spatial size, kernel, stride), one entry per layer."""
    layers = []
    channels, size = stem_channels, input_size // 2
    for repeats, kernel, stride, expand, out_channels in B0_BLOCKS:
        for i in range(repeats):
            s = stride if i == 0 else 1
            layers.append((channels * expand, size, kernel, s))
            channels = out_channels
            size = (size + s - 1) // s
    return layers


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ab_pairs(fn_a, fn_b, pairs: int, warmup: int = 2) -> dict:
    """Interleaved A/B timing; returns medians (s) and the median of per-pair ratios b/a."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    ta, tb, ratios = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            a, b = _time(fn_a), _time(fn_b)
        else:
            b, a = _time(fn_b), _time(fn_a)
        ta.append(a)
        tb.append(b)
        ratios.append(b / a)
    return {"native_s": statistics.median(ta), "medeff_s": statistics.median(tb),
            "ratio": statistics.median(ratios), "pairs": pairs}


def bench_layer(channels: int, size: int, kernel: int, stride: int, channels_last: bool, pairs: int) -> dict:
    """fwd+bwd of one depthwise layer, native nn.Conv3d vs DepthwiseConv with the same weights."""
    native = nn.Conv3d(channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False)
    fast = DepthwiseConv.from_conv(copy.deepcopy(native))
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    x = torch.randn(2, channels, size, size, size).contiguous(memory_format=fmt).requires_grad_(True)
    out_size = (size + 2 * (kernel // 2) - kernel) // stride + 1
    grad = torch.randn(2, channels, out_size, out_size, out_size).contiguous(memory_format=fmt)

    def step(module):
        def run():
            x.grad = None
            module.weight.grad = None
            module(x).backward(grad)
        return run

    return ab_pairs(step(native), step(fast), pairs)


def _monai_b0():
    from monai.networks.nets import EfficientNetBN

    return EfficientNetBN("efficientnet-b0", spatial_dims=3, in_channels=1, num_classes=2, pretrained=False)


def bench_model(channels_last: bool, pairs: int) -> dict:
    """Train step of MONAI EfficientNetBN b0 3D at 2x1x64^3: unmodified vs convert_depthwise."""
    torch.manual_seed(0)
    ref = _monai_b0()
    fast = convert_depthwise(copy.deepcopy(ref))
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    ref = ref.to(memory_format=fmt)
    fast = fast.to(memory_format=fmt)
    x = torch.randn(2, 1, 64, 64, 64).contiguous(memory_format=fmt)
    target = torch.tensor([0, 1])

    def step(model):
        opt = torch.optim.SGD(model.parameters(), lr=1e-4)

        def run():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), target).backward()
            opt.step()
        return run

    result = ab_pairs(step(ref), step(fast), pairs)
    result["converted_layers"] = sum(isinstance(m, DepthwiseConv) for m in fast.modules())
    return result


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:8.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print tables and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/depthwise.json", help="JSON output path")
    parser.add_argument("--layer-pairs", type=int, default=7, help="A/B pairs per layer and layout")
    parser.add_argument("--model-pairs", type=int, default=9, help="A/B pairs per model layout")
    parser.add_argument("--parts", default="layers,model", help="comma list of: layers, model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-malloc-env", action="store_true", help="keep glibc malloc defaults")
    args = parser.parse_args(argv)
    if not args.no_malloc_env and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **MALLOC_ENV})
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    report: dict = {"torch": torch.__version__, "threads": args.threads,
                    "malloc_env": {k: os.environ.get(k) for k in MALLOC_ENV}, "layers": [], "model": []}

    if "layers" in parts:
        counts = Counter(b0_depthwise_layers())
        print("EfficientNet-B0 3D depthwise layers at 2x1x64^3, fwd+bwd per layer (ms, medians; ratio = medeff/native)")
        print(f"{'C':>5} {'S':>3} {'k':>2} {'s':>2} {'n':>2} {'layout':>6} {'native':>8} {'medeff':>8} {'ratio':>6}")
        for (channels, size, kernel, stride), n in counts.items():
            for cl in (False, True):
                row = bench_layer(channels, size, kernel, stride, cl, args.layer_pairs)
                row.update(channels=channels, size=size, kernel=kernel, stride=stride, count=n,
                           layout="CL" if cl else "NC")
                report["layers"].append(row)
                print(f"{channels:5d} {size:3d} {kernel:2d} {stride:2d} {n:2d} {row['layout']:>6} "
                      f"{_ms(row['native_s'])} {_ms(row['medeff_s'])} {row['ratio']:6.2f}", flush=True)
        for layout in ("NC", "CL"):
            rows = [r for r in report["layers"] if r["layout"] == layout]
            tot_n = sum(r["native_s"] * r["count"] for r in rows)
            tot_m = sum(r["medeff_s"] * r["count"] for r in rows)
            report[f"layers_total_{layout}"] = {"native_s": tot_n, "medeff_s": tot_m, "speedup": tot_n / tot_m}
            print(f"all {sum(counts.values())} layers {layout}: native {_ms(tot_n)} ms, medeff {_ms(tot_m)} ms, "
                  f"speedup {tot_n / tot_m:.2f}x")

    if "model" in parts:
        print("\nMONAI EfficientNetBN b0 3D train step at 2x1x64^3 (ms, medians; ratio = medeff/native)")
        for cl in (False, True):
            row = bench_model(cl, args.model_pairs)
            row["layout"] = "channels_last_3d" if cl else "contiguous"
            report["model"].append(row)
            print(f"{row['layout']:>16}: native {_ms(row['native_s'])}  medeff {_ms(row['medeff_s'])}  ratio "
                  f"{row['ratio']:.3f}  speedup {1 / row['ratio']:.2f}x  ({row['converted_layers']} layers converted)",
                  flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, report)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
