"""Benchmark worker: runs one timing or memory job in a fresh process and prints its result as JSON.

``python -m medeff.benchmarks`` reads a job (JSON) on stdin and writes one JSON line on stdout. The runner
starts every job in its own process so that each one has the allocator environment and thread count of the
configuration and so that a memory measurement sees only its own model.

Jobs:

* ``{"mode": "time", "sides": {name: side}, ...}``: builds every side, runs ``warmup`` train steps on each, then
  ``pairs`` rounds in which each side runs one step; the order of the sides alternates between rounds (A B, B A,
  ...). Returns the per-round step times of every side and its FLOPs (:func:`medeff.benchmarks.flops.side_flops`).
* ``{"mode": "memory", "side": side, ...}``: builds one side, records the peak RSS (``ru_maxrss``) just before
  the first step, runs ``warmup + steps`` train steps and returns the growth of the peak RSS; then counts the
  bytes autograd saves for backward in one forward pass (``torch.autograd.graph.saved_tensors_hooks``, unique
  storages), which does not depend on the allocator or on other processes.
* ``{"mode": "gemm", "size": N, "repeats": R, ...}``: the FLOP rate of a large float32 matrix product on the
  job's threads (:func:`medeff.benchmarks.gemm.gemm_peak`), the yardstick of every side's ``peak_fraction``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medeff.benchmarks.flops import side_flops
from medeff.benchmarks.gemm import gemm_peak
from medeff.benchmarks.peers import build_side

__all__ = ["allocated_peak_bytes", "make_batch", "run_job", "saved_bytes", "train_step"]


def make_batch(spec: dict[str, Any], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random input and target for a case: ``spec`` has batch, channels, size (per axis), classes and task."""
    gen = torch.Generator().manual_seed(seed)
    size = [int(s) for s in spec["size"]]
    x = torch.randn(int(spec["batch"]), int(spec["channels"]), *size, generator=gen)
    if spec["task"] == "segmentation":
        y = torch.randint(0, int(spec["classes"]), (int(spec["batch"]), *size), generator=gen)
    else:
        y = torch.randint(0, int(spec["classes"]), (int(spec["batch"]),), generator=gen)
    return x, y


def _logits(out: Any) -> torch.Tensor:
    """The main output of a model that may return extras (deep supervision list, ``(seg, cls)`` tuple)."""
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One training step: forward, cross-entropy, backward, SGD update."""
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(_logits(model(x)), y).backward()
    optimizer.step()


def saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors autograd saves for backward in one training-mode forward (unique storages)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = _logits(model(x))
    del out
    return int(sum(storages.values()))


def allocated_peak_bytes(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                         y: torch.Tensor) -> int:
    """Peak growth of the bytes held by torch's CPU allocator during one :func:`train_step`.

    Every allocation and free of the step is read from the profiler's memory events (``profile_memory=True``);
    the result is the highest running total above the bytes held when the step began (gradients freed by
    ``zero_grad`` count as negative first). It measures tensors, not the pages malloc keeps for reuse.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        train_step(model, optimizer, x, y)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path, encoding="utf-8") as f:
            events = json.load(f)["traceEvents"]
    steps = sorted((e["ts"], i, int(e["args"]["Bytes"])) for i, e in enumerate(events)
                   if e.get("name") == "[memory]" and "Bytes" in e.get("args", {}))
    if not steps:
        raise RuntimeError("the profiler recorded no memory events; cannot measure the allocator peak "
                           "(this torch build may lack profile_memory support on CPU)")
    total = peak = 0
    for _, _, nbytes in steps:
        total += nbytes
        peak = max(peak, total)
    return peak


def _setup(job: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    torch.set_num_threads(int(job["threads"]))
    torch.manual_seed(int(job.get("seed", 0)))
    return make_batch(job["input"], int(job.get("seed", 0)))


def _build(side: dict[str, Any], spec: dict[str, Any]) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = build_side(side, int(spec["channels"]), int(spec["classes"]), len(spec["size"]))
    return model, torch.optim.SGD(model.parameters(), lr=1e-4)


def _time_job(job: dict[str, Any]) -> dict[str, Any]:
    x, y = _setup(job)
    names = list(job["sides"])
    built = {name: _build(job["sides"][name], job["input"]) for name in names}
    flops = {name: side_flops(job["sides"][name], job["input"], built[name][0]) for name in names}
    for _ in range(int(job["warmup"])):
        for name in names:
            train_step(*built[name], x, y)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(int(job["pairs"])):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            train_step(*built[name], x, y)
            times[name].append(time.perf_counter() - t0)
    return {"times_s": times, "flops": flops}


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _memory_job(job: dict[str, Any]) -> dict[str, Any]:
    x, y = _setup(job)
    model, opt = _build(job["side"], job["input"])
    before = _max_rss_bytes()
    for _ in range(int(job["warmup"]) + int(job["steps"])):
        train_step(model, opt, x, y)
    peak = _max_rss_bytes()
    allocated = allocated_peak_bytes(model, opt, x, y)
    opt.zero_grad(set_to_none=True)
    return {"rss_before_bytes": before, "rss_peak_bytes": peak, "peak_delta_bytes": peak - before,
            "alloc_peak_bytes": allocated, "saved_bytes": saved_bytes(model, x)}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job dict (see the module docstring) in this process and return its result."""
    if job["mode"] == "time":
        return _time_job(job)
    if job["mode"] == "memory":
        return _memory_job(job)
    if job["mode"] == "gemm":
        return gemm_peak(int(job["threads"]), int(job.get("size", 2048)), int(job.get("repeats", 5)))
    raise ValueError(f"unknown benchmark job mode {job['mode']!r}; expected 'time', 'memory' or 'gemm'.")


def main() -> int:
    """Entry point of ``python -m medeff.benchmarks``: job JSON on stdin, result JSON on the last stdout line."""
    result = run_job(json.loads(sys.stdin.read()))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
