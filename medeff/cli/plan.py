"""``medeff plan index=INDEX budget=8GB output=plan.json``: choose spacing, patch, batch and model for a budget."""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run"]

HELP = "plan spacing, patch size, batch size and model variant from an index fingerprint (index=... budget=8GB)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="index=INDEX.json budget=8GB output=plan.json ...")
    parser.add_argument("--config-name", default="plan", help="entry config under conf/ (default: plan)")


def run(args: argparse.Namespace) -> int:
    from medeff.config import compose
    from medeff.engine.plan import plan

    result = plan(compose(args.config_name, args.overrides))
    print(f"model {result['model']}, spacing {result['target_spacing']}, patch {result['patch_size']}, "
          f"batch {result['batch_size']} (~{result['estimated_bytes'] / 2 ** 30:.2f} GiB) -> "
          f"{result.get('output', '')}".rstrip(" ->"))
    return 0
