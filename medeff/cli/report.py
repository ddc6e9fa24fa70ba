"""``medeff report``: render results.json (from ``medeff evaluate``) as HTML, PDF, JSON and CSV (thin wrapper)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "render an evaluation results.json as report.html, report.pdf, summary.json and CSV tables"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-name", default="report", help="config in conf/ (default: report)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. results=out/results.json "
                        "output_dir=out (out_dir= is a deprecated alias)")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.config import compose, rename_deprecated_keys
    from medeff.evaluation import load_results, render_report
    from medeff.utils.logging import get_logger

    log = get_logger(__name__)
    cfg = rename_deprecated_keys("report", OmegaConf.to_container(compose(args.config_name, args.overrides),
                                                                  resolve=True))  # a config file with out_dir
    results = load_results(cfg["results"])
    for name, p in render_report(results, cfg["output_dir"], cfg.get("formats") or ("html", "pdf", "json", "csv"),
                                 overwrite=bool(cfg.get("overwrite", False))).items():
        log.info("wrote %s", p)
    return 0
