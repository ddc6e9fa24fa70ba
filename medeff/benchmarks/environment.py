"""The environment a benchmark ran in: versions, threads, CPU model, load average, allocator settings."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from medeff.utils.threads import available_cores

__all__ = ["cpu_model", "describe_environment", "load_average"]


def cpu_model() -> str:
    """The CPU model name from ``/proc/cpuinfo`` (or ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages, or None where the OS does not report them."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return str(getattr(mod, "__version__", "unknown"))


def describe_environment(threads: int, allocator_env: dict[str, str],
                         memory_allocator_env: dict[str, str] | None = None, *,
                         omp_wait_policy: str | None = None,
                         wait_policy: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, thread count, CPU and load (taken when called: call it at the start of a run).

    Args:
        threads: torch threads every worker uses.
        allocator_env: environment variables set for every timing worker (e.g. glibc malloc settings).
        memory_allocator_env: the same for every memory worker.
        omp_wait_policy: ``OMP_WAIT_POLICY`` of the workers (None: OpenMP's default).
        wait_policy: medeff's choice of wait policy at the start of the run, with its reason (each case records its
            own; see :func:`medeff.benchmarks.runner.wait_policy`).

    Returns:
        A JSON-serialisable dict.
    """
    import torch

    import medeff

    return {
        "torch": torch.__version__,
        "monai": _version("monai"),
        "medeff": getattr(medeff, "__version__", "unknown"),
        "python": platform.python_version(),
        "threads": int(threads),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "omp_wait_policy": omp_wait_policy,
        "wait_policy": wait_policy,
        "load_average_start": load_average(),
        "allocator_env": dict(allocator_env),
        "memory_allocator_env": dict(memory_allocator_env or {}),
        "platform": platform.platform(),
    }
