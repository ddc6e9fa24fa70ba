"""``medeff predict ckpt=CKPT input=PATH [key=value ...]``: run a checkpoint on new images."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "predict with a trained checkpoint (ckpt=... input=... output_dir=...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="ckpt=FILE input=FILE_OR_FOLDER output_dir=DIR threshold=0.3 ...")
    parser.add_argument("--config-name", default="predict", help="entry config under conf/ (default: predict)")


def run(args: argparse.Namespace) -> int:
    from medeff.config import compose
    from medeff.engine.predict import predict

    result = predict(compose(args.config_name, args.overrides))
    print(f"{len(result['cases'])} case(s) -> {result['output_dir']}")
    return 0
