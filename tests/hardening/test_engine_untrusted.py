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
    """``hydra.utils.instantiate`` is called only in targets.build_checked, right after check_targets."""
    callers = {}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        if re.search(r"\binstantiate\(", text):
            callers[path.relative_to(PACKAGE).as_posix()] = len(re.findall(r"\binstantiate\(", text))
    assert callers == {"engine/targets.py": 1}, callers
    src = (PACKAGE / "engine" / "targets.py").read_text()
    body = src[src.index("def build_checked("):]
    assert body.index("check_targets(") < body.index("instantiate(checked")


# ------------------------------------------------------------------ resolve-then-check: attribute-path payloads
class _Payload:
    """Unpickling this object creates ``path``: a pickle that ``torch.load(weights_only=False)`` would run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _attribute_payloads(tmp_path: Path) -> dict[str, dict]:
    """Targets that *start* like allowed ones but walk module attributes to a dangerous callable."""
    marker, victim, pickled = tmp_path / "MARKER", tmp_path / "victim.txt", tmp_path / "payload.pkl"
    shell = {"_target_": "medeff.models.weights.os.system", "command": f"touch {marker}"}
    return {
        "torch.load via attributes": {"_target_": "torch.nn.modules.module.torch.load", "f": str(pickled),
                                      "weights_only": False},
        "torch.save via attributes": {"_target_": "torch.nn.modules.module.torch.save", "obj": 1, "f": str(victim)},
        "os.system via medeff": shell,
        "builtins.exec via attributes": {"_target_": "medeff.models.weights.torch.builtins.exec",
                                         "_args_": [f"open({str(marker)!r}, 'w')"]},
        "open via io attribute": {"_target_": "medeff.engine.predict.io.open", "_args_": [str(marker), "w"]},
        "partial": {**shell, "_partial_": True},
        "nested in _args_": {"_target_": "torch.nn.Sequential", "_args_": [shell]},
        "nested in a list": {"_target_": "medeff.models.create_model", "name": "efficientnet_b0",
                             "extra": [[{"x": shell}]]},
        "target is a mapping": {"_target_": shell, "command": f"touch {marker}"},
        "target is a number": {"_target_": 7},
        "target is a list": {"_target_": ["os", "system"], "command": f"touch {marker}"},
        "dunder walk": {"_target_": "medeff.models.create_model.__globals__.os.system", "command": f"touch {marker}"},
    }


PAYLOAD_IDS = list(_attribute_payloads(Path("/nonexistent")))


def _arm(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """Write the pickle payload and the victim file; check the pickle payload really runs when loaded plainly."""
    marker, victim, pickled = tmp_path / "MARKER", tmp_path / "victim.txt", tmp_path / "payload.pkl"
    torch.save(_Payload(marker), pickled)
    torch.load(pickled, weights_only=False)
    assert marker.exists()
    marker.unlink()
    victim.write_bytes(b"precious")
    return marker, victim, b"precious"


@pytest.mark.parametrize("payload", PAYLOAD_IDS)
def test_attribute_path_payloads_in_a_checkpoint_are_refused(tmp_path, capsys, payload):
    marker, victim, content = _arm(tmp_path)
    ckpt = _forged(tmp_path / "forged.ckpt", _attribute_payloads(tmp_path)[payload])
    rc = main(["predict", f"ckpt={ckpt}", f"input={_image(tmp_path)}", f"output_dir={tmp_path / 'out'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "Traceback" not in err and "not an allowed target" in err, err
    assert err.count("not an allowed target") == 1, err  # one error, naming the key and the target
    assert not marker.exists() and victim.read_bytes() == content and not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload", PAYLOAD_IDS)
def test_attribute_path_payloads_in_a_training_config_are_refused(tmp_path, payload):
    from medeff.engine.train import build

    marker, victim, content = _arm(tmp_path)
    cfg = _attribute_payloads(tmp_path)[payload]
    with pytest.raises(ConfigError, match="not an allowed target"):
        build(OmegaConf.create(cfg), "model")
    with pytest.raises(ConfigError, match="not an allowed target"):  # also as a keyword argument of an allowed one
        build(OmegaConf.create({"_target_": "torch.nn.Identity"}), "model", extra=cfg)
    assert not marker.exists() and victim.read_bytes() == content


def test_command_line_override_cannot_reach_os_system(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    rc = main(["train", "data._target_=medeff.models.weights.os.system", f"+data.command=touch {marker}",
               f"data.index={tmp_path / 'i.json'}", f"run_dir={tmp_path / 'run'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert rc == 2 and "Traceback" not in err and "not an allowed target" in err and "that name leads to" in err, err
    assert not marker.exists()


def _allow_lists():
    from medeff.engine.targets import model_targets, train_targets

    return {"model": model_targets(), "train": train_targets()}


def _chains(root: str):
    """Every ``module.attr`` and ``module.submodule_attr.attr`` name, from the loaded modules under ``root``, that
    resolves to a callable (with the object it resolves to)."""
    import sys
    import types

    import medeff.engine.predict  # noqa: F401  (load what a predict or train run loads)
    import medeff.engine.train  # noqa: F401

    def public(mod):
        return [(k, v) for k, v in list(vars(mod).items()) if not k.startswith("_")]

    for name, mod in list(sys.modules.items()):
        if mod is None or not (name == root or name.startswith(root + ".")) or "._" in name:
            continue
        for k, v in public(mod):
            if isinstance(v, types.ModuleType):
                for k2, v2 in public(v):
                    if callable(v2) and not isinstance(v2, types.ModuleType):
                        yield f"{name}.{k}.{k2}", v2
            elif callable(v):
                yield f"{name}.{k}", v


@pytest.mark.parametrize("root", ["medeff", "torch.nn", "torch.optim", "lightning.pytorch.callbacks",
                                  "lightning.pytorch.loggers"])
def test_every_attribute_chain_to_a_callable_outside_the_allow_list_is_refused(root):
    """Resolve-then-check: whatever dotted path leads to a callable, it is judged by the object it reaches."""
    from medeff.engine.targets import check_targets

    lists = _allow_lists()
    refused = accepted = 0
    wrong = []
    for chain, obj in _chains(root):
        for kind, allowed in lists.items():
            try:
                check_targets({"_target_": chain}, allowed, source="test")
                ok = True
            except ConfigError:
                ok = False
            if ok and obj not in allowed:
                wrong.append(chain)
            refused += not ok
            accepted += ok
    assert not wrong, wrong[:20]
    assert refused > 50  # the walk did reach many callables outside the lists


def test_conf_targets_are_all_allowed():
    """Every `_target_` of conf/ (every option of every group) builds; the allow-list covers medeff's own configs."""
    from medeff.config import compose, conf_dir
    from medeff.engine.targets import check_targets, find_targets, train_targets

    seen = set()
    for group in ("model", "task", "optimizer", "scheduler", "trainer", "callbacks", "logger", "data"):
        for option in sorted(p.stem for p in (conf_dir() / group).glob("*.yaml")):
            cfg = compose("train", [f"{group}={option}", "data.index=x.json", "run_dir=/tmp/x"])
            node = OmegaConf.to_container(cfg[group], resolve=True)
            check_targets(node, train_targets(), source=f"conf/{group}/{option}.yaml")
            seen.update(t for _, t in find_targets(node))
    assert {"medeff.models.create_model", "lightning.Trainer", "torch.optim.AdamW"} <= seen


def test_trusted_targets_extend_the_list_from_the_command_line_only(tmp_path):
    from medeff.engine.predict import load_model
    from medeff.engine.train import build

    node = OmegaConf.create({"_target_": "collections.OrderedDict"})
    with pytest.raises(ConfigError, match="trusted_targets"):
        build(node, "callbacks.mine")
    assert isinstance(build(node, "callbacks.mine", trusted=["collections.OrderedDict"]), dict)
    # a checkpoint cannot grant itself trust: its stored trusted_targets are not read
    ckpt = _forged(tmp_path / "f.ckpt", {"_target_": "collections.OrderedDict"})
    sd = torch.load(ckpt, weights_only=True)
    sd["medeff"]["config"]["trusted_targets"] = ["collections.OrderedDict"]
    torch.save(sd, ckpt)
    with pytest.raises(CheckpointError, match="not an allowed target"):
        load_model(ckpt)
