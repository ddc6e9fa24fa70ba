"""``medeff train [key=value ...]``: compose ``conf/train.yaml`` with overrides and train.

``plan=PLAN.json`` (from ``medeff plan``) fills patch size, spacing, batch size and model; overrides win.
``-m`` / ``--multirun`` runs every point of comma-separated sweeps (``data.fold=0,1,2 seed=1,2``) one after the
other, each in its own ``run_dir``.
"""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run", "expand_sweeps"]

HELP = "train a model from a Hydra config (e.g. experiment=nodule_2d data.index=INDEX.json [plan=PLAN.json] [-m])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=nodule_2d trainer.max_epochs=1")
    parser.add_argument("--config-name", default="train", help="entry config under conf/ (default: train)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="train every point of comma-separated sweeps (data.fold=0,1,2 seed=1,2)")


def expand_sweeps(overrides: list[str]) -> list[tuple[list[str], str]]:
    """Cartesian product of sweep overrides (Hydra's basic-sweeper grammar).

    Returns:
        ``[(overrides of one point, tag)]``; the tag names the swept values other than ``data.fold`` (which
        ``run_dir`` already holds), empty when only folds are swept.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    swept = {o.key_or_group for o in parsed if o.is_sweep_override()} - {"data.fold"}
    points = [p for batch in BasicSweeper.split_arguments(parsed, None) for p in batch]
    out = []
    for point in points:
        tag = "_".join(o.replace("/", "-") for o in point if o.split("=", 1)[0].lstrip("+~") in swept)
        out.append((list(point), tag))
    return out


def _apply_plan(overrides: list[str]) -> list[str]:
    plans = [o for o in overrides if o.startswith("plan=")]
    if not plans:
        return overrides
    from medeff.engine.plan import plan_overrides

    return plan_overrides(plans[-1].split("=", 1)[1]) + [o for o in overrides if not o.startswith("plan=")]


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.config import compose

    overrides = _apply_plan(list(args.overrides))
    points = expand_sweeps(overrides) if args.multirun else [(overrides, "")]
    from medeff.engine.train import resolve_config, train

    for point, tag in points:
        cfg = compose(args.config_name, point)
        if tag:  # sweeps over other keys than the fold: one sub-folder per point
            OmegaConf.update(cfg, "run_dir", f"{resolve_config(cfg)['run_dir']}/{tag}", merge=False)
        if args.print_config:
            print(OmegaConf.to_yaml(cfg))
            continue
        result = train(cfg)
        print(f"best checkpoint: {result['best_checkpoint']}\nlast checkpoint: {result['last_checkpoint']}")
    return 0
