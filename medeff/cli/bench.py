"""``medeff bench``: time and memory of medeff's train steps against MONAI/timm (thin wrapper over run_bench)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = ("benchmark medeff train steps (time, memory) against MONAI and timm; `medeff bench data`: training data "
        "pipelines against their models; writes a JSON report")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-name", default="bench", help="config in conf/ (default: bench)")
    parser.add_argument("overrides", nargs="*",
                        help="key=value overrides, e.g. bench_preset=quick pairs=9 'cases=[cls3d_b0]' output=x.json; "
                             "first `data` for the data-pipeline benchmark (conf/bench_data.yaml)")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.benchmarks import print_report, run_bench
    from medeff.config import compose

    if args.overrides[:1] == ["data"]:
        return run_data(args)
    cfg = OmegaConf.to_container(compose(args.config_name, args.overrides), resolve=True)
    report = run_bench(cfg)
    print_report(report)
    if report.get("output"):
        print(f"wrote {report['output']}")
    failed = [n for n, c in report["cases"].items() if c["status"] == "error"]
    return 1 if failed else 0


def run_data(args: argparse.Namespace) -> int:
    """``medeff bench data [overrides]``: conf/bench_data.yaml through run_data_bench."""
    from omegaconf import OmegaConf

    from medeff.benchmarks.data_pipeline import format_data_report, run_data_bench
    from medeff.config import compose

    name = "bench_data" if args.config_name == "bench" else args.config_name
    cfg = OmegaConf.to_container(compose(name, args.overrides[1:]), resolve=True)
    report = run_data_bench(cfg)
    print(format_data_report(report))
    if report.get("output"):
        print(f"wrote {report['output']}")
    return 0
