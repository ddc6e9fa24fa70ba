"""``medeff bench``: time and memory of medeff's train steps against MONAI/timm (thin wrapper over run_bench)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "benchmark medeff train steps (time, memory) against MONAI and timm; writes a JSON report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-name", default="bench", help="config in conf/ (default: bench)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides, e.g. bench_preset=quick pairs=9 'cases=[cls3d_b0]' output=x.json")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.benchmarks import print_report, run_bench
    from medeff.config import compose

    cfg = OmegaConf.to_container(compose(args.config_name, args.overrides), resolve=True)
    report = run_bench(cfg)
    print_report(report)
    if report.get("output"):
        print(f"wrote {report['output']}")
    failed = [n for n, c in report["cases"].items() if c["status"] == "error"]
    return 1 if failed else 0
