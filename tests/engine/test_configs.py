"""Every config group option and every experiment composes, resolves and instantiates."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medeff.config import compose, conf_dir
from medeff.data.transforms import augmentation_transforms
from medeff.engine.train import resolve_config
from medeff.errors import ConfigError

BASE = ["data.index=unused.json", "run_dir=/tmp/medeff-test-run"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("data", "model", "task", "trainer", "optimizer", "scheduler", "augmentation", "logger",
                  "callbacks", "experiment", "hparams_search", "debug"):
        assert options(group), group


def _net(cfg):
    return instantiate(cfg.model, _convert_="all")


def _task(cfg, net=None):
    opt = instantiate(cfg.optimizer)
    sched = instantiate(cfg.scheduler.factory) if cfg.scheduler.factory else None
    extra = {"label_names": [f"l{i}" for i in range(cfg.data.num_classes)]} if cfg.task.kind != "classification" \
        else {}
    return instantiate(cfg.task, net=net or _net(cfg), optimizer=opt, scheduler=sched,
                       scheduler_interval=cfg.scheduler.interval, _convert_="all", **extra)


@pytest.mark.parametrize("name", options("data"))
def test_data_options(name):
    cfg = compose("train", BASE + [f"data={name}"])
    dm = instantiate(cfg.data, augmentation={}, _convert_="all")
    assert dm.index_path == "unused.json" and dm.spatial_dims in (2, 3)
    if dm.kind == "archive":
        assert dm.in_channels == 2 * dm.context_slices + 1


@pytest.mark.parametrize("name", options("model"))
def test_model_options(name):
    seg = name.startswith("unet")
    over = ["task=segmentation", "data=ct_organs"] if seg else []
    cfg = compose("train", BASE + over + [f"model={name}"])
    assert cfg.model._target_ == "medeff.models.create_model" and cfg.model.name == name.replace("unet_", "")
    net = _net(cfg)
    x = torch.zeros(1, cfg.data.in_channels, *([32] * cfg.data.spatial_dims))
    with torch.no_grad():
        out = net.eval()(x)
    if seg:
        assert out.shape == (1, cfg.data.num_classes, 32, 32, 32)
        net.train()
        assert isinstance(net(torch.zeros(2, 1, 32, 32, 32)), (list, tuple))  # deep supervision
    else:
        assert out.shape == (1, cfg.data.num_classes)


@pytest.mark.parametrize("name", options("task"))
def test_task_options(name):
    data = {"classification": "nodule_2d", "segmentation": "ct_organs", "joint": "ct_organs_joint"}[name]
    cfg = compose("train", BASE + [f"task={name}", f"data={data}"])
    task = _task(cfg)
    assert task.kind == name and task.monitor == cfg.task.monitor


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_options(name):
    cfg = compose("train", BASE + [f"optimizer={name}"])
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer) and opt.defaults["lr"] == cfg.optimizer.lr


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_options(name):
    cfg = compose("train", BASE + [f"scheduler={name}"])
    assert cfg.scheduler.interval in ("step", "epoch")
    if cfg.scheduler.factory is None:
        assert name == "none"
        return
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
    factory = instantiate(cfg.scheduler.factory)
    kwargs = {"total_steps": 100} if "total_steps" in inspect.signature(factory.func).parameters else {}
    sched = factory(opt, **kwargs)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) <= 1.0 + 1e-9 and min(lrs) > 0


@pytest.mark.parametrize("name", options("augmentation"))
def test_augmentation_options(name):
    seg = name == "ct_seg_3d"
    dims = 2 if name == "slice_2d" else 3
    cfg = compose("train", BASE + [f"augmentation={name}"])
    aug = OmegaConf.to_container(cfg.augmentation)
    patch = [8] * dims
    ts = augmentation_transforms(aug, spatial_dims=dims, has_label=seg, patch_size=patch)
    assert (len(ts) > 0) == (name != "none")
    d = {"image": torch.rand(1, *([12] * dims))}
    if seg:
        d["label"] = (torch.rand(1, *([12] * dims)) > 0.5).long()
    for t in ts:
        d = t(d)
        d = d[0] if isinstance(d, list) else d
    assert d["image"].shape[1:] == ((8,) * dims if seg else (12,) * dims)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(name):
    cfg = compose("train", BASE + [f"trainer={name}"])
    import lightning as L

    kwargs = OmegaConf.to_container(cfg.trainer)
    target = kwargs.pop("_target_")
    assert target == "lightning.Trainer"
    inspect.signature(L.Trainer).bind(**kwargs)  # every key is a Trainer argument
    if kwargs["accelerator"] in ("auto", "cpu") or torch.cuda.is_available():
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callbacks_and_loggers(group, tmp_path):
    for name in options(group):
        cfg = compose("train", BASE + [f"{group}={name}", f"run_dir={tmp_path}"])
        built = [instantiate(c) for c in cfg[group].values()]
        assert all(b is not None for b in built)
        if group == "callbacks" and name != "none":
            ckpt = [b for b in built if type(b).__name__ == "ModelCheckpoint"][0]
            assert ckpt.save_last and ckpt.monitor == "val/auc" and Path(ckpt.dirpath) == tmp_path / "checkpoints"


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments(name):
    cfg = compose("train", BASE + [f"experiment={name}"])
    assert cfg.model._target_ == "medeff.models.create_model"
    resolved = resolve_config(cfg)
    assert resolved["run_name"] == name
    dm = instantiate(cfg.data, augmentation=resolved["augmentation"], _convert_="all")
    assert dm.task == cfg.task.kind
    task = _task(cfg)
    assert task.kind == cfg.task.kind
    if cfg.task.kind != "classification":
        assert list(task.roi_size) == list(cfg.data.patch_size)
        assert cfg.augmentation.crop.mode == "pos_neg"


@pytest.mark.parametrize("group", ["hparams_search", "debug"])
def test_global_overlays(group):
    for name in options(group):
        cfg = compose("train", BASE + [f"{group}={name}"])
        resolve_config(cfg)
        if group == "hparams_search":
            assert cfg.optimized_metric == "val/auc"


def test_missing_index_is_a_config_error():
    cfg = compose("train", [])
    with pytest.raises(ConfigError, match="data.index"):
        resolve_config(cfg)


def test_predict_config_composes():
    cfg = compose("predict", ["ckpt=a.ckpt", "input=b.nii.gz"])
    assert cfg.threshold is None and cfg.sliding_window.mode == "gaussian"


def test_organ_segmentation_never_mirrors_left_and_right():
    """Paired organs (kidney_left/right, liver/spleen) keep their labels only if no flip crosses the left-right axis,
    which is axis 0 after the RAS reorientation of conf/data/ct_organs.yaml."""
    cfg = compose("train", ["experiment=organ_seg_3d"])
    assert cfg.data.preprocessing.orientation == "RAS"
    assert 0 not in list(cfg.augmentation.flip_axes)
