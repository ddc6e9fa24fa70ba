"""Untrusted checkpoints and configs: pickled code is never run, stored ``_target_`` keys cannot reach arbitrary
callables (at predict time, or through a plan file or a nested value at train time)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from medeff.cli.main import main
from medeff.engine.checkpoint import AtomicCheckpointIO, FORMAT
from medeff.errors import CheckpointError, ConfigError

PACKAGE = Path(__file__).resolve().parents[2] / "medeff"


class _CreatesFile:
    """Unpickling this object creates ``path`` (what a malicious checkpoint would do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 8), np.float32), np.eye(4)), str(path))
    return path


def _forged(path: Path, model_cfg: dict) -> Path:
    """A checkpoint made only of plain values (it passes weights_only) whose stored model config is ``model_cfg``."""
    meta = {"format": FORMAT, "format_version": 1, "task": "segmentation", "config": {"model": model_cfg},
            "class_names": [], "label_names": ["background", "x"], "threshold": None, "positive_classes": [],
            "data": {"kind": "volume", "spatial_dims": 3}, "versions": {}}
    torch.save({"state_dict": {"net.w": torch.zeros(1)}, "medeff": meta}, path)
    return path


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "medeff": _CreatesFile(marker)}, evil)
    torch.load(evil, weights_only=False)  # the payload is real: a plain unpickling runs it
    assert marker.exists()
    marker.unlink()

    rc = main(["predict", f"ckpt={evil}", f"input={_image(tmp_path)}", f"output_dir={tmp_path / 'out'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "holds objects other than tensors" in err and "Traceback" not in err
    with pytest.raises(CheckpointError):  # the resume path of `medeff train ckpt_path=...`
        AtomicCheckpointIO().load_checkpoint(evil)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("model_cfg", [
    {"_target_": "os.system", "command": "touch MARKER"},
    {"_target_": "subprocess.run", "args": ["touch", "MARKER"]},
    {"_target_": "builtins.exec", "_args_": ["open('MARKER', 'w')"]},
    {"_target_": "torch.hub.load", "repo_or_dir": "x", "model": "y"},
    {"_target_": "torch.save", "obj": 1, "f": "MARKER"},
    {"_target_": "monai.bundle.run", "config_file": "MARKER"},
    {"_target_": "medeff.models.create_model", "name": {"_target_": "os.system", "command": "touch MARKER"}},
    {"_target_": "medeff.models..x", "name": "efficientnet_b0"},
    {"name": "efficientnet_b0"},
], ids=["os.system", "subprocess", "exec", "torch.hub", "torch.save", "monai.bundle", "nested", "dotdot", "none"])
def test_stored_model_config_cannot_reach_arbitrary_callables(tmp_path, capsys, model_cfg):
    marker = tmp_path / "MARKER"
    cfg = json.loads(json.dumps(model_cfg).replace("MARKER", str(marker)))
    ckpt = _forged(tmp_path / "forged.ckpt", cfg)
    rc = main(["predict", f"ckpt={ckpt}", f"input={_image(tmp_path)}", f"output_dir={tmp_path / 'out'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "Traceback" not in err, err
    assert "not an allowed target" in err or "stores no model config" in err, err
    assert not marker.exists()


def test_allowed_model_targets_still_build(tmp_path):
    from medeff.engine.predict import load_model

    cfg = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    ckpt = tmp_path / "ok.ckpt"
    _forged(ckpt, cfg)
    sd = torch.load(ckpt, weights_only=True)
    sd["state_dict"] = {f"net.{k}": v for k, v in torch.nn.Conv3d(1, 2, 1).state_dict().items()}
    torch.save(sd, ckpt)
    net, meta = load_model(ckpt)
    assert isinstance(net, torch.nn.Conv3d) and meta["task"] == "segmentation"


def test_plan_file_cannot_inject_config(tmp_path):
    from medeff.engine.plan import PLAN_FORMAT, plan_overrides

    good = {"format": PLAN_FORMAT, "patch_size": [32, 32, 16], "target_spacing": [1.5, 1.5, 3.0], "batch_size": 2,
            "model": "efficientnet_b0"}
    (tmp_path / "ok.json").write_text(json.dumps(good))
    assert "model.name=efficientnet_b0" in plan_overrides(tmp_path / "ok.json")
    for bad in ({"model": "{_target_:os.system,command:'touch x'}"}, {"model": "b0,model._target_=os.system"},
                {"patch_size": ["${oc.env:HOME}", 1, 1]}, {"batch_size": "2,_target_:os.system"},
                {"target_spacing": [{"_target_": "os.system"}, 1.0, 1.0]}):
        (tmp_path / "bad.json").write_text(json.dumps({**good, **bad}))
        with pytest.raises(ConfigError, match="Plan"):
            plan_overrides(tmp_path / "bad.json")


def test_nested_targets_in_a_training_config_are_refused(tmp_path):
    from medeff.engine.train import build

    marker = tmp_path / "MARKER"
    node = OmegaConf.create({"_target_": "medeff.models.create_model",
                             "name": {"_target_": "os.system", "command": f"touch {marker}"}})
    with pytest.raises(ConfigError, match="not an allowed target"):
        build(node, "model")
    assert not marker.exists()


def test_only_guarded_modules_instantiate():
    """``hydra.utils.instantiate`` is called only in train.build and predict.load_model, both behind check_targets."""
    callers = {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if re.search(r"\binstantiate\(", text):
            callers[path.relative_to(PACKAGE).as_posix()] = "check_targets(" in text
    assert callers == {"engine/train.py": True, "engine/predict.py": True}, callers
