"""Fine-tuning schedules (medeff.engine.finetune): parameter groups and their learning rates, the frozen encoder
(weights and BatchNorm statistics unchanged), unfreezing at the configured epoch, and exact resume mid-schedule."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from medeff.config import compose
from medeff.engine.finetune import Finetuning, encoder_stages, stage_lr_scales
from medeff.engine.train import _instantiate_group, train
from medeff.errors import ConfigError
from medeff.models import create_model

from .helpers import SMALL_NET

HERE = Path(__file__).resolve().parent


def _tiny(task: str = "classification") -> nn.Module:
    return create_model("efficientnet_b0", spatial_dims=2, in_channels=1, num_classes=2, task=task, width=0.25,
                        depth=0.34)


def test_param_groups_cover_every_parameter_once_with_layer_decay_and_encoder_scale():
    from medeff.engine.tasks import ClassificationTask

    net = _tiny()
    cb = Finetuning(layer_decay=0.5, encoder_lr_scale=0.1)
    groups = cb.param_groups(net)
    stages = encoder_stages(net)
    n = len(stages)
    assert n == 1 + len(net.blocks) + 1  # stem, every stage, the 1x1 head convolution
    assert [g["name"] for g in groups] == [f"encoder.stage{s}" for s in range(n)] + ["head"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert {id(p) for p in groups[-1]["params"]} == {id(p) for p in net.classifier.parameters()}
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in [*net.conv_stem.parameters(),
                                                                       *net.bn1.parameters()]}

    task = ClassificationTask(net, num_classes=2, optimizer=lambda params: torch.optim.AdamW(params, lr=0.01),
                              param_groups=cb.param_groups)
    opt = task.configure_optimizers()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head"] == pytest.approx(0.01)
    for s in range(n):  # lr * encoder_lr_scale * decay^(n - s)
        assert lrs[f"encoder.stage{s}"] == pytest.approx(0.01 * 0.1 * 0.5 ** (n - s))
    assert lrs["encoder.stage0"] < lrs[f"encoder.stage{n - 1}"] < lrs["head"]
    assert stage_lr_scales(3, layer_decay=0.5) == [0.125, 0.25, 0.5]


def test_segmentation_encoder_stages_and_head():
    net = _tiny("segmentation")
    groups = Finetuning(layer_decay=0.8).param_groups(net)
    head = {id(p) for p in groups[-1]["params"]}
    assert head == {id(p) for n, p in net.named_parameters() if not n.startswith("encoder.")}
    assert len(groups) == 1 + len(net.encoder.blocks) + 1  # no 1x1 head convolution in a features-only encoder


def test_without_param_groups_the_optimizer_is_unchanged():
    from medeff.engine.tasks import ClassificationTask

    task = ClassificationTask(_tiny(), num_classes=2, optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    opt = task.configure_optimizers()
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("kwargs", [{"freeze_epochs": -1}, {"freeze_epochs": 1.5}, {"layer_decay": 1.5},
                                    {"layer_decay": 0}, {"encoder_lr_scale": 0}, {"encoder_lr_scale": "x"}])
def test_bad_settings_are_config_errors_naming_the_key(kwargs):
    with pytest.raises(ConfigError, match=f"finetune.{next(iter(kwargs))}"):
        Finetuning(**kwargs)


def test_configs_compose_and_are_allowed_targets():
    from medeff.engine.targets import resolve_target, train_targets

    assert dict(compose("train", ["data.index=x"]).finetune) == {}
    for name, freeze, decay in [("freeze_then_unfreeze", 5, 1.0), ("llrd", 0, 0.7)]:
        node = compose("train", ["data.index=x", f"finetune={name}"]).finetune
        assert resolve_target(node._target_) in train_targets()
        assert (node.freeze_epochs, node.layer_decay) == (freeze, decay)


# ---- training runs --------------------------------------------------------------------------------------------

def _overrides(index: Path, run_dir: Path, epochs: int, freeze: int) -> list[str]:
    return ["experiment=nodule_2d", f"data.index={index}", f"run_dir={run_dir}", "seed=7", "data.batch_size=8",
            "data.num_workers=0", "trainer.accelerator=cpu", "trainer.deterministic=true",
            f"trainer.max_epochs={epochs}", "++trainer.limit_train_batches=3", "++trainer.limit_val_batches=1",
            "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
            "logger=none", "callbacks.lr_monitor=null",
            "callbacks.model_checkpoint.save_top_k=-1", "finetune=freeze_then_unfreeze",
            f"finetune.freeze_epochs={freeze}", "finetune.layer_decay=0.8", "finetune.encoder_lr_scale=0.5",
            "model.drop_path_rate=0.0"] + SMALL_NET


class _Probe(L.Callback):
    """Per training epoch: whether the encoder trains, and the BatchNorm modes seen in the first batch."""

    def __init__(self) -> None:
        self.epochs: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            net = pl_module.net
            self.epochs.append({"epoch": trainer.current_epoch,
                                "encoder_grad": net.conv_stem.weight.requires_grad,
                                "bn_training": net.bn1.training, "head_grad": net.classifier.weight.requires_grad})


def _run(monkeypatch, overrides: list[str], extra: list[L.Callback]) -> dict:
    import medeff.engine.train as T

    def with_test_callbacks(group, what, *args, **kwargs):
        built = _instantiate_group(group, what, *args, **kwargs)
        return built + list(extra) if what == "callbacks" else built

    monkeypatch.setattr(T, "_instantiate_group", with_test_callbacks)
    return train(compose("train", overrides))


def _encoder_state(sd: dict) -> dict:
    """Encoder parameters and BatchNorm buffers (running stats, batch counts) of a task state dict."""
    return {k: v for k, v in sd.items()
            if k.startswith("net.") and not k.startswith(("net.classifier.", "net._extra"))}


def test_frozen_epochs_leave_encoder_and_batchnorm_stats_unchanged_then_unfreeze(nodule_index, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))
    from crash_callback import SaveWeightsAtEnd

    run_dir = tmp_path / "run"
    probe = _Probe()
    _run(monkeypatch, _overrides(nodule_index, run_dir, epochs=3, freeze=2),
         [probe, SaveWeightsAtEnd(str(run_dir / "final.pt"))])

    assert [e["epoch"] for e in probe.epochs] == [0, 1, 2]
    assert [e["encoder_grad"] for e in probe.epochs] == [False, False, True]  # unfrozen at epoch 2
    assert [e["bn_training"] for e in probe.epochs] == [False, False, True]
    assert all(e["head_grad"] for e in probe.epochs)

    start = torch.load(run_dir / "final.pt.start", weights_only=True)
    epoch1 = torch.load(run_dir / "checkpoints" / "epoch_001.ckpt", weights_only=True, map_location="cpu")
    final = torch.load(run_dir / "final.pt", weights_only=True)
    frozen = _encoder_state(epoch1["state_dict"])
    assert any("running_mean" in k for k in frozen) and any("num_batches_tracked" in k for k in frozen)
    for k, v in frozen.items():  # two frozen epochs: weights and BatchNorm statistics as loaded
        assert torch.equal(v, start[k]), k
    assert not torch.equal(epoch1["state_dict"]["net.classifier.weight"], start["net.classifier.weight"])
    assert not torch.equal(final["net.conv_stem.weight"], start["net.conv_stem.weight"])  # trained after epoch 2
    assert not torch.equal(final["net.bn1.running_mean"], start["net.bn1.running_mean"])

    # the schedule is recorded in the checkpoint: the run's resolved config and the callback's state
    ft = epoch1["medeff"]["config"]["finetune"]
    assert (ft["freeze_epochs"], ft["layer_decay"], ft["encoder_lr_scale"]) == (2, 0.8, 0.5)
    states = [v for k, v in epoch1["callbacks"].items() if k.startswith("Finetuning")]
    assert states and states[0]["settings"] == {"freeze_epochs": 2, "layer_decay": 0.8, "encoder_lr_scale": 0.5}
    groups = epoch1["optimizer_states"][0]["param_groups"]
    assert groups[-1]["name"] == "head"
    assert groups[0]["lr_scale"] == pytest.approx(0.5 * 0.8 ** 9)  # 9 stages: stem, 7 of blocks, head conv


@pytest.mark.parametrize("crash_epoch", [pytest.param(1, marks=pytest.mark.slow), 2],
                         ids=["while_frozen", "after_unfreezing"])
def test_resume_mid_schedule_matches_uninterrupted_run(nodule_index, tmp_path, monkeypatch, crash_epoch):
    """Killed in epoch 1 (encoder frozen; resumes from the epoch-0 checkpoint) or in epoch 2 (resumes from the
    epoch-1 checkpoint, written after unfreezing at epoch 1): the resumed run ends with the uninterrupted weights."""
    monkeypatch.syspath_prepend(str(HERE))
    from crash_callback import SaveWeightsAtEnd

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == crash_epoch and batch_idx == 1:
                raise RuntimeError("simulated crash")

    ref_dir, run_dir = tmp_path / "ref", tmp_path / "crashed"
    _run(monkeypatch, _overrides(nodule_index, ref_dir, epochs=3, freeze=1), [SaveWeightsAtEnd(str(ref_dir / "w"))])
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(monkeypatch, _overrides(nodule_index, run_dir, epochs=3, freeze=1), [Crash()])
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == crash_epoch - 1
    _run(monkeypatch, _overrides(nodule_index, run_dir, epochs=3, freeze=1) + ["ckpt_path=last"],
         [SaveWeightsAtEnd(str(run_dir / "w"))])
    a = torch.load(ref_dir / "w", weights_only=True)
    b = torch.load(run_dir / "w", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["net.conv_stem.weight"], last["state_dict"]["net.conv_stem.weight"])


def test_train_normalises_images_with_the_pretrained_models_mean_std(nodule_index, tmp_path, monkeypatch):
    """A model carrying ``pretrained_cfg`` (mean/std) has its images normalised with them (``normalize: auto``),
    and the checkpoint's data description records the values, so prediction applies them too."""
    import medeff.engine.train as T

    build = T.build

    def pretrained_build(node, what, **kwargs):
        obj = build(node, what, **kwargs)
        if what == "model":
            obj.pretrained_cfg = {"source": "test weights", "mean": [0.5], "std": [0.25]}
        return obj

    class Images(L.Callback):
        def __init__(self) -> None:
            self.lows: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.lows.append(float(batch["image"].min()))

    monkeypatch.setattr(T, "build", pretrained_build)
    run_dir = tmp_path / "run"
    overrides = _overrides(nodule_index, run_dir, epochs=1, freeze=0) + ["++trainer.limit_train_batches=1",
                                                                         "augmentation=none"]
    images = Images()
    _run(monkeypatch, overrides, [images])
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["medeff"]["data"]["preprocessing"]["normalize"] == {"mean": [0.5], "std": [0.25]}
    assert images.lows and min(images.lows) == pytest.approx(-2.0)  # a 0 pixel: (0 - 0.5) / 0.25

    override = _overrides(nodule_index, tmp_path / "own", epochs=1, freeze=0) + [
        "++trainer.limit_train_batches=1", "data.preprocessing.normalize={mean: [0.0], std: [1.0]}"]
    _run(monkeypatch, override, [])
    ckpt = torch.load(tmp_path / "own" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["medeff"]["data"]["preprocessing"]["normalize"] == {"mean": [0.0], "std": [1.0]}  # config wins


def test_segmentation_with_hu_window_channels_freezes_the_encoder_then_predicts(organ_index, tmp_path, monkeypatch):
    """3D U-Net on three HU-window channels: epoch 0 leaves the encoder (and its BatchNorm statistics) as built and
    trains the decoder; epoch 1 trains the encoder; prediction from the checkpoint makes the same three channels."""
    from medeff.engine.predict import predict

    from .helpers import fast_overrides

    monkeypatch.syspath_prepend(str(HERE))
    from crash_callback import SaveWeightsAtEnd

    run_dir = tmp_path / "seg"
    overrides = ["experiment=organ_seg_3d", f"data.index={organ_index}", "data.patch_size=[16,16,16]",
                 "data.batch_size=1", "data.preprocessing.spacing=[10.0,12.0,12.0]", "augmentation.crop.num_samples=2",
                 "trainer.check_val_every_n_epoch=1", "data.preprocessing.channels=hu_windows", "data.in_channels=3",
                 "finetune=freeze_then_unfreeze", "finetune.freeze_epochs=1", "trainer.max_epochs=2",
                 "callbacks.model_checkpoint.save_top_k=-1", "model.drop_path_rate=0.0"] + fast_overrides(run_dir)
    result = _run(monkeypatch, overrides, [SaveWeightsAtEnd(str(run_dir / "final.pt"))])
    start = torch.load(run_dir / "final.pt.start", weights_only=True)
    epoch0 = torch.load(run_dir / "checkpoints" / "epoch_000.ckpt", weights_only=True, map_location="cpu")
    final = torch.load(run_dir / "final.pt", weights_only=True)
    encoder = [k for k in start if k.startswith("net.encoder.") and "_extra" not in k]
    assert encoder and all(torch.equal(epoch0["state_dict"][k], start[k]) for k in encoder)
    decoder = [k for k in start if k.startswith("net.decoder.") and k.endswith("weight")]
    assert any(not torch.equal(epoch0["state_dict"][k], start[k]) for k in decoder)
    assert any(not torch.equal(final[k], start[k]) for k in encoder)
    assert epoch0["medeff"]["data"]["preprocessing"]["channels"] == "hu_windows"

    out = tmp_path / "masks"
    res = predict(compose("predict", [f"ckpt={result['last_checkpoint']}", f"input={organ_index.parent / 'ct2.nii.gz'}",
                                      f"output_dir={out}", "device=cpu", "case_ids.naming=input"]))
    assert Path(res["files"][0]).is_file()


def test_callback_outside_the_finetune_group_is_refused(nodule_index, tmp_path, monkeypatch):
    """Listed under callbacks, the task gets no parameter groups and the frozen encoder would stay out of the
    optimizer for good: refused before the first step."""
    overrides = _overrides(nodule_index, tmp_path / "run", epochs=1, freeze=0)
    overrides = [o for o in overrides if not o.startswith("finetune")] + [
        "+callbacks.ft._target_=medeff.engine.finetune.Finetuning", "+callbacks.ft.freeze_epochs=1"]
    with pytest.raises(ConfigError, match="finetune=<name>"):
        _run(monkeypatch, overrides, [])


# ---- the frozen encoder in eval mode (no training run: the callback's hooks on a plain module) ------------------

class _Holder(nn.Module):
    """Stands in for a task: the callback only needs ``net`` and ``training``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


def _bn_stats(net: nn.Module) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items() if "running_" in k or "num_batches" in k}


def _train_step(holder: _Holder, cb: Finetuning, opt: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    holder.train()  # what Lightning does at each epoch start and after validation
    cb.on_train_batch_start(None, holder, None, 0)
    out = holder.net(x)
    opt.zero_grad()
    out.float().pow(2).mean().backward()
    opt.step()
    return out


def test_frozen_encoder_is_in_eval_mode_then_trains_after_unfreezing():
    torch.manual_seed(0)
    net = create_model("efficientnet_b0", spatial_dims=2, in_channels=1, num_classes=2, task="classification",
                       width=0.25, depth=0.34, drop_path_rate=0.9)
    holder = _Holder(net)
    cb = Finetuning(freeze_epochs=1)
    cb.freeze_before_training(holder)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(4, 1, 32, 32)
    before = _bn_stats(net)
    assert before

    _train_step(holder, cb, opt, x)  # a training step while frozen
    stages = [m for stage in encoder_stages(net) for m in stage]
    assert not any(sub.training for m in stages for sub in m.modules())  # BN, dropout, drop path all in eval
    assert net.classifier.training  # the head trains
    for k, v in _bn_stats(net).items():
        assert torch.equal(v, before[k]), k
    # no stochastic depth in the frozen encoder: its features are the same for the same input
    with torch.no_grad():
        feats = [net.forward_features(x)[-1] for _ in range(2)]
    assert torch.equal(feats[0], feats[1])

    cb.finetune_function(holder, 1, opt)  # epoch 1: unfrozen
    holder.train()
    assert all(sub.training for m in stages for sub in m.modules())
    _train_step(holder, cb, opt, x)
    after = _bn_stats(net)
    assert not torch.equal(after["bn1.running_mean"], before["bn1.running_mean"])
    assert int(after["bn1.num_batches_tracked"]) == int(before["bn1.num_batches_tracked"]) + 1
