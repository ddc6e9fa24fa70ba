"""``medeff lidc``: glue steps of the LIDC nodule triage pipeline (thin wrapper over :mod:`medeff.pipelines.lidc`).

Actions (``medeff lidc ACTION --help``): ``config`` (print the pipeline config as shell variables), ``split``
(exam-level train/test folders), ``folds`` (validation-fold archives of an index), ``assemble`` (baselines,
out-of-fold table, final predictions) and ``cv-section`` (add the cross-validation table to a results.json).
"""

from __future__ import annotations

import argparse
import shlex

__all__ = ["HELP", "add_arguments", "run", "load_pipeline", "shell_variables"]

HELP = "LIDC nodule triage glue: config, exam-level split, fold archives, assemble predictions, CV report section"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("config", help="print conf/pipeline/<name>.yaml as shell variable assignments")
    p.add_argument("--pipeline", default="lidc_nodule_triage", help="config under conf/pipeline/")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the pipeline config")
    p = sub.add_parser("split", help="split a data folder by exam into TRAIN_OUT and TEST_OUT")
    p.add_argument("source")
    p.add_argument("train_out")
    p.add_argument("test_out")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--max-exams", type=int, default=None, help="keep only this many exams (random) before splitting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--drop-test-labels", action="store_true", help="write the test folder without labels")
    p = sub.add_parser("folds", help="write the validation part of each fold of INDEX as OUT/fold<k>/")
    p.add_argument("index")
    p.add_argument("data_dir")
    p.add_argument("out_dir")
    p = sub.add_parser("assemble", help="baselines + out-of-fold table + OUT_DIR/predictions.csv")
    p.add_argument("train_dir")
    p.add_argument("index")
    p.add_argument("oof_glob", help="glob of the per-fold predictions.csv, e.g. 'WORK/oof/fold*/predictions.csv'")
    p.add_argument("test_dir")
    p.add_argument("test_predictions")
    p.add_argument("out_dir")
    p.add_argument("work_dir")
    p.add_argument("--pipeline", default="lidc_nodule_triage")
    p.add_argument("overrides", nargs="*")
    p = sub.add_parser("cv-section", help="add the cross-validation comparison to a medeff evaluate results.json")
    p.add_argument("results")
    p.add_argument("cv_predictions")
    p.add_argument("--pipeline", default="lidc_nodule_triage")
    p.add_argument("overrides", nargs="*")


def load_pipeline(name: str, overrides=()) -> dict:
    """The resolved pipeline config ``conf/pipeline/<name>.yaml`` with overrides."""
    from omegaconf import OmegaConf

    from medeff.config import compose

    cfg = OmegaConf.to_container(compose(f"pipeline/{name}", list(overrides)), resolve=True)
    return cfg.get("pipeline", cfg)  # a config composed from a group folder is nested under the group name


def shell_variables(cfg: dict) -> str:
    """Shell assignments (``NAME=value`` lines, quoted) of the values the pipeline script needs."""
    rep = cfg["report"]
    values = {
        "EXPERIMENT": cfg["experiment"], "FOLDS": int(cfg["folds"]), "FOLD_SEED": int(cfg["fold_seed"]),
        "TRAIN_OVERRIDES": " ".join(shlex.quote(str(o)) for o in cfg.get("train_overrides") or []),
        "TTA": cfg["tta"], "PREDICT_BATCH": int(cfg["predict_batch_size"]),
        "N_RESAMPLES": int(rep["n_resamples"]), "CONFIDENCE": float(rep["confidence"]), "BOOT_SEED": int(rep["seed"]),
        "TARGET_SENS": "[" + ",".join(str(float(t)) for t in rep["target_sensitivities"]) + "]",
        "TITLE": rep["title"], "FOLD_LIST": ",".join(str(k) for k in range(int(cfg["folds"]))),
        "MODEL_NAME": ("EfficientNet + features"
                       if str((cfg.get("combine") or {}).get("method", "none")) != "none" else "EfficientNet"),
    }
    return "\n".join(f"{k}={shlex.quote(str(v))}" for k, v in values.items())


def run(args: argparse.Namespace) -> int:
    from medeff.pipelines import lidc
    from medeff.utils.logging import get_logger

    log = get_logger(__name__)
    if args.action == "config":
        print(shell_variables(load_pipeline(args.pipeline, args.overrides)))
    elif args.action == "split":
        counts = lidc.split_by_exam(args.source, args.train_out, args.test_out, test_fraction=args.test_fraction,
                                    max_exams=args.max_exams, seed=args.seed, drop_test_labels=args.drop_test_labels)
        log.info("split by exam: %s", counts)
    elif args.action == "folds":
        lidc.write_fold_archives(args.index, args.data_dir, args.out_dir)
    elif args.action == "assemble":
        cfg = load_pipeline(args.pipeline, args.overrides)
        info = lidc.assemble(args.train_dir, args.index, args.oof_glob, args.test_dir, args.test_predictions,
                             args.out_dir, args.work_dir, threshold=cfg["threshold"], C=float(cfg["radiomics_C"]),
                             combine=cfg.get("combine"))
        log.info("assembled: %s", info)
    else:
        cfg = load_pipeline(args.pipeline, args.overrides)["report"]
        summary = lidc.add_cv_section(args.results, args.cv_predictions, confidence=float(cfg["confidence"]),
                                      n_resamples=int(cfg["n_resamples"]), seed=int(cfg["seed"]),
                                      title=cfg.get("title"))
        for m in summary["models"]:
            log.info("CV AUC %s: %.3f (%.3f-%.3f)", m["name"], m["auc"], m["ci_low"], m["ci_high"])
    return 0
