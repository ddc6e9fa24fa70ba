"""The Python part of ``benchmarks/gpu_check.sh``: train steps of medeff and its peers on one GPU.

For each case (3D B0 vs MONAI EfficientNetBN, 3D U-Net vs MONAI FlexibleUNet, 2D B0 vs timm) and each variant
(float32; AMP bfloat16; bfloat16 under ``torch.compile``; AMP float16 with a gradient scaler; bfloat16 in
channels-last layout), every side runs warm-up steps, then timed train steps (forward, Dice-free cross-entropy,
backward, SGD update, ``torch.cuda.synchronize`` around each), and reports the median step time, achieved TFLOP/s
(3x the forward FLOPs of :func:`medeff.benchmarks.flops.side_flops`) and the peak memory
(``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``). A side that fails (a peer that does not
import, a compile error) is recorded with its error and the run goes on. A time budget stops the run before the
script's limit, recording what was skipped, and the report is written after every side, so a run killed by the
limit keeps what it finished (marked incomplete). The A/B sides (``medeff_recompute``, ``medeff_polyphase``: one
medeff option forced on) run in float32 and bfloat16 only.

Without CUDA the script says so and runs the CPU fallback: tiny sizes, the CUDA-only variants (float16, compile)
skipped with a reason, so the code paths are checked for syntax and CPU fallbacks (``tests/benchmarks``).

Usage::

    python benchmarks/gpu_check.py --output-dir OUT [--tiny] [--budget-s 330] [--steps 10]

Writes ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medeff.benchmarks.environment import load_average
from medeff.benchmarks.flops import side_flops
from medeff.benchmarks.peers import PeerUnavailable, build_side, peer_available
from medeff.benchmarks.worker import make_batch
from medeff.utils.atomic import write_json_atomic, write_text_atomic

#: the 3D cases first: when the time budget runs out, the 2D case (the cheapest to re-run anywhere) is the one skipped
CASES: dict[str, dict[str, Any]] = {
    "cls3d_b0": {
        "input": {"batch": 4, "channels": 1, "size": [96, 96, 96], "classes": 2, "task": "classification"},
        "tiny": {"batch": 2, "size": [32, 32, 32]},
        "sides": {"medeff": {"builder": "medeff", "kwargs": {"name": "efficientnet_b0"}},
                  # the expansion recompute forced on: "auto" keeps it to CPU inputs (GPU steps are launch-bound)
                  "medeff_recompute": {"builder": "medeff", "kwargs": {"name": "efficientnet_b0",
                                                                       "recompute": True}},
                  "monai": {"builder": "monai_efficientnet_bn", "kwargs": {"model_name": "efficientnet-b0"}}},
    },
    "seg3d_b0_unet": {
        "input": {"batch": 2, "channels": 1, "size": [128, 128, 128], "classes": 2, "task": "segmentation"},
        "tiny": {"batch": 2, "size": [32, 32, 32]},
        "sides": {"medeff": {"builder": "medeff", "kwargs": {"name": "efficientnet_b0", "task": "segmentation"}},
                  # the polyphase decoder forced on: "auto" keeps GPUs on the plain path until this has measured it
                  "medeff_polyphase": {"builder": "medeff", "kwargs": {"name": "efficientnet_b0",
                                                                       "task": "segmentation",
                                                                       "decoder_polyphase": True}},
                  "monai": {"builder": "monai_flexible_unet", "kwargs": {"backbone": "efficientnet-b0"}}},
    },
    "cls2d_b0": {
        "input": {"batch": 32, "channels": 3, "size": [224, 224], "classes": 2, "task": "classification"},
        "tiny": {"batch": 2, "size": [64, 64]},
        "sides": {"medeff": {"builder": "medeff", "kwargs": {"name": "efficientnet_b0"}},
                  "timm": {"builder": "timm", "kwargs": {"name": "efficientnet_b0"}}},
    },
}
#: variant name -> (autocast dtype or None, channels-last layout, torch.compile)
#: in the order they run: compiled steps before fp16 and channels-last (on an H200 both library's 3D steps ran 5-6x
#: slower in channels-last, the least informative variant)
VARIANTS: dict[str, tuple[torch.dtype | None, bool, bool]] = {
    "fp32": (None, False, False),
    "bf16": (torch.bfloat16, False, False),
    "bf16_compile": (torch.bfloat16, False, True),
    "fp16": (torch.float16, False, False),
    "bf16_channels_last": (torch.bfloat16, True, False),
}
#: variants that also run the A/B sides (``medeff_*``: one medeff option forced); the others run medeff and the peer
AB_VARIANTS = ("fp32", "bf16")
CUDA_ONLY = {"fp16": "float16 autocast is a GPU setting (slow or unsupported on CPU)",
             "bf16_compile": "torch.compile is only checked on the GPU here (minutes of compilation on CPU)"}


def _logits(out: Any) -> torch.Tensor:
    while isinstance(out, (list, tuple)):
        out = out[0]
    return out


def _architecture_side(side: dict[str, Any]) -> dict[str, Any]:
    """The side as counted for FLOPs: the architecture's work (a forced polyphase decoder does the same function
    with fewer multiply-adds, a recompute does some twice; TFLOP/s are the job's work per second)."""
    kwargs = {k: v for k, v in side["kwargs"].items() if k not in ("decoder_polyphase", "recompute")}
    return {**side, "kwargs": kwargs}


def run_side(side: dict[str, Any], spec: dict[str, Any], variant: str, device: torch.device, *, warmup: int,
             steps: int) -> dict[str, Any]:
    """Time ``steps`` train steps of one side in one variant; returns times, peak memory or the error."""
    dtype, channels_last, compiled = VARIANTS[variant]
    torch.manual_seed(0)
    x, y = make_batch(spec)
    x, y = x.to(device), y.to(device)
    model = build_side(side, int(spec["channels"]), int(spec["classes"]), len(spec["size"])).to(device)
    if channels_last:
        layout = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        model, x = model.to(memory_format=layout), x.contiguous(memory_format=layout)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    cuda = device.type == "cuda"

    def step() -> float:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(_logits(step_model(x)).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    t_first = time.perf_counter()
    for _ in range(warmup):
        step()
    first_s = time.perf_counter() - t_first
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times = [step() for _ in range(steps)]
    return {"status": "ok", "median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "warmup_s": first_s,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None}


def run_check(*, tiny: bool, device: torch.device, steps: int, warmup: int, budget_s: float,
              variants: list[str] | None = None, cases: list[str] | None = None,
              on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every case x variant x side within ``budget_s``; returns the report (rows, ratios, skipped).

    ``on_row`` gets the report so far after every side (the script writes it to disk, so a run killed by its time
    limit keeps every finished side).
    """
    t0 = time.perf_counter()
    cuda = device.type == "cuda"
    env = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
           "cuda": torch.version.cuda, "load_average_start": load_average(), "tiny": tiny}
    if cuda:
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", gpu_memory_bytes=props.total_memory)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    for v_index, variant in enumerate(variants or list(VARIANTS)):
        if not cuda and variant in CUDA_ONLY:
            skipped.append(f"{variant}: skipped without CUDA ({CUDA_ONLY[variant]})")
            continue
        for case_name in cases or list(CASES):
            case = CASES[case_name]
            spec = {**case["input"], **(case["tiny"] if tiny else {})}
            # the side order alternates between variants: the first side to run a new dtype or layout pays the
            # first-touch costs (CUDA's lazy kernel loading, cuDNN's first plans) in its warm-up steps
            sides = [(n, sd) for n, sd in case["sides"].items() if variant in AB_VARIANTS or not n.startswith("medeff_")]
            for side_name, side in (reversed(sides) if v_index % 2 else sides):
                row = {"case": case_name, "variant": variant, "side": side_name, "input": spec}
                if time.perf_counter() - t0 > budget_s:
                    skipped.append(f"{case_name}/{variant}/{side_name}: skipped, time budget of {budget_s:.0f} s spent")
                    continue
                reason = peer_available(side["builder"])
                if reason:
                    rows.append({**row, "status": "skipped", "reason": reason})
                    continue
                try:
                    row.update(side_flops(_architecture_side(side), spec))
                    row.update(run_side(side, spec, variant, device, warmup=warmup, steps=steps))
                    row["tflops_per_s"] = row["train_step_flops"] / row["median_s"] / 1e12
                except (PeerUnavailable, RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
                    row.update(status="error", reason=f"{type(exc).__name__}: {str(exc)[:400]}")
                if cuda:
                    torch.cuda.empty_cache()
                rows.append(row)
                print(f"gpu_check: {case_name} {variant} {side_name}: {row['status']}"
                      + (f" {row['median_s'] * 1000:.1f} ms" if row["status"] == "ok" else f" ({row.get('reason')})"),
                      file=sys.stderr, flush=True)
                if on_row is not None:
                    on_row({"environment": env, "rows": rows, "ratios": ratios(rows), "skipped": skipped,
                            "wall_s": time.perf_counter() - t0, "complete": False})
    env["load_average_end"] = load_average()
    return {"environment": env, "rows": rows, "ratios": ratios(rows), "skipped": skipped,
            "wall_s": time.perf_counter() - t0, "complete": True}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """medeff / peer median step time per case and variant (both sides ok), for every medeff side (``medeff``,
    ``medeff_polyphase``) against every peer side, and each other medeff side against ``medeff`` itself."""
    ok = {(r["case"], r["variant"], r["side"]): r for r in rows if r.get("status") == "ok"}
    out = []
    for (case, variant, side), row in ok.items():
        if not side.startswith("medeff"):
            continue
        for (c2, v2, peer), ref in ok.items():
            if (c2, v2) != (case, variant) or peer == side:
                continue
            if not peer.startswith("medeff") or (peer == "medeff" and side != "medeff"):
                out.append({"case": case, "variant": variant, "side": side, "peer": peer,
                            "time_ratio": row["median_s"] / ref["median_s"],
                            "flops_ratio": row["forward_flops"] / ref["forward_flops"]})
    return out


def markdown(report: dict[str, Any]) -> str:
    """The rows and ratios of a report as Markdown tables."""
    env = report["environment"]
    lines = [f"torch {env['torch']}, device {env['device']} {env.get('gpu', '')}, tiny={env['tiny']}, "
             f"load {env['load_average_start']} -> {env.get('load_average_end', '(running)')}"
             + ("" if report.get("complete", True) else "; INCOMPLETE: the run stopped before its end"), "",
             "| case | variant | side | status | median step (ms) | TFLOP/s | peak memory (MiB) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if r["status"] == "ok":
            mem = "-" if r["peak_memory_bytes"] is None else f"{r['peak_memory_bytes'] / 2**20:.0f}"
            lines.append(f"| {r['case']} | {r['variant']} | {r['side']} | ok | {r['median_s'] * 1000:.1f} | "
                         f"{r['tflops_per_s']:.3f} | {mem} |")
        else:
            lines.append(f"| {r['case']} | {r['variant']} | {r['side']} | {r['status']}: {r.get('reason', '')[:80]} "
                         "| - | - | - |")
    lines += ["", "| case | variant | side / peer | time ratio | FLOPs ratio |", "|---|---|---|---|---|"]
    for q in report["ratios"]:
        lines.append(f"| {q['case']} | {q['variant']} | {q['side']} / {q['peer']} | {q['time_ratio']:.3f} | "
                     f"{q['flops_ratio']:.3f} |")
    if report["skipped"]:
        lines += ["", "Skipped: " + "; ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="train steps of medeff and its peers on one GPU (CPU fallback)")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--tiny", action="store_true", help="tiny inputs, 1 warm-up and 2 timed steps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per side (default 10, tiny 2)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps per side (default 3, tiny 1)")
    parser.add_argument("--budget-s", type=float, default=330.0, help="stop starting new sides after this long")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=None)
    parser.add_argument("--pytest-status", default=None, help="exit status of the gpu-marked tests (from the .sh)")
    args = parser.parse_args(argv)
    if torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        device = torch.device("cpu")
        print("gpu_check: no CUDA device: CPU fallback check (tiny sizes; float16 and torch.compile skipped). "
              "No GPU figures come from this run.", file=sys.stderr)
    tiny = args.tiny or device.type == "cpu"
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write(report: dict[str, Any]) -> str:
        report["gpu_tests_exit_status"] = args.pytest_status
        write_json_atomic(out / "gpu_check.json", report, overwrite=True)
        table = markdown(report)
        write_text_atomic(out / "gpu_check.md", table, overwrite=True)
        return table

    report = run_check(tiny=tiny, device=device, steps=args.steps or (2 if tiny else 10),
                       warmup=args.warmup or (1 if tiny else 3), budget_s=args.budget_s, variants=args.variants,
                       cases=args.cases, on_row=write)
    print(write(report))
    failed = [r for r in report["rows"] if r["status"] == "error"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
