"""``medeff demo``: the whole workflow on built-in phantom data (see medeff.demo.run)."""

from __future__ import annotations

import argparse

HELP = "Run the end-to-end demo on phantom data: index, train, predict, evaluate, report."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("overrides", nargs="*", help="conf/demo.yaml overrides, e.g. classifier.epochs=2")


def run(args: argparse.Namespace) -> int:
    from medeff.demo.run import run_demo

    reports = run_demo(args.out, args.overrides)
    print("\nmedeff demo finished. Open the reports:")
    for name, path in reports.items():
        print(f"  {name.replace('_', ' ')}: {path}")
    return 0
