"""``medeff report``: render results.json (from ``medeff evaluate``) as HTML, PDF, JSON and CSV (thin wrapper)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "render an evaluation results.json as report.html, report.pdf, summary.json and CSV tables"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-name", default="report", help="config in conf/ (default: report)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. results=out/results.json out_dir=out")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.config import compose
    from medeff.evaluation import load_results, render_report
    from medeff.utils.logging import get_logger

    log = get_logger(__name__)
    cfg = OmegaConf.to_container(compose(args.config_name, args.overrides), resolve=True)
    results = load_results(cfg["results"])
    for name, p in render_report(results, cfg["out_dir"], cfg.get("formats") or ("html", "pdf", "json", "csv"),
                                 overwrite=bool(cfg.get("overwrite", False))).items():
        log.info("wrote %s", p)
    return 0
