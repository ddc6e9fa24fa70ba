"""Render a :func:`medeff.benchmarks.run_bench` report as rich tables (checks with FLOPs ratios, and per-side
times, FLOPs and memory)."""

from __future__ import annotations

from typing import Any

from medeff.benchmarks.runner import AT_LEAST

__all__ = ["format_report", "markdown_report", "print_report"]


def _mb(value: Any) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value * 1000:.0f}"


def _ratio(check: dict[str, Any]) -> str:
    return "-" if check.get("min_ratio") is None else f"{check['min_ratio']:.3f}"


def _num(value: Any, fmt: str = ".3f", scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:{fmt}}"


def _work(check: dict[str, Any]) -> tuple[str, str]:
    """FLOPs ratio and time ratio per FLOP of a check (``-`` for non-time checks or without FLOPs)."""
    return _num(check.get("flops_ratio")), _num(check.get("per_flop_ratio"))


def _gflops(side: dict[str, Any]) -> tuple[str, str, str, str]:
    peak = side.get("peak_fraction")
    return (_num(side.get("forward_flops"), ".2f", 1e9), _num(side.get("train_step_flops"), ".2f", 1e9),
            _num(side.get("ms_per_gflop"), ".2f"), "-" if peak is None else f"{100 * peak:.1f}%")


def _target(check: dict[str, Any]) -> str:
    if check.get("target") is None:
        return "-"
    return f"{'>=' if check['metric'] in AT_LEAST else '<='} {check['target']}"


def _side_ref(check: dict[str, Any]) -> str:
    return check["side"] if check["metric"] in AT_LEAST else f"{check['side']} / {check['ref']}"


def _peak_line(env: dict[str, Any]) -> str:
    peak = env.get("gemm_peak")
    if not peak:
        return "GEMM peak not measured"
    return f"GEMM peak {peak['gflops']:.1f} GFLOP/s ({peak['size']}^2 float32, {peak['threads']} threads)"


def _waits(report: dict[str, Any]) -> str:
    """The OpenMP wait policy the cases ran with ("spin", "passive" or the user's OMP_WAIT_POLICY)."""
    per_case = {name: (case.get("wait_policy") or {}) for name, case in report["cases"].items()}
    names = {name: w.get("policy") or w.get("omp_wait_policy") or "-" for name, w in per_case.items()}
    if len(set(names.values())) <= 1:
        return f"OpenMP wait policy {next(iter(names.values()), '-')}"
    return "OpenMP wait policy " + ", ".join(f"{name} {value}" for name, value in names.items())


def format_report(report: dict[str, Any]) -> list[Any]:
    """Build the rich tables of a report (a list of ``rich.table.Table``)."""
    from rich.table import Table

    env = report["environment"]
    checks = Table(title=f"medeff bench: checks (threads {env['threads']}, load at start {env['load_average_start']}, "
                         f"{_peak_line(env)}; {_waits(report)})")
    for col in ("case", "metric", "side / ref", "ratio", "target", "result", "ratio of min times", "FLOPs ratio",
                "ratio per FLOP"):
        checks.add_column(col)
    sides = Table(title="per side: train step time (ms), work (GFLOPs; train step = 3x forward) and memory (MiB)")
    for col in ("case", "side", "min", "median", "max", "rounds", "fwd GFLOPs", "step GFLOPs", "ms / GFLOP",
                "of GEMM peak", "peak RSS growth", "peak allocated", "saved for backward"):
        sides.add_column(col)
    for name, case in report["cases"].items():
        if case["status"] != "ok":
            checks.add_row(name, "-", "-", "-", "-", f"{case['status']}: {case.get('reason', '')[:80]}", "-", "-", "-")
            continue
        for c in case["checks"]:
            verdict = "-" if c["passed"] is None else ("pass" if c["passed"] else "FAIL")
            ratio = "-" if c["ratio"] is None else f"{c['ratio']:.3f}"
            checks.add_row(name, c["metric"], _side_ref(c), ratio, _target(c), verdict, _ratio(c),
                           *_work(c))
        for side_name, s in case["sides"].items():
            sides.add_row(name, side_name, _ms(s.get("min_s")), _ms(s.get("median_s")), _ms(s.get("max_s")),
                          str(len(s.get("times_s", []))), *_gflops(s), _mb(s.get("peak_delta_bytes")),
                          _mb(s.get("alloc_peak_bytes")), _mb(s.get("saved_bytes")))
    return [checks, sides]


def print_report(report: dict[str, Any]) -> None:
    """Print the tables of a report to stdout."""
    from rich.console import Console

    console = Console(width=180)
    for table in format_report(report):
        console.print(table)


def markdown_report(report: dict[str, Any]) -> str:
    """The checks and per-side tables of a report as Markdown (for docs/benchmarks.md)."""
    env = report["environment"]
    lines = [f"torch {env['torch']}, MONAI {env['monai']}, {env['threads']} threads, {env['cpu_model']} "
             f"({env['cpu_count']} CPUs), load average at start {env['load_average_start']}, at end "
             f"{env.get('load_average_end')}; {_peak_line(env)}; {_waits(report)}", "",
             "| case | metric | side / ref | ratio | target | result | ratio of min times | FLOPs ratio "
             "| ratio per FLOP |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, case in report["cases"].items():
        if case["status"] != "ok":
            lines.append(f"| {name} | - | - | - | - | {case['status']}: {case.get('reason', '')[:100]} | - | - | - |")
            continue
        for c in case["checks"]:
            verdict = "-" if c["passed"] is None else ("pass" if c["passed"] else "**fail**")
            ratio = "-" if c["ratio"] is None else f"{c['ratio']:.3f}"
            flops_ratio, per_flop = _work(c)
            lines.append(f"| {name} | {c['metric']} | {_side_ref(c)} | {ratio} | {_target(c)} | {verdict} "
                         f"| {_ratio(c)} | {flops_ratio} | {per_flop} |")
    lines += ["", "| case | side | step min / median / max (ms) | rounds | fwd GFLOPs | step GFLOPs | ms / GFLOP "
              "| of GEMM peak | peak RSS growth (MiB) | peak allocated (MiB) | saved for backward (MiB) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, case in report["cases"].items():
        for side_name, s in case.get("sides", {}).items():
            if "median_s" not in s:
                continue
            lines.append(f"| {name} | {side_name} | {_ms(s['min_s'])} / {_ms(s['median_s'])} / {_ms(s['max_s'])} | "
                         f"{len(s['times_s'])} | {' | '.join(_gflops(s))} | {_mb(s.get('peak_delta_bytes'))} "
                         f"| {_mb(s.get('alloc_peak_bytes'))} "
                         f"| {_mb(s.get('saved_bytes'))} |")
    return "\n".join(lines) + "\n"
