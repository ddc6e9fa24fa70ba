"""``run_bench(cfg)``: medeff against its peers, time and memory, each case in fresh worker processes.

Per case (all settings come from ``conf/bench.yaml``):

* **time**: one worker process builds every side of the case, warms each up, then runs ``pairs`` rounds of one
  train step per side, alternating the order (A B, B A, ...). A check's time ratio is the median over rounds of
  ``time(side) / time(ref)`` of the same round, so slow phases of a shared machine hit both sides alike.
* **memory**: every side runs in its own fresh worker: peak RSS growth from just before the first step to after
  ``warmup + memory_steps`` steps (the model, optimizer and batch exist before; imports and model weights are
  not counted); the peak growth of the bytes torch's CPU allocator holds during one more step (tensors only, as
  ``torch.cuda.max_memory_allocated`` on a GPU: malloc's fragmentation is not in it); and the bytes autograd saves
  for backward in one forward (deterministic).

The timing worker also counts each side's FLOPs (:mod:`medeff.benchmarks.flops`: forward, train step = 3x forward)
and the report gives the time per train-step GFLOP of every side and, beside every time ratio, the FLOPs ratio of
the two sides (1.0: equal work) and the time ratio per FLOP. Before the cases, one worker times a large float32
matrix product (:mod:`medeff.benchmarks.gemm`, ``cfg.gemm``); every side's train-step FLOP rate is reported as a
fraction of it (``peak_fraction``), which a check can hold to a floor.

Every worker gets ``threads`` torch/OpenMP threads (``auto``: the cores the process may use, never more), the
OpenMP wait policy of :mod:`medeff.utils.threads` (spin when the cores are idle, passive when another process keeps
them busy; decided again before every case, recorded per case; the user's ``OMP_WAIT_POLICY`` or
``MEDEFF_WAIT_POLICY`` wins) and the same glibc malloc settings on every side: timing workers
``allocator_env`` (large buffers stay in the heap: fresh buffers would otherwise pay page faults on every step,
which would be measured as model time), memory workers ``memory_allocator_env`` (large buffers are mapped and given
back when freed, so the RSS high-water mark follows the memory the step holds rather than heap fragmentation: under
the timing settings the RSS of a single 3D convolution grew to 2.5x the peak of its tensors in three steps).
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medeff.benchmarks.environment import describe_environment, load_average
from medeff.benchmarks.peers import peer_available
from medeff.errors import ConfigError
from medeff.utils.atomic import check_writable, write_json_atomic
from medeff.utils.logging import get_logger
from medeff.utils.options import look_up
from medeff.utils.threads import available_cores, choose_wait_policy, thread_env, user_environ

__all__ = ["METRICS", "check_ratio", "flops_per_time", "resolve_config", "run_bench", "run_worker",
           "summarise_times", "work_ratios"]

_log = get_logger(__name__)

#: Check metric -> (what it compares, unit).
METRICS = {"time": "median of per-round step-time ratios", "memory": "peak RSS growth ratio",
           "alloc": "peak allocator growth ratio (tensors only)", "saved": "autograd saved-bytes ratio",
           "peak_fraction": "train-step FLOP rate / the machine's measured GEMM rate (passed when >= target)"}
#: Metrics passed when the value is at least the target (the others: at most); they need no ``ref`` side.
AT_LEAST = frozenset({"peak_fraction"})
_MEMORY_KEYS = {"memory": "peak_delta_bytes", "alloc": "alloc_peak_bytes", "saved": "saved_bytes"}


def resolve_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a benchmark config and fill in the default case list (every case in ``case_defs``).

    Raises:
        ConfigError: unknown case name, unknown metric, a check naming a side the case does not have, or
            non-positive pairs/threads.
    """
    cfg = copy.deepcopy(dict(cfg))
    defs = cfg.get("case_defs") or {}
    cases = list(cfg.get("cases") or defs)
    for name in cases:
        look_up(name, defs, what="benchmark case", key="cases")
        case = defs[name]
        for check in case.get("checks", []):
            look_up(check["metric"], METRICS, what="check metric", key=f"case_defs.{name}.checks.metric")
            for role in ("side",) if check["metric"] in AT_LEAST else ("side", "ref"):
                if check.get(role) not in case["sides"]:
                    raise ConfigError(f"bench config: case '{name}' has a check on side '{check.get(role)}', but its "
                                      f"sides are {sorted(case['sides'])}.",
                                      hint=f"name one of the sides in case_defs.{name}.sides")
    cores = available_cores()
    if cfg.get("threads") == "auto":
        cfg["threads"] = cores
    try:
        threads_ok = int(cfg.get("threads", 0)) >= 1
    except (TypeError, ValueError):
        threads_ok = False
    if int(cfg.get("pairs", 0)) < 1 or not threads_ok:
        raise ConfigError(f"bench config: pairs and threads must be >= 1 (threads may also be 'auto'; got "
                          f"pairs={cfg.get('pairs')}, threads={cfg.get('threads')}).", hint="e.g. pairs=7 threads=2")
    if int(cfg["threads"]) > cores:
        _log.warning("bench: threads=%s is more than the %d cores this process may use (affinity, cgroup quota); "
                     "using %d", cfg["threads"], cores, cores)
        cfg["threads"] = cores
    cfg["threads"] = int(cfg["threads"])
    cfg["cases"] = cases
    return cfg


def _worker_env(cfg: Mapping[str, Any], policy: str, allocator_key: str = "allocator_env") -> dict[str, str]:
    """Environment of a worker: the user's (:func:`medeff.utils.threads.user_environ`), ``threads`` OpenMP/MKL
    threads, the wait ``policy`` (unless the user set ``OMP_WAIT_POLICY``) and ``cfg[allocator_key]``."""
    env = user_environ()
    threads = str(int(cfg["threads"]))
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    env.update(thread_env(env, policy=policy))
    env.update({str(k): str(v) for k, v in (cfg.get(allocator_key) or {}).items()})
    return env


def wait_policy() -> dict[str, str | None]:
    """The wait policy the next workers get, decided now from the user's settings and the machine's load
    (:func:`medeff.utils.threads.choose_wait_policy`): ``{"policy", "reason", "omp_wait_policy"}``."""
    env = user_environ()
    if env.get("OMP_WAIT_POLICY"):
        return {"policy": None, "reason": "OMP_WAIT_POLICY set by the user", "omp_wait_policy": env["OMP_WAIT_POLICY"]}
    policy, reason = choose_wait_policy(env)
    return {"policy": policy, "reason": reason, "omp_wait_policy": "PASSIVE" if policy == "passive" else None}


def run_worker(job: dict[str, Any], env: Mapping[str, str], timeout_s: float | None = None) -> dict[str, Any]:
    """Run one job in a fresh ``python -m medeff.benchmarks`` worker process and return its JSON result.

    Raises:
        RuntimeError: the worker failed (its stderr tail is in the message) or timed out.
    """
    try:
        proc = subprocess.run([sys.executable, "-m", "medeff.benchmarks"], input=json.dumps(job), env=dict(env),
                              capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"benchmark worker ({job['mode']}) ran past {timeout_s} s") from exc
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker ({job['mode']}) failed with status {proc.returncode}: "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise_times(times: list[float]) -> dict[str, float]:
    """min/median/max of step times in seconds."""
    return {"min_s": min(times), "median_s": statistics.median(times), "max_s": max(times)}


def check_ratio(metric: str, side: dict[str, Any], ref: dict[str, Any], side_name: str | None = None,
                ref_name: str | None = None, times: Mapping[str, list[float]] | None = None) -> float | None:
    """The ratio ``side / ref`` for ``metric`` (``time`` uses the per-round ``times`` of the two named sides).

    Returns:
        The ratio, or None when a value is missing or the reference is zero.
    """
    if metric == "time":
        if times is None or side_name not in times or ref_name not in times:
            return None
        ratios = [a / b for a, b in zip(times[side_name], times[ref_name]) if b > 0]
        return statistics.median(ratios) if ratios else None
    key = _MEMORY_KEYS[metric]
    a, b = side.get(key), ref.get(key)
    if a is None or not b:
        return None
    return a / b


def flops_per_time(flops: Mapping[str, Any] | None, median_s: float,
                   peak_gflops: float | None = None) -> dict[str, Any]:
    """A side's FLOPs (from the worker) with its median step time per train-step GFLOP (``ms_per_gflop``), its
    FLOP rate (``gflops_per_s``) and, given the machine's GEMM rate, the fraction of it (``peak_fraction``)."""
    if not flops:
        return {}
    out = dict(flops)
    gflop = flops.get("train_step_flops", 0) / 1e9
    out["ms_per_gflop"] = median_s * 1000 / gflop if gflop > 0 else None
    out["gflops_per_s"] = gflop / median_s if gflop > 0 and median_s > 0 else None
    out["peak_fraction"] = out["gflops_per_s"] / peak_gflops if out["gflops_per_s"] and peak_gflops else None
    return out


def work_ratios(side: Mapping[str, Any], ref: Mapping[str, Any], time_ratio: float | None) -> dict[str, Any]:
    """``flops_ratio`` (side / ref forward FLOPs: 1.0 is equal work) and ``per_flop_ratio`` (time ratio / FLOPs
    ratio: the time ratio the two sides would have at equal work), None where FLOPs are missing."""
    a, b = side.get("forward_flops"), ref.get("forward_flops")
    flops_ratio = a / b if a and b else None
    per_flop = time_ratio / flops_ratio if time_ratio is not None and flops_ratio else None
    return {"flops_ratio": flops_ratio, "per_flop_ratio": per_flop}


def _run_case(name: str, case: dict[str, Any], cfg: dict[str, Any], env: dict[str, str],
              memory_env: dict[str, str], peak_gflops: float | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"description": case.get("description", ""), "input": case["input"],
                              "sides": {k: {"builder": v["builder"], "kwargs": v.get("kwargs") or {},
                                            **({"channels_last": True} if v.get("channels_last") else {})}
                                        for k, v in case["sides"].items()}}
    for side in case["sides"].values():
        reason = peer_available(side["builder"])
        if reason:
            _log.warning("bench: skipping case %s: %s", name, reason)
            result.update(status="skipped", reason=reason)
            return result
    base = {"threads": int(cfg["threads"]), "seed": int(cfg.get("seed", 0)), "input": case["input"],
            "warmup": int(cfg.get("warmup", 1))}
    timeout = cfg.get("worker_timeout_s")
    t0 = time.perf_counter()
    try:
        timed = run_worker({**base, "mode": "time", "sides": case["sides"],
                                 "pairs": int(case.get("pairs") or cfg["pairs"])}, env, timeout)
        times = timed["times_s"]
        for side_name, side in result["sides"].items():
            side.update(summarise_times(times[side_name]))
            side["times_s"] = times[side_name]
            side.update(flops_per_time(timed.get("flops", {}).get(side_name), side["median_s"], peak_gflops))
        if cfg.get("memory", True):
            for side_name, side in case["sides"].items():
                mem = run_worker({**base, "mode": "memory", "side": side, "steps": int(cfg.get("memory_steps", 2))},
                                 memory_env, timeout)
                result["sides"][side_name].update(mem)
    except RuntimeError as exc:
        _log.error("bench: case %s failed: %s", name, exc)
        result.update(status="error", reason=str(exc))
        return result
    checks = []
    for check in case.get("checks", []):
        if check["metric"] in AT_LEAST:
            ratio = result["sides"][check["side"]].get(check["metric"])
        else:
            ratio = check_ratio(check["metric"], result["sides"][check["side"]], result["sides"][check["ref"]],
                                check["side"], check["ref"], times)
        target = check.get("target")
        if target is None or ratio is None:
            passed = None
        else:
            passed = bool(ratio >= float(target)) if check["metric"] in AT_LEAST else bool(ratio <= float(target))
        entry = {**check, "ratio": ratio, "passed": passed}
        if check["metric"] == "time":  # informational: the least-disturbed step of each side, and the work
            entry["min_ratio"] = min(times[check["side"]]) / min(times[check["ref"]])
            entry.update(work_ratios(result["sides"][check["side"]], result["sides"][check["ref"]], ratio))
        checks.append(entry)
    result.update(status="ok", checks=checks, wall_s=time.perf_counter() - t0)
    return result


def _gemm_peak(cfg: Mapping[str, Any], env: dict[str, str]) -> dict[str, Any] | None:
    """The machine's float32 GEMM rate in a timing worker (``cfg.gemm``: size, repeats; size 0 turns it off)."""
    gemm = dict(cfg.get("gemm") or {})
    if not int(gemm.get("size", 0)):
        return None
    try:
        peak = run_worker({"mode": "gemm", "threads": int(cfg["threads"]), "size": int(gemm["size"]),
                           "repeats": int(gemm.get("repeats", 5))}, env, cfg.get("worker_timeout_s"))
    except RuntimeError as exc:
        _log.error("bench: GEMM peak not measured (peak_fraction checks report no value): %s", exc)
        return None
    _log.info("bench: GEMM peak %.1f GFLOP/s (%dx%d float32, %d threads)", peak["gflops"], peak["size"],
              peak["size"], peak["threads"])
    return peak


def run_bench(cfg: Mapping[str, Any], *, write: bool = True) -> dict[str, Any]:
    """Run the configured cases and (unless ``write`` is False) write the JSON report to ``cfg["output"]``.

    Args:
        cfg: the ``conf/bench.yaml`` mapping (after Hydra overrides).
        write: write the report file.

    Returns:
        ``{"environment": ..., "settings": ..., "cases": {name: result}}``; each case has ``status``
        (``ok``/``skipped``/``error``), per-side times (``min_s``/``median_s``/``max_s`` and every ``times_s``),
        ``peak_delta_bytes``, ``alloc_peak_bytes``, ``saved_bytes``, FLOPs, ``ms_per_gflop``, ``gflops_per_s`` and
        ``peak_fraction`` (of ``environment.gemm_peak``), and ``checks`` with ``ratio``, ``target`` and ``passed``
        (time checks also ``flops_ratio`` and ``per_flop_ratio``; ``peak_fraction`` checks pass at or above target).

    Raises:
        ConfigError: invalid configuration.
    """
    cfg = resolve_config(cfg)
    if write and cfg.get("output"):  # fail before hours of measuring, not after
        check_writable(Path(cfg["output"]), overwrite=bool(cfg.get("overwrite", True)))
    waiting = wait_policy()
    env = _worker_env(cfg, waiting["policy"])
    report: dict[str, Any] = {
        "environment": describe_environment(int(cfg["threads"]), dict(cfg.get("allocator_env") or {}),
                                            dict(cfg.get("memory_allocator_env") or {}),
                                            omp_wait_policy=waiting["omp_wait_policy"], wait_policy=waiting),
        "settings": {k: cfg.get(k) for k in ("preset", "pairs", "warmup", "memory_steps", "threads", "seed")},
        "cases": {},
    }
    peak = _gemm_peak(cfg, env)
    report["environment"]["gemm_peak"] = peak
    for i, name in enumerate(cfg["cases"]):
        if i:  # decided again before every case, with no worker of ours running: the load may have changed
            waiting = wait_policy()
        _log.info("bench: case %s (OpenMP wait policy %s: %s)", name, waiting["policy"] or waiting["omp_wait_policy"],
                  waiting["reason"])
        report["cases"][name] = _run_case(name, cfg["case_defs"][name], cfg, _worker_env(cfg, waiting["policy"]),
                                          _worker_env(cfg, waiting["policy"], "memory_allocator_env"),
                                          (peak or {}).get("gflops"))
        report["cases"][name]["wait_policy"] = waiting
        report["environment"]["load_average_end"] = load_average()
        if write and cfg.get("output"):  # after every case: an interrupted run keeps the finished cases
            overwrite = bool(cfg.get("overwrite", True)) or "output" in report  # later cases replace our own file
            path = write_json_atomic(Path(cfg["output"]), report, overwrite=overwrite)
            report["output"] = str(path)
    if report.get("output"):
        _log.info("bench: wrote %s", report["output"])
    return report
