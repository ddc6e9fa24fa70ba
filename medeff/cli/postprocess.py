"""``medeff postprocess ckpt=RUN index=VAL.csv``: choose per label post-processing on validation predictions and
write ``postprocessing.json`` beside the model (thin wrapper over
:func:`medeff.engine.predict_postprocess.choose_from_config`)."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "choose post-processing per label (keep largest component, fill holes) on validation predictions"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*",
                        help="ckpt=RUN_OR_CKPT index=VAL.csv (or prediction_dir=... reference_dir=...) min_gain=0")
    parser.add_argument("--config-name", default="postprocess", help="entry config under conf/ (default: postprocess)")


def run(args: argparse.Namespace) -> int:
    from medeff.config import compose
    from medeff.engine.predict_postprocess import choose_from_config
    from medeff.evaluation.postprocess import plan_summary

    plan = choose_from_config(compose(args.config_name, args.overrides))
    for line in plan_summary(plan):
        print(line)
    print(f"-> {plan['path']}")
    return 0
