"""``medeff plan``: spacing / patch / batch / variant from the index fingerprint within a memory budget."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from medeff.engine.plan import parse_bytes, plan, probe_memory, target_spacing
from medeff.errors import ConfigError

FP = {"num_cases": 3, "shape": {"median": [512, 512, 60], "min": [400, 400, 40], "max": [512, 512, 200]},
      "spacing": {"median": [0.8, 0.8, 5.0], "min": [0.6, 0.6, 1.25], "max": [1.0, 1.0, 5.0]}}
SMALL = {"candidates": ["efficientnet_b1", "efficientnet_b0"], "min_patch": [32, 32, 16], "num_classes": 3}


@pytest.fixture(scope="module")
def thick_index(organ_index, tmp_path_factory) -> Path:
    """The phantom organ index with a thick-slice fingerprint (0.8 x 0.8 x 5 mm, 512 x 512 x 60)."""
    doc = json.loads(organ_index.read_text())
    doc["fingerprint"] = FP
    out = tmp_path_factory.mktemp("plan") / "index.json"
    out.write_text(json.dumps(doc))
    return out


def test_parse_bytes_and_spacing_rules():
    assert parse_bytes("8GB") == 8 * 2 ** 30 and parse_bytes("512 MB") == 512 * 2 ** 20 and parse_bytes(10) == 10
    with pytest.raises(ConfigError, match="budget"):
        parse_bytes("lots")
    assert target_spacing(FP) == [0.8, 0.8, 2.4]  # thick axis: max(min 1.25, 3 x 0.8), not the 5 mm median
    iso = {"spacing": {"median": [1.0, 1.2, 1.5], "min": [0.8, 0.8, 1.0]}}
    assert target_spacing(iso) == [1.0, 1.2, 1.5]


def test_plan_respects_the_budget_and_is_deterministic(thick_index, tmp_path):
    budget = "700MB"
    a = plan({"index": str(thick_index), "budget": budget, "output": str(tmp_path / "p.json"), **SMALL})
    b = plan({"index": str(thick_index), "budget": budget, **SMALL})
    a.pop("output")
    assert a == b == {k: v for k, v in json.loads((tmp_path / "p.json").read_text()).items() if k != "output"}
    assert a["estimated_bytes"] <= parse_bytes(budget)
    assert all(p % r == 0 for p, r in zip(a["patch_size"], a["reduction"]))
    # independent check: the saved-for-backward bytes measured at the chosen patch fit the budget
    from medeff.models import create_model

    net = create_model(a["model"], spatial_dims=3, in_channels=1, num_classes=3, task="segmentation",
                       spacing=tuple(a["target_spacing"]), recompute=False)  # as it trains on a GPU
    measured = probe_memory(net, a["patch_size"])
    params = sum(p.numel() for p in net.parameters())
    assert (measured["saved_bytes"] * a["batch_size"] + 16 * params) <= parse_bytes(budget)
    # a larger budget never plans less work per step
    big = plan({"index": str(thick_index), "budget": "2GB", **SMALL})
    assert math.prod(big["patch_size"]) * big["batch_size"] >= math.prod(a["patch_size"]) * a["batch_size"]


def test_impossible_budget_is_a_clear_error(thick_index):
    with pytest.raises(ConfigError, match="No candidate model fits budget"):
        plan({"index": str(thick_index), "budget": "10MB", **SMALL})


def test_cli_plan_then_train_uses_it_and_overrides_win(thick_index, tmp_path, capsys):
    from medeff.cli.main import main

    out = tmp_path / "plan.json"
    assert main(["plan", f"index={thick_index}", "budget=700MB", f"output={out}", "num_classes=3",
                 "candidates=[efficientnet_b0]", "min_patch=[32,32,16]"]) == 0
    doc = json.loads(out.read_text())
    capsys.readouterr()
    assert main(["train", "--print-config", "experiment=organ_seg_3d", f"data.index={thick_index}", f"plan={out}",
                 "data.batch_size=1"]) == 0
    printed = capsys.readouterr().out
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(printed)
    assert list(cfg.data.patch_size) == doc["patch_size"]
    assert list(cfg.data.preprocessing.spacing) == doc["target_spacing"] == list(cfg.model.spacing)
    assert cfg.model.name == "efficientnet_b0"
    assert cfg.data.batch_size == 1  # the explicit override wins over the plan's batch size


def test_plan_on_the_real_ct_organs_index(shared_data, tmp_path):
    from medeff.data import build_index, index_config

    d = shared_data / "ct_organs_totalsegmentator"
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label,patient_id\n"
                        f"{d}/example_ct_sm.nii.gz,{d}/example_seg.nii.gz,a\n"
                        f"{d}/example_ct.nii.gz,{d}/example_seg_fast_force_split.nii.gz,b\n")
    index = tmp_path / "ct.json"
    build_index(manifest, index, index_config(["pseudonym.salt=t", "folds.k=2", "csv.allow_outside_root=true",
                                               f"labels_file={d}/class_maps.json", "labels_file_key=total"]))
    cfg = {"index": str(index), "budget": "1GB", **SMALL}
    a, b = plan(cfg), plan(cfg)
    assert a == b and a["estimated_bytes"] <= parse_bytes("1GB")
    fp = json.loads(index.read_text())["fingerprint"]
    assert a["target_spacing"] == pytest.approx(fp["spacing"]["median"])  # isotropic 3 mm: the median
    assert all(p % r == 0 for p, r in zip(a["patch_size"], a["reduction"]))


def test_the_probe_budgets_for_the_gpu_path():
    """A GPU step keeps more than a CPU step (no expansion recompute there, BN and SiLU outputs kept separately):
    the probe measures that, so a plan made on a CPU for a GPU's memory does not overshoot it."""
    from medeff.models import create_model

    torch.manual_seed(0)
    kw = dict(spatial_dims=3, in_channels=1, num_classes=3, task="segmentation", width=0.5, depth=0.5)
    cpu_default = create_model("efficientnet_b0", **kw)  # recompute="auto": on for CPU inputs
    gpu_like = create_model("efficientnet_b0", recompute=False, **kw)
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(2, 1, 32, 32, 32)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        cpu_default.train()(x)
    fused_recomputed = sum(seen.values()) / 2
    probed = probe_memory(gpu_like, [32, 32, 32])["saved_bytes"]
    assert probed > 1.2 * fused_recomputed  # the CPU path keeps markedly less than what the plan budgets
