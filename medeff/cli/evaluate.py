"""``medeff evaluate``: compute classification or segmentation metrics with CIs from a config (thin wrapper)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["HELP", "add_arguments", "run", "evaluate_from_config"]

HELP = "evaluate predictions against references (AUC/DeLong, operating points, Dice/HD95 ...) -> results.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-name", default="evaluate", help="config in conf/ (default: evaluate)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. "
                        "classification.predictions=preds.csv classification.columns.scores=prob output_dir=out "
                        "(out_dir= is a deprecated alias)")


_PATH_KEYS = ("predictions", "index", "prediction_dir", "reference_dir", "output_dir", "out_dir", "references")


def _recorded_config(cfg: dict) -> dict:
    """The config as recorded in the provenance: the pseudonym salt is never written out, and input/output paths
    keep only their last component (folder names may carry patient names)."""
    import copy
    from pathlib import PurePath

    def scrub(node):
        if isinstance(node, dict):
            return {k: (PurePath(str(v)).name if k in _PATH_KEYS and v else scrub(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    rec = scrub(copy.deepcopy(cfg))
    if isinstance(rec.get("privacy"), dict):
        rec["privacy"]["pseudonym_salt"] = "<set>" if rec["privacy"].get("pseudonym_salt") else None
    if isinstance(rec.get("paths"), dict):
        rec["paths"] = {k: PurePath(str(v)).name for k, v in rec["paths"].items()}
    return rec


def evaluate_from_config(cfg: dict) -> dict:
    """Run the evaluation a resolved ``evaluate`` config describes; returns the results dict."""
    from medeff.config import check_known_keys, check_values, rename_deprecated_keys
    from medeff.evaluation import evaluate_classification, evaluate_segmentation
    from medeff.utils.options import look_up

    cfg = rename_deprecated_keys("evaluate", cfg)  # out_dir -> output_dir
    check_known_keys("evaluate", cfg)  # a misspelt key is an error, not a TypeError or silently ignored
    check_values("evaluate", cfg)  # threshold and target sensitivities: finite, in [0, 1]
    task = look_up(cfg["kind"], ("classification", "segmentation"), what="evaluation kind", key="kind")
    boot, priv = cfg["bootstrap"], cfg["privacy"]
    common = {"n_resamples": int(boot["n_resamples"]), "confidence": float(boot["confidence"]),
              "bootstrap_method": boot["method"], "seed": int(boot["seed"]),
              "hash_group_ids": priv["hash_group_ids"], "hash_case_ids": priv["hash_case_ids"],
              "pseudonym_salt": priv.get("pseudonym_salt"), "config": _recorded_config(cfg)}
    if cfg.get("title"):
        common["title"] = cfg["title"]
    if task == "classification":
        c = dict(cfg["classification"])
        if not c.get("predictions"):
            from medeff.errors import ConfigError

            raise ConfigError("No predictions file given (config key 'classification.predictions').",
                              hint="add classification.predictions=<CSV of scores and reference labels>.")
        return evaluate_classification(c.pop("predictions"), **c, **common)
    s = dict(cfg["segmentation"])
    return evaluate_segmentation(s.pop("index"), **s, **common)


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.config import compose, rename_deprecated_keys
    from medeff.evaluation import render_report, save_results
    from medeff.evaluation.report import report_files
    from medeff.utils.atomic import check_writable
    from medeff.utils.logging import get_logger
    from medeff.utils.options import look_up

    log = get_logger(__name__)
    cfg = rename_deprecated_keys("evaluate", OmegaConf.to_container(compose(args.config_name, args.overrides),
                                                                    resolve=True))  # a config file with out_dir
    look_up(cfg["kind"], ("classification", "segmentation"), what="evaluation kind", key="kind")  # config first
    out = Path(cfg["output_dir"])
    overwrite = bool(cfg.get("overwrite", False))
    formats = cfg.get("formats") or ("html", "pdf", "json", "csv")
    names = ["results.json"] + (report_files(formats) if cfg.get("render", True) else [])
    for name in names:  # refuse before the (possibly long) evaluation, and before writing anything
        check_writable(out / name, overwrite=overwrite)
    results = evaluate_from_config(cfg)
    path = save_results(results, out / "results.json", overwrite=overwrite)
    log.info("wrote %s", path)
    if cfg.get("render", True):
        for name, p in render_report(results, out, formats, overwrite=overwrite).items():
            log.info("wrote %s", p)
    return 0
