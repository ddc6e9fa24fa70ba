"""Thread policy chosen at startup: as many OpenMP threads as the process may really use, and how idle threads wait.

Two things make a CPU train step slow on a loaded or limited machine:

* **More threads than cores.** ``os.cpu_count()`` reports the host's CPUs, but a container's CPU quota (cgroup
  ``cpu.max``) or the process's affinity mask (``taskset``, ``docker --cpuset-cpus``) may allow fewer. Threads
  beyond what the process may run wait for each other at every parallel region.
* **How idle threads wait.** Between parallel regions an OpenMP thread either spins for a while (the runtime's
  default) or sleeps at once (``OMP_WAIT_POLICY=PASSIVE``). On an idle machine spinning is much faster for a step
  of many small kernels (medeff's 3D classifier: 102 against 178 ms); when another process wants the same cores,
  the spinning threads take its time and wait for each other's descheduled threads, and the same step takes
  385 against 204 ms (docs/benchmarks.md, "Thread policy").

:func:`apply_thread_policy` is called by the ``medeff`` command at entry, before torch is imported (OpenMP reads
its settings once, when torch initialises it); the benchmark workers get the same settings, decided again before
every case. It sets, only where the user has not set them: ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` to
:func:`available_cores`, and the wait policy of :func:`choose_wait_policy`: ``spin`` (the runtime's default, nothing
set) when the process's CPUs are idle at startup, ``passive`` (``OMP_WAIT_POLICY=PASSIVE``) when another process
keeps them busy, when a cgroup quota caps the CPU time (spinning would spend it), or when the load cannot be read.
``MEDEFF_WAIT_POLICY=spin|passive|auto`` chooses by hand; a user's ``OMP_WAIT_POLICY`` wins over both. The choice
is made once, at startup: a process that starts on an idle machine keeps spinning if a neighbour starts later.
This module does not import torch.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Collection, Mapping, MutableMapping
from pathlib import Path

from medeff.errors import ConfigError

__all__ = ["BUSY_CORES", "CGROUP_ROOT", "WAIT_POLICY_VAR", "affinity_cores", "apply_thread_policy", "available_cores",
           "busy_cores", "cgroup_cpu_limit", "choose_wait_policy", "other_load", "read_cpu_times", "thread_env",
           "user_environ", "wait_settings"]

#: where the cgroup file system is mounted (v2 unified, or v1 with a ``cpu`` controller directory)
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: per-CPU time counters (Linux)
PROC_STAT = Path("/proc/stat")
#: medeff's own setting of the wait policy: ``auto`` (default), ``spin`` or ``passive``
WAIT_POLICY_VAR = "MEDEFF_WAIT_POLICY"
#: under ``auto``, other processes' load (in cores, on this process's CPUs) from which threads wait passively
BUSY_CORES = 0.5
#: how long ``auto`` watches the CPUs at startup (seconds)
SAMPLE_S = 0.15
_POLICIES = ("auto", "spin", "passive")
#: what apply_thread_policy added to os.environ (so that user_environ can tell it from the user's settings)
_applied: dict[str, str] = {}


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


def read_cpu_times(path: str | os.PathLike = PROC_STAT) -> dict[int, tuple[int, int]] | None:
    """Per CPU number, ``(busy, total)`` clock ticks since boot from ``/proc/stat``; None when unreadable.

    Busy is user + nice + system + irq + softirq + steal (time the hypervisor gave the CPU to another guest counts
    as busy: a thread spinning there waits for nothing); idle and iowait are not busy.
    """
    text = _read(Path(path))
    if text is None:
        return None
    times: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        try:
            v = [int(f) for f in rest.split()[:8]]
        except ValueError:
            return None
        if len(v) < 4:
            return None
        v += [0] * (8 - len(v))
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        times[int(name[3:])] = (busy, busy + v[3] + v[4])
    return times or None


def busy_cores(before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]],
               cpus: Collection[int] | None = None) -> float | None:
    """Load between two :func:`read_cpu_times` readings, in cores: the sum over ``cpus`` (default: all) of each
    CPU's busy share of its elapsed ticks. None when no CPU of ``cpus`` advanced."""
    load, seen = 0.0, False
    for cpu, (busy1, total1) in after.items():
        if (cpus is not None and cpu not in cpus) or cpu not in before:
            continue
        busy0, total0 = before[cpu]
        if total1 > total0:
            load += min(1.0, max(0.0, (busy1 - busy0) / (total1 - total0)))
            seen = True
    return load if seen else None


def other_load(interval_s: float = SAMPLE_S, cpus: Collection[int] | None = None,
               path: str | os.PathLike = PROC_STAT) -> float | None:
    """Load of the CPUs this process may run on (default: its affinity set), in cores, watched for ``interval_s``
    while this process sleeps: what other processes use. None where ``/proc/stat`` cannot be read."""
    if cpus is None:
        try:
            cpus = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            cpus = None
    before = read_cpu_times(path)
    if before is None:
        return None
    time.sleep(interval_s)
    after = read_cpu_times(path)
    return None if after is None else busy_cores(before, after, cpus)


def choose_wait_policy(environ: Mapping[str, str] | None = None, *, root: str | os.PathLike = CGROUP_ROOT,
                       measure: Callable[[], float | None] = other_load) -> tuple[str, str]:
    """``("spin" | "passive", reason)``: how idle OpenMP threads should wait in a process starting now.

    ``MEDEFF_WAIT_POLICY`` in ``environ`` (``spin`` or ``passive``) decides; ``auto`` (or unset) chooses
    ``passive`` under a cgroup CPU quota below the affinity count, when the load cannot be read, or when other
    processes keep at least :data:`BUSY_CORES` of this process's CPUs busy over :data:`SAMPLE_S` seconds
    (``measure``), and ``spin`` otherwise.

    Raises:
        ConfigError: ``MEDEFF_WAIT_POLICY`` is set to something else.
    """
    environ = os.environ if environ is None else environ
    setting = (environ.get(WAIT_POLICY_VAR) or "auto").strip().lower()
    if setting not in _POLICIES:
        raise ConfigError(f"{WAIT_POLICY_VAR}={environ.get(WAIT_POLICY_VAR)!r} is not a wait policy; expected one of "
                          f"{', '.join(_POLICIES)}.", hint=f"unset it (auto) or e.g. export {WAIT_POLICY_VAR}=passive")
    if setting != "auto":
        return setting, f"{WAIT_POLICY_VAR}={setting}"
    limit = cgroup_cpu_limit(root)
    if limit is not None and limit < affinity_cores():
        return "passive", f"a cgroup quota of {limit:g} CPUs (spinning would spend it)"
    load = measure()
    if load is None:
        return "passive", "the CPU load could not be read"
    if load >= BUSY_CORES:
        return "passive", f"other processes kept {load:.2f} of this process's cores busy at startup"
    return "spin", f"this process's cores were idle at startup (other load {load:.2f} cores)"


def thread_env(environ: Mapping[str, str] | None = None, *, threads: int | None = None,
               root: str | os.PathLike = CGROUP_ROOT, policy: str | None = None,
               measure: Callable[[], float | None] = other_load) -> dict[str, str]:
    """The settings :func:`apply_thread_policy` would add to ``environ`` (keys already set there are left out).

    ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``, and, unless ``environ`` sets ``OMP_WAIT_POLICY``, the choice of
    :func:`choose_wait_policy` as ``MEDEFF_WAIT_POLICY`` (so that child processes keep it) with
    ``OMP_WAIT_POLICY=PASSIVE`` for ``passive``.

    Args:
        environ: the environment to complete (default: ``os.environ``).
        threads: thread count to use (default: :func:`available_cores`); never more than the available cores.
        root: cgroup mount point.
        policy: ``spin`` or ``passive`` decided already (default: :func:`choose_wait_policy` decides).
        measure: the load probe of :func:`choose_wait_policy` (tests pass a constant).
    """
    environ = os.environ if environ is None else environ
    cores = available_cores(root)
    n = cores if threads is None else max(1, min(int(threads), cores))
    wanted = {"OMP_NUM_THREADS": str(n), "MKL_NUM_THREADS": str(n)}
    if not environ.get("OMP_WAIT_POLICY"):
        if policy is None:
            policy, _ = choose_wait_policy(environ, root=root, measure=measure)
        wanted[WAIT_POLICY_VAR] = policy
        if policy == "passive":
            wanted["OMP_WAIT_POLICY"] = "PASSIVE"
    return {k: v for k, v in wanted.items() if not environ.get(k)}


def wait_settings(environ: Mapping[str, str] | None = None) -> dict[str, str | None]:
    """The wait-policy variables of ``environ`` (default ``os.environ``): ``MEDEFF_WAIT_POLICY`` and
    ``OMP_WAIT_POLICY``, None where unset; what a report records of the policy a process runs with."""
    environ = os.environ if environ is None else environ
    return {k: environ.get(k) for k in (WAIT_POLICY_VAR, "OMP_WAIT_POLICY")}


def user_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default ``os.environ``) without what :func:`apply_thread_policy` added to
    ``os.environ``: the settings the user chose, for a child process that decides the policy again."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if _applied.get(k) != v}


def apply_thread_policy(environ: MutableMapping[str, str] | None = None, *,
                        root: str | os.PathLike = CGROUP_ROOT) -> dict[str, str]:
    """Set the thread policy in ``environ`` (default ``os.environ``) where the user has not; returns what was set.

    Call it before torch is imported. If torch is already imported (e.g. in a notebook), the thread count is
    also applied with ``torch.set_num_threads`` (the wait policy then keeps whatever OpenMP started with).
    """
    environ = os.environ if environ is None else environ
    added = thread_env(environ, root=root)
    environ.update(added)
    if environ is os.environ:
        _applied.update(added)
    torch = sys.modules.get("torch")
    if torch is not None and "OMP_NUM_THREADS" in added and environ is os.environ:
        torch.set_num_threads(int(added["OMP_NUM_THREADS"]))
    return added
