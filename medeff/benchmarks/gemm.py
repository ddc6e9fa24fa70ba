"""The machine's measured matrix-multiply peak: the yardstick for how much of the CPU a train step uses.

A train step's FLOP rate means little on its own (it depends on the CPU, its vector units and the threads). Divided
by the rate of a large single-precision matrix product on the same threads, in the same kind of worker process, it
becomes a fraction of what this machine can do: ``medeff bench`` reports that fraction for every side
(``peak_fraction``) and can check it against a floor (metric ``peak_fraction``, passed when at least the target).
"""

from __future__ import annotations

import time
from typing import Any

import torch

__all__ = ["gemm_peak"]


def gemm_peak(threads: int, size: int = 2048, repeats: int = 5) -> dict[str, Any]:
    """Time ``repeats`` float32 products of two ``size x size`` matrices; the best one gives the peak.

    Args:
        threads: torch threads (the benchmark's thread count).
        size: matrix side; 2048 and more reaches the BLAS's full speed on usual CPUs.
        repeats: timed products after one untimed warm-up.

    Returns:
        ``{"size", "threads", "times_s", "gflops"}``; ``gflops`` = ``2 * size**3`` over the fastest product.
    """
    if size < 1 or repeats < 1:
        raise ValueError(f"gemm_peak: size and repeats must be >= 1 (got size={size}, repeats={repeats}).")
    torch.set_num_threads(int(threads))
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(int(repeats)):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return {"size": int(size), "threads": int(threads), "times_s": times, "gflops": 2.0 * size**3 / min(times) / 1e9}
