"""``medeff split INDEX OUT_DIR [key=value ...]``: grouped or image-level train/val/test split of an index."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "split a classification index into train/val/test (grouped or image-level) and measure near-duplicate leakage"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", help="dataset index JSON written by `medeff index`")
    parser.add_argument("out_dir", help="folder for splits.csv, train.json, test.json and split_leakage.json")
    parser.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                        help="overrides of conf/split.yaml, e.g. protocol=random seed=1")


def run(args: argparse.Namespace) -> int:
    from medeff.data.split_build import build_split, split_config

    summary = build_split(args.index, args.out_dir, split_config(args.overrides))
    leak = summary["leakage"]
    sizes = {s: sum(v.values()) for s, v in summary["counts"].items()}
    print(f"{args.out_dir}: {summary['protocol']} split {sizes}; {leak['n_leaked']} of {leak['n_test']} test "
          f"image(s) have an identical or near-identical training image ({leak['n_identical']} identical)")
    return 0
