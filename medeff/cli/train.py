"""``medeff train [key=value ...]``: compose ``conf/train.yaml`` with overrides and train.

``plan=PLAN.json`` (from ``medeff plan``) fills patch size, spacing, batch size and model; overrides win.

``-m`` / ``--multirun`` (or a config that sets ``hydra.mode: MULTIRUN``, such as ``hparams_search=lr_sweep``) runs
a sweep through Hydra's own multirun: the sweeper plugin chosen by the config (Hydra's basic grid sweeper for
``data.fold=0,1,2 seed=1,2``, the Optuna sweeper for ``hparams_search=lr_sweep``) proposes the trials and the
launcher plugin (``hydra/launcher``: the basic in-process launcher by default, Submitit for Slurm, Joblib for local
processes) runs them. Each trial trains in ``run_dir``, or in a sub-folder of it named after the swept values, and
returns ``optimized_metric`` to the sweeper.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["HELP", "add_arguments", "run", "sweep_overrides", "sweep_job"]

HELP = "train a model from a Hydra config (e.g. experiment=nodule_2d data.index=INDEX.json [plan=PLAN.json] [-m])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=nodule_2d trainer.max_epochs=1")
    parser.add_argument("--config-name", default="train", help="entry config under conf/ (default: train)")
    parser.add_argument("--print-config", action="store_true", help="print the composed config and exit")
    parser.add_argument("-m", "--multirun", action="store_true",
                        help="run a sweep with Hydra's multirun: every point of comma-separated values "
                             "(data.fold=0,1,2 seed=1,2), or the search of hparams_search=...")


def _apply_plan(overrides: list[str]) -> list[str]:
    plans = [o for o in overrides if o.startswith("plan=")]
    if not plans:
        return overrides
    from medeff.engine.plan import plan_overrides

    return plan_overrides(plans[-1].split("=", 1)[1]) + [o for o in overrides if not o.startswith("plan=")]


def sweep_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Split command-line overrides into ``(fixed, swept)`` with Hydra's override parser.

    Raises:
        ConfigError: an override Hydra cannot parse.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from medeff.errors import ConfigError

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as exc:
        raise ConfigError(f"Cannot parse the overrides {overrides}: {str(exc).splitlines()[0]}",
                          hint="write key=value, key=a,b for a sweep, +key=value for a new key.") from exc
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    swept = [o.input_line for o in parsed if o.is_sweep_override()]
    return fixed, swept


def _hydra_mode(config_name: str, fixed: list[str]) -> str:
    """``hydra.mode`` of the composed config (``MULTIRUN`` when e.g. ``hparams_search`` asks for a sweep)."""
    from hydra import compose, initialize_config_dir

    from medeff.config import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=fixed, return_hydra_config=True)
    return str(cfg.hydra.get("mode") or "RUN").rsplit(".", 1)[-1]


#: folder of the latest sweep (set by the first trial run in this process), where Hydra and its sweeper report
LAST_SWEEP: dict[str, str] = {}


def sweep_job(cfg: Any) -> float | None:
    """One trial of a Hydra multirun: train in ``run_dir`` (plus a sub-folder named after the swept values) and
    return ``optimized_metric`` (what the sweeper optimises).

    Raises:
        ConfigError: ``optimized_metric`` names a metric the run did not log.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from medeff.config import check_values
    from medeff.engine.train import resolve_config, train
    from medeff.errors import ConfigError
    from medeff.utils.logging import get_logger

    log = get_logger(__name__)
    hc = HydraConfig.get()
    LAST_SWEEP["dir"] = str(hc.sweep.dir)
    tag = str(hc.job.override_dirname or "").replace("/", "-")
    log.info("Sweep trial #%s: %s", hc.job.num, " ".join(hc.overrides.task) or "(no overrides)")
    check_values("train", cfg)
    if tag:  # sweeps over other keys than the fold: one sub-folder per point
        OmegaConf.update(cfg, "run_dir", f"{resolve_config(cfg)['run_dir']}/{tag}", merge=False)
    result = train(cfg)
    print(f"best checkpoint: {result['best_checkpoint']}\nlast checkpoint: {result['last_checkpoint']}")
    name = cfg.get("optimized_metric")
    if not name:
        return None
    value = result.get("optimized_metric")
    if value is None:
        raise ConfigError(f"optimized_metric={name} was not logged by the run (logged: "
                          f"{sorted(result['metrics'])}).", hint="set optimized_metric to one of the logged metrics.")
    log.info("Sweep trial #%s: %s = %.6g", hc.job.num, name, value)
    return float(value)


@contextlib.contextmanager
def _hydra_argv(argv: list[str]):
    """Hydra's ``@hydra.main`` reads the process arguments; give it ``argv`` and let job errors through as they are
    (``HYDRA_FULL_ERROR``) so that medeff reports them like any other error."""
    saved_argv, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved_argv[0] if saved_argv else "medeff", *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env


def multirun(config_name: str, overrides: list[str]) -> None:
    """Run a sweep with Hydra's multirun (sweeper and launcher plugins from the config).

    The run folder of each trial gets a sub-folder named after the values it sweeps (not ``data.fold``, which
    ``run_dir`` holds already): Hydra's ``hydra.job.override_dirname`` with every other command-line key excluded.

    Raises:
        ConfigError: a bad override or config (checked before any trial starts, and by Hydra).
        MedeffError: raised by a trial.
    """
    import hydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from medeff.config import compose, conf_dir
    from medeff.errors import ConfigError

    fixed, swept = sweep_overrides(overrides)
    compose(config_name, fixed)  # a wrong key or value is reported before any trial
    keys = sorted({o.split("=", 1)[0].lstrip("+~") for o in fixed} | {"data.fold"})
    exclude = "[" + ",".join(f"'{k}'" for k in keys) + "]"
    argv = ["--multirun", *overrides, f"hydra.job.config.override_dirname.exclude_keys={exclude}"]
    app = hydra.main(config_path=str(conf_dir()), config_name=config_name, version_base="1.3")(sweep_job)
    LAST_SWEEP.clear()
    try:
        with _hydra_argv(argv):
            app()
    except (HydraException, OmegaConfBaseException) as exc:
        hint = "check the overrides and the hparams_search config"
        if "hydra/sweeper" in str(exc) or "hydra/launcher" in str(exc):
            hint = ("install the sweeper/launcher plugin: pip install 'medeff[sweep]' (Optuna), "
                    "hydra-submitit-launcher (Slurm) or hydra-joblib-launcher")
        raise ConfigError(f"The sweep {overrides} cannot run: {str(exc).splitlines()[0]}", hint=hint) from exc
    results = Path(LAST_SWEEP.get("dir", "")) / "optimization_results.yaml"
    if LAST_SWEEP.get("dir") and results.is_file():
        print(f"sweep results: {results}\n{results.read_text()}")
    elif LAST_SWEEP.get("dir"):
        print(f"sweep folder: {LAST_SWEEP['dir']}")


def run(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from medeff.config import compose

    overrides = _apply_plan(list(args.overrides))
    fixed, swept = sweep_overrides(overrides)
    if args.print_config:
        print(OmegaConf.to_yaml(compose(args.config_name, fixed)))
        if swept:
            print(f"# swept with -m: {' '.join(swept)}")
        return 0
    if not args.multirun:
        compose(args.config_name, fixed)  # medeff's own report of a bad override, before Hydra's
    if args.multirun or _hydra_mode(args.config_name, fixed) == "MULTIRUN":  # e.g. hparams_search=lr_sweep
        multirun(args.config_name, overrides)
        return 0
    from medeff.engine.train import train

    result = train(compose(args.config_name, overrides))
    print(f"best checkpoint: {result['best_checkpoint']}\nlast checkpoint: {result['last_checkpoint']}")
    return 0
