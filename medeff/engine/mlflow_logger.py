"""``logger=mlflow``: Lightning's ``MLFlowLogger`` with a local store under the run folder by default.

MLflow is an optional dependency (``pip install "medeff[mlflow]"``, which installs ``mlflow-skinny``). Without a
``tracking_uri`` the run is written to a file store at ``${run_dir}/mlruns`` (browse it with
``mlflow ui --backend-store-uri file:RUN_DIR/mlruns``). Recent MLflow releases refuse file stores unless the
environment variable ``MLFLOW_ALLOW_FILE_STORE`` is true; this factory sets it (when unset) for ``file:`` URIs only.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medeff.errors import ConfigError

__all__ = ["mlflow_logger", "local_tracking_uri", "MLFLOW_EXTRA_HINT"]

MLFLOW_EXTRA_HINT = 'install medeff[mlflow] (pip install "medeff[mlflow]", which brings mlflow-skinny), ' \
                    "or choose another logger (logger=csv)."


def local_tracking_uri(save_dir: str | os.PathLike) -> str:
    """``file:`` URI of a local MLflow store in ``save_dir`` (absolute, so the run does not depend on the cwd)."""
    return Path(save_dir).expanduser().resolve().as_uri()


def mlflow_logger(*, save_dir: str | os.PathLike, experiment_name: str = "medeff", run_name: str | None = None,
                  tracking_uri: str | None = None, tags: Mapping[str, Any] | None = None, log_model: bool = False,
                  prefix: str = ""):
    """Build a ``lightning.pytorch.loggers.MLFlowLogger``.

    Args:
        save_dir: folder of the local file store used when ``tracking_uri`` is None (``${run_dir}/mlruns``).
        experiment_name: MLflow experiment (created when absent).
        run_name: MLflow run name.
        tracking_uri: ``http(s)://`` server, ``sqlite:///...`` database or ``file:`` store; None for the local
            file store in ``save_dir``.
        tags: run tags (plain strings; never put patient identifiers here).
        log_model: upload checkpoints as artifacts (``True``, ``"all"`` or ``False``).
        prefix: prefix of every metric key.

    Returns:
        The logger.

    Raises:
        ConfigError: MLflow is not installed.
    """
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("logger=mlflow needs the 'mlflow' package, which is not installed.",
                          hint=MLFLOW_EXTRA_HINT)
    from lightning.pytorch.loggers import MLFlowLogger

    uri = str(tracking_uri) if tracking_uri else local_tracking_uri(save_dir)
    if uri.startswith("file:"):
        Path(save_dir if not tracking_uri else uri[len("file:"):]).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(experiment_name=str(experiment_name), run_name=run_name, tracking_uri=uri,
                        tags={str(k): str(v) for k, v in (tags or {}).items()} or None, log_model=log_model,
                        prefix=prefix)
