"""The GEMM yardstick of ``medeff bench``: the rate of a float32 matrix product on the benchmark's threads."""

from __future__ import annotations

import pytest

from medeff.benchmarks.gemm import gemm_peak
from medeff.benchmarks.runner import flops_per_time
from medeff.benchmarks.worker import run_job


def test_gemm_peak_is_the_fastest_product():
    peak = gemm_peak(1, size=128, repeats=3)
    assert peak["size"] == 128 and peak["threads"] == 1 and len(peak["times_s"]) == 3
    assert peak["gflops"] == pytest.approx(2 * 128**3 / min(peak["times_s"]) / 1e9)
    assert run_job({"mode": "gemm", "threads": 1, "size": 64, "repeats": 1})["size"] == 64
    with pytest.raises(ValueError, match="size"):
        gemm_peak(1, size=0)


def test_peak_fraction_divides_the_step_rate_by_the_gemm_rate():
    side = flops_per_time({"forward_flops": 1e9, "train_step_flops": 3e9}, 0.5, peak_gflops=60.0)
    assert side["gflops_per_s"] == pytest.approx(6.0) and side["peak_fraction"] == pytest.approx(0.1)
    assert side["ms_per_gflop"] == pytest.approx(500 / 3)
    assert flops_per_time({"forward_flops": 1e9, "train_step_flops": 3e9}, 0.5)["peak_fraction"] is None
