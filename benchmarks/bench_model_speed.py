"""Speed per variant for the model table of docs/models.md: CPU inference latency in 2D and 3D.

For every EfficientNet variant: parameters and multiply-adds for a CT-shaped input, and the median wall time of
one inference forward pass (``torch.inference_mode``, float32, eval mode) at a fixed input size, so the variants
compare with each other:

* 2D: one 1-channel 224x224 slice, 2 classes;
* 3D: one 1-channel 64^3 crop, 2 classes.

Usage::

    python benchmarks/bench_model_speed.py [--threads 2] [--repeats 5] [--names efficientnet_b0 efficientnet_b1]
        [--output benchmarks/results/model_speed.json]

Prints a Markdown table and writes the JSON (atomically). Timings depend on the machine and its load: the JSON
records the torch version, thread count and the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from medeff.models import create_model, list_models
from medeff.models.table import count_macs
from medeff.utils.atomic import write_json_atomic

CASES = {"2d": (2, (224, 224)), "3d": (3, (64, 64, 64))}


def measure(name: str, spatial_dims: int, size: tuple[int, ...], repeats: int) -> dict:
    """Parameters, GMACs and median forward time (ms) of one variant at one input size."""
    torch.manual_seed(0)
    model = create_model(name, spatial_dims=spatial_dims, in_channels=1, num_classes=2).eval()
    x = torch.randn(1, 1, *size)
    params = sum(p.numel() for p in model.parameters())
    macs = count_macs(model, tuple(x.shape))
    times = []
    with torch.inference_mode():
        model(x)  # warm-up (allocations, kernel selection)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - t0) * 1e3)
    return {"params_m": params / 1e6, "gmacs": macs / 1e9, "ms": statistics.median(times), "runs_ms": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--names", nargs="*", default=None)
    parser.add_argument("--output", default="benchmarks/results/model_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = args.names or list_models()
    result = {"torch": torch.__version__, "threads": args.threads, "repeats": args.repeats,
              "load_start": os.getloadavg(), "inputs": {k: [1, 1, *v[1]] for k, v in CASES.items()}, "models": {}}
    for name in names:
        result["models"][name] = {case: measure(name, dims, size, args.repeats) for case, (dims, size) in CASES.items()}
        r = result["models"][name]
        print(f"{name}: 2D {r['2d']['ms']:.1f} ms, 3D {r['3d']['ms']:.1f} ms", flush=True)
    result["load_end"] = os.getloadavg()
    write_json_atomic(Path(args.output), result)
    print("\n| name | 2D params (M) | 2D GMACs | 2D ms | 3D params (M) | 3D GMACs | 3D ms |\n|---|---|---|---|---|---|---|")
    for name, r in result["models"].items():
        a, b = r["2d"], r["3d"]
        print(f"| {name} | {a['params_m']:.2f} | {a['gmacs']:.2f} | {a['ms']:.0f} | {b['params_m']:.2f} | "
              f"{b['gmacs']:.2f} | {b['ms']:.0f} |")


if __name__ == "__main__":
    main()
