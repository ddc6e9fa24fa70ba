"""``medeff train [key=value ...]``: compose ``conf/train.yaml`` with overrides and train."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "train a model from a Hydra config (e.g. experiment=nodule_2d data.index=INDEX.json)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=nodule_2d trainer.max_epochs=1")
    parser.add_argument("--config-name", default="train", help="entry config under conf/ (default: train)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.config import compose

    cfg = compose(args.config_name, args.overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from medeff.engine.train import train

    result = train(cfg)
    print(f"best checkpoint: {result['best_checkpoint']}\nlast checkpoint: {result['last_checkpoint']}")
    return 0
