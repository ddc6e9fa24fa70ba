"""medeff uses the public APIs of MONAI, Lightning and Hydra, and the behaviour it relies on is tested here.

* No import of a private module or name (``monai.inferers.utils._get_scan_interval``, ``hydra._internal``), no
  assignment into another package's module, and no subclass reaching into private members of its base.
* ``last.ckpt`` after every checkpointing point: a second, plain ``ModelCheckpoint`` (no monitor, one file,
  ``filename="last"``, no version counter) replaces the former subclass of ``ModelCheckpoint`` internals.
* Atomic logs: :class:`AtomicCSVLogger` (on Lightning's public ``Logger``) writes what Lightning's ``CSVLogger``
  writes; :class:`AtomicTensorBoardLogger` writes ``hparams.yaml`` through medeff's atomic path only.
"""

from __future__ import annotations

import ast
import csv
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest
import torch

MEDEFF = Path(__file__).resolve().parents[2] / "medeff"
OTHERS = ("monai", "lightning", "pytorch_lightning", "lightning_fabric", "hydra", "hydra_plugins", "omegaconf",
          "torchmetrics")


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _third_party(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in OTHERS


def _files():
    return sorted(p for p in MEDEFF.rglob("*.py") if ".venv" not in p.parts)


def test_no_private_imports_or_monkeypatching_of_other_packages():
    problems = []
    for path in _files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules: set[str] = set()  # local names bound to another package's modules
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if _third_party(a.name):
                        if _private(a.name):
                            problems.append(f"{path}:{node.lineno} imports {a.name}")
                        modules.add(a.asname or a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and _third_party(node.module):
                for a in node.names:
                    if _private(node.module) or _private(a.name):
                        problems.append(f"{path}:{node.lineno} imports {node.module}.{a.name}")
                    full = f"{node.module}.{a.name}"
                    with_module = importlib.util.find_spec(node.module) is not None
                    try:
                        if with_module and importlib.util.find_spec(full) is not None:
                            modules.add(a.asname or a.name)
                    except (ImportError, ValueError):
                        pass
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
                node, (ast.AugAssign, ast.AnnAssign)) else []
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in modules:
                    problems.append(f"{path}:{node.lineno} assigns {t.value.id}.{t.attr} (another package's module)")
        for m in re.finditer(r"\bhydra\._internal\b", path.read_text(encoding="utf-8")):
            problems.append(f"{path}: mentions hydra._internal")
    assert not problems, "\n".join(problems)


def _medeff_classes():
    import pkgutil

    import medeff

    for info in pkgutil.walk_packages(medeff.__path__, "medeff."):
        if info.name.startswith(("medeff._conf", "medeff.demo.__main__", "medeff.benchmarks.__main__")):
            continue
        try:
            mod = importlib.import_module(info.name)
        except ImportError:  # an optional dependency (mlflow, highdicom) is absent
            continue
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ == info.name:
                yield cls


def test_subclasses_touch_no_private_member_of_another_packages_base():
    problems = []
    for cls in _medeff_classes():
        bases = [b for b in cls.__mro__[1:] if _third_party(b.__module__)]
        if not bases:
            continue
        base_private: set[str] = set()
        for b in bases:
            base_private |= {n for n in vars(b) if n.startswith("_") and not n.startswith("__")}
            try:
                base_private |= set(re.findall(r"self\.(_[A-Za-z]\w*)", inspect.getsource(b)))
            except (OSError, TypeError):
                pass
        own = {n for n in vars(cls) if n.startswith("_")}
        source = inspect.getsource(cls)
        own |= set(re.findall(r"self\.(_[A-Za-z]\w*)\s*(?::[^=]+)?=(?!=)", source))  # set by the subclass itself
        used = set(re.findall(r"(?:self|super\(\))\.(_[A-Za-z]\w*)", source))
        touched = sorted((used & base_private) - own)
        if touched:
            problems.append(f"{cls.__module__}.{cls.__qualname__} uses {touched} of {bases[0].__qualname__}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------ last.ckpt after every checkpointing point
def _module(scores):
    import lightning as L

    class M(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def training_step(self, batch, batch_idx):
            return self.lin(batch[0]).pow(2).mean()

        def validation_step(self, batch, batch_idx):
            pass

        def on_validation_epoch_end(self):
            self.log("val/score", float(scores[self.current_epoch]))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    return M()


def _loader():
    data = torch.utils.data.TensorDataset(torch.randn(4, 2))
    return torch.utils.data.DataLoader(data, batch_size=2)


def _fit(tmp_path: Path, scores, epochs: int, ckpt_path=None, check_val_every_n_epoch: int = 1):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from medeff.engine.checkpoint import last_every_time

    args = {"dirpath": str(tmp_path / "checkpoints"), "filename": "epoch_{epoch:03d}", "auto_insert_metric_name": False,
            "monitor": "val/score", "mode": "max", "save_top_k": 1, "save_last": True,
            "save_on_train_epoch_end": False}
    companion = last_every_time(args)
    main = ModelCheckpoint(**{**args, "save_last": False})
    trainer = L.Trainer(max_epochs=epochs, callbacks=[main, companion], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0,
                        check_val_every_n_epoch=check_val_every_n_epoch)
    trainer.fit(_module(scores), _loader(), _loader(), ckpt_path=ckpt_path)
    return trainer, main


@pytest.mark.parametrize("scores", [[0.9, 0.5, 0.4, 0.3], [0.5, float("nan"), float("nan"), float("nan")]],
                         ids=["worse", "nan"])
def test_last_ckpt_follows_every_epoch_when_the_monitored_metric_does_not_improve(tmp_path, scores):
    trainer, main = _fit(tmp_path, scores, 3)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2
    assert torch.load(ckpts / "epoch_000.ckpt", weights_only=True)["epoch"] == 0
    assert trainer.checkpoint_callback is main and Path(main.best_model_path).name == "epoch_000.ckpt"
    # resumed: last.ckpt is replaced (no last-v1.ckpt), and still follows the epochs
    _fit(tmp_path, scores, 4, ckpt_path=str(ckpts / "last.ckpt"))
    assert sorted(p.name for p in ckpts.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 3


def test_last_ckpt_is_written_at_the_end_of_a_run_without_checkpointing_points(tmp_path):
    """Validation every 5 epochs, 3 epochs run: no checkpointing point, yet last.ckpt holds the final step."""
    trainer, _ = _fit(tmp_path, [0.5] * 5, 3, check_val_every_n_epoch=5)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert torch.load(last, weights_only=True)["global_step"] == trainer.global_step == 6


def test_last_every_time_only_where_lightning_lags():
    from medeff.engine.checkpoint import last_every_time

    assert last_every_time({"monitor": None, "save_last": True}) is None  # without monitor Lightning saves each time
    assert last_every_time({"monitor": "val/auc", "save_last": False}) is None
    assert last_every_time({"monitor": "val/auc", "save_last": "link"}) is None
    c = last_every_time({"monitor": "val/auc", "save_last": True, "dirpath": "d", "every_n_epochs": 2})
    assert (c.monitor, c.save_top_k, c.filename, c.dirpath.endswith("d")) == (None, 1, "last", True)


# ------------------------------------------------------------------ atomic loggers
def _log_sequence(logger):
    logger.log_hyperparams({"lr": 0.1, "name": "b0"})
    logger.log_metrics({"train/loss": torch.tensor(1.5), "epoch": 0}, step=0)
    logger.save()
    logger.log_metrics({"train/loss": 1.25, "epoch": 0}, step=1)
    logger.log_metrics({"val/auc": 0.75, "epoch": 0}, step=1)  # a new column appears
    logger.save()
    logger.finalize("success")


def _read(path: Path):
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return sorted(reader.fieldnames), list(reader)


def test_atomic_csv_logger_writes_what_lightnings_csv_logger_writes(tmp_path):
    import yaml
    from lightning.pytorch.loggers import CSVLogger

    from medeff.engine.loggers import AtomicCSVLogger

    ours, theirs = AtomicCSVLogger(tmp_path / "a", name="csv"), CSVLogger(tmp_path / "b", name="csv")
    _log_sequence(ours)
    _log_sequence(theirs)
    assert Path(ours.log_dir).relative_to(tmp_path / "a") == Path(theirs.log_dir).relative_to(tmp_path / "b") \
        == Path("csv/version_0")
    assert _read(Path(ours.log_dir) / "metrics.csv") == _read(Path(theirs.log_dir) / "metrics.csv")
    assert yaml.safe_load((Path(ours.log_dir) / "hparams.yaml").read_text()) == \
        yaml.safe_load((Path(theirs.log_dir) / "hparams.yaml").read_text())
    assert not [p for p in Path(ours.log_dir).iterdir() if p.name.startswith(".tmp-")]
    assert AtomicCSVLogger(tmp_path / "a", name="csv").version == 1  # the next free version, as Lightning's
    # a resumed run with a fixed version keeps the rows it had
    again = AtomicCSVLogger(tmp_path / "a", name="csv", version=0)
    again.log_metrics({"train/loss": 1.0, "epoch": 1}, step=2)
    again.save()
    keys, rows = _read(Path(again.log_dir) / "metrics.csv")
    assert len(rows) == 4 and rows[-1]["step"] == "2" and "val/auc" in keys


def test_atomic_tensorboard_logger_writes_hparams_only_atomically(tmp_path, monkeypatch):
    import yaml
    from lightning.pytorch.loggers import tensorboard as lightning_tb

    import medeff.engine.loggers as loggers

    def not_atomic(*args, **kwargs):
        raise AssertionError("hparams.yaml written in place")

    monkeypatch.setattr(lightning_tb, "save_hparams_to_yaml", not_atomic)
    written = []
    real = loggers.atomic_hparams_yaml
    monkeypatch.setattr(loggers, "atomic_hparams_yaml", lambda path, h, *a: written.append(path) or real(path, h, *a))
    tb = loggers.AtomicTensorBoardLogger(str(tmp_path), name="tensorboard")
    tb.log_hyperparams({"lr": 0.1})
    tb.log_metrics({"train/loss": 1.0}, step=0)
    tb.save()
    tb.save()
    tb.finalize("success")
    hparams = Path(tb.log_dir) / "hparams.yaml"
    assert written == [str(hparams)]
    assert yaml.safe_load(hparams.read_text()) == {"lr": 0.1}
