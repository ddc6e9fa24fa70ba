"""``medeff protocols OUT_DIR [key=value ...]``: split protocols and models side by side (thin wrapper)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "evaluate test predictions of several split protocols and models side by side -> results.json, report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", help="folder for splits.csv, predictions.csv, results.json and report.html")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="overrides of conf/protocols.yaml, e.g. \"splits=['published:work/random']\"")


def run(args: argparse.Namespace) -> int:
    from medeff.evaluation.protocol_report import protocol_report, protocols_config

    res = protocol_report(args.out_dir, protocols_config(args.overrides))
    for p, part in res["protocols"].items():
        for m, mm in part["models"].items():
            acc = mm["metrics"]["accuracy"]
            print(f"{p} {m}: accuracy {acc['value']} ({acc['ci_low']}-{acc['ci_high']}), n={mm['n']}")
    print(f"{args.out_dir}: results.json, report.html")
    return 0
