"""Thread policy chosen at startup: as many OpenMP threads as the process may really use, passive waiting.

Two things make a CPU train step slow on a loaded or limited machine:

* **More threads than cores.** ``os.cpu_count()`` reports the host's CPUs, but a container's CPU quota (cgroup
  ``cpu.max``) or the process's affinity mask (``taskset``, ``docker --cpuset-cpus``) may allow fewer. Threads
  beyond what the process may run wait for each other at every parallel region.
* **Spinning threads.** With OpenMP's default (active) waiting, an idle thread spins for a while before sleeping;
  when another process holds the core, the spinning and the descheduled thread that everyone waits for cost more
  than the work. A step of many small kernels (medeff's depthwise backward) suffers most.

:func:`apply_thread_policy` is called by the ``medeff`` command at entry, before torch is imported (OpenMP reads
its settings once, when torch initialises it), and the benchmark workers get the same settings. It sets, only
where the user has not set them: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to :func:`available_cores`, and
``OMP_WAIT_POLICY=PASSIVE``. This module does not import torch.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

__all__ = ["CGROUP_ROOT", "affinity_cores", "apply_thread_policy", "available_cores", "cgroup_cpu_limit",
           "thread_env"]

#: where the cgroup file system is mounted (v2 unified, or v1 with a ``cpu`` controller directory)
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | os.PathLike = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota allows (``quota / period``), or None when there is no quota or no cgroup file.

    Reads cgroup v2 ``cpu.max`` (``"200000 100000"`` or ``"max 100000"``), else cgroup v1
    ``cpu/cpu.cfs_quota_us`` and ``cpu/cpu.cfs_period_us`` (quota ``-1``: none). Unreadable or malformed files
    count as no limit.
    """
    root = Path(root)
    text = _read(root / "cpu.max")
    if text is not None:
        parts = text.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = float(parts[0]), float(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    for sub in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = _read(root / sub / "cpu.cfs_quota_us"), _read(root / sub / "cpu.cfs_period_us")
        if quota is None or period is None:
            continue
        try:
            q, p = float(quota), float(period)
        except ValueError:
            return None
        return q / p if q > 0 and p > 0 else None
    return None


def affinity_cores() -> int:
    """CPUs this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where that is missing)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def available_cores(root: str | os.PathLike = CGROUP_ROOT, affinity: int | None = None) -> int:
    """Cores the process can really use: the affinity count, capped by the cgroup quota (rounded up), at least 1.

    Args:
        root: cgroup mount point (a test passes a folder with fake files).
        affinity: the affinity count (default: :func:`affinity_cores`).
    """
    cores = affinity_cores() if affinity is None else int(affinity)
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return max(1, cores)


def thread_env(environ: MutableMapping[str, str] | None = None, *, threads: int | None = None,
               root: str | os.PathLike = CGROUP_ROOT) -> dict[str, str]:
    """The settings :func:`apply_thread_policy` would add to ``environ`` (keys already set there are left out).

    Args:
        environ: the environment to complete (default: ``os.environ``).
        threads: thread count to use (default: :func:`available_cores`); never more than the available cores.
        root: cgroup mount point.
    """
    environ = os.environ if environ is None else environ
    cores = available_cores(root)
    n = cores if threads is None else max(1, min(int(threads), cores))
    wanted = {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n), "OMP_WAIT_POLICY": "PASSIVE"}
    return {k: v for k, v in wanted.items() if not environ.get(k)}


def apply_thread_policy(environ: MutableMapping[str, str] | None = None, *,
                        root: str | os.PathLike = CGROUP_ROOT) -> dict[str, str]:
    """Set the thread policy in ``environ`` (default ``os.environ``) where the user has not; returns what was set.

    Call it before torch is imported. If torch is already imported (e.g. in a notebook), the thread count is
    also applied with ``torch.set_num_threads`` (the wait policy then keeps whatever OpenMP started with).
    """
    environ = os.environ if environ is None else environ
    added = thread_env(environ, root=root)
    environ.update(added)
    torch = sys.modules.get("torch")
    if torch is not None and "OMP_NUM_THREADS" in added and environ is os.environ:
        torch.set_num_threads(int(added["OMP_NUM_THREADS"]))
    return added
