"""``benchmarks/gpu_check.sh`` on CPU (its fallback: tiny sizes, CUDA-only parts skipped with a reason), and the
CPU mixed-precision train steps it exercises (the custom CPU kernels step aside under autocast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medeff.models import create_model
from medeff.ops import FastDepthwiseConv3d

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("spatial_dims,task", [(2, "classification"), (3, "classification"), (3, "segmentation")])
def test_bf16_autocast_train_step_on_cpu(spatial_dims, task):
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", spatial_dims=spatial_dims, in_channels=1, num_classes=2, task=task)
    x = torch.randn(2, 1, *(32,) * spatial_dims)
    y = torch.randint(0, 2, (2, *(32,) * spatial_dims) if task == "segmentation" else (2,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    F.cross_entropy(out.float(), y).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_depthwise_custom_backward_only_outside_autocast():
    conv = FastDepthwiseConv3d(4, 4, 3, padding=1, groups=4)
    x = torch.randn(1, 4, 6, 6, 6)
    assert type(conv(x).grad_fn).__name__ == "DepthwiseConvFunctionBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16 and "DepthwiseConvFunction" not in type(out.grad_fn).__name__
    out.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32


def test_gpu_check_script_cpu_fallback(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(tmp_path), "--cases", "cls3d_b0",
                           "--variants", "bf16", "fp16", "bf16_compile"],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no CUDA device: skipping the gpu-marked tests" in proc.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["environment"]["device"] == "cpu" and report["environment"]["tiny"] is True
    assert report["gpu_tests_exit_status"] == "skipped: no CUDA device"
    rows = {(r["case"], r["variant"], r["side"]): r for r in report["rows"]}
    assert set(rows) == {("cls3d_b0", "bf16", side) for side in ("medeff", "medeff_recompute", "monai")}
    for row in rows.values():
        assert row["status"] == "ok" and row["peak_memory_bytes"] is None and len(row["times_s"]) == 2
        assert row["train_step_flops"] == 3 * row["forward_flops"] > 0
    ratios = {(q["side"], q["peer"]): q for q in report["ratios"]}
    # every medeff side against the peer, the variant against medeff itself; never the peer against medeff
    assert set(ratios) == {("medeff", "monai"), ("medeff_recompute", "monai"), ("medeff_recompute", "medeff")}
    assert all(q["flops_ratio"] == 1.0 for q in ratios.values())  # the recompute's extra work is not counted
    assert ratios[("medeff", "monai")]["time_ratio"] == pytest.approx(
        rows[("cls3d_b0", "bf16", "medeff")]["median_s"] / rows[("cls3d_b0", "bf16", "monai")]["median_s"])
    assert any(s.startswith("fp16: skipped without CUDA") for s in report["skipped"])
    assert any(s.startswith("bf16_compile: skipped without CUDA") for s in report["skipped"])
    assert "| cls3d_b0 | bf16 | medeff / monai |" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_writes_after_every_side_and_runs_ab_sides_in_eager_variants_only(tmp_path):
    """A run stopped by its time limit keeps the sides it finished; the A/B sides run in fp32 and bf16 only."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    seen = []
    report = gpu_check.run_check(tiny=True, device=torch.device("cpu"), steps=1, warmup=1, budget_s=600,
                                 variants=["bf16_channels_last"], cases=["cls3d_b0"],
                                 on_row=lambda r: seen.append((len(r["rows"]), r["complete"])))
    assert [r["side"] for r in report["rows"]] == ["medeff", "monai"]  # no medeff_recompute
    assert seen == [(1, False), (2, False)] and report["complete"] is True
    partial = {**report, "complete": False, "environment": {k: v for k, v in report["environment"].items()
                                                             if k != "load_average_end"}}
    assert "INCOMPLETE" in gpu_check.markdown(partial)
