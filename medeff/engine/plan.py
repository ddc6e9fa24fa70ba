"""``plan(cfg)``: choose target spacing, patch size, batch size and EfficientNet variant from an index fingerprint.

Rules (nnU-Net-like, documented in ``docs/training.md``):

* **Target spacing**: the median spacing per axis. Anisotropy rule: when the coarsest median axis is more than
  ``anisotropy_ratio`` times the finest, that axis gets ``max(its minimum over cases, ratio * finest)`` capped at its
  median, so thick slices are not interpolated far below what most scans hold.
* **Strides / kernels**: :func:`medeff.models.plan_levels` on the target spacing (passed as ``model.spacing``).
* **Memory**: a probe train step (forward of a ``probe_patch`` batch of 2) measures the bytes saved for backward
  through ``torch.autograd.graph.saved_tensors_hooks`` (per sample); activation memory scales with voxels x batch.
  Weights, gradients and two AdamW moments add ``4 x parameters x 4 bytes``; ``safety`` multiplies the whole.
* **Patch**: starts at the median case shape after resampling (rounded up to the network's reduction per axis) and
  shrinks the axis with the largest patch / median-shape ratio (ties: the largest axis) by one reduction step until
  a batch of ``min_batch`` fits the budget.
* **Variant**: the largest of ``candidates`` whose patch stays at least ``min_patch`` on every axis; the batch then
  grows while it fits, up to ``max_batch``.

The plan is deterministic (seeded probe, no timing) and written atomically as JSON.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medeff.errors import ConfigError, IndexValidationError
from medeff.layers.fused import unfused
from medeff.utils.atomic import write_json_atomic
from medeff.utils.logging import get_logger

__all__ = ["plan", "parse_bytes", "target_spacing", "probe_memory", "plan_overrides", "PLAN_FORMAT"]

log = get_logger(__name__)
PLAN_FORMAT = "medeff-plan"
_UNITS = {"": 1, "B": 1, "KB": 2 ** 10, "MB": 2 ** 20, "GB": 2 ** 30, "TB": 2 ** 40}


def parse_bytes(text: str | int | float) -> int:
    """``"8GB"`` / ``"512MB"`` / ``1e9`` -> bytes (binary units: 1 GB = 2**30).

    Raises:
        ConfigError: not a size.
    """
    if isinstance(text, (int, float)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?B?)\s*", str(text).upper())
    if not m:
        raise ConfigError(f"budget={text!r} is not a memory size.", hint="write e.g. budget=8GB or budget=512MB.")
    unit = m.group(2) if m.group(2).endswith("B") or not m.group(2) else m.group(2) + "B"
    return int(float(m.group(1)) * _UNITS[unit])


def target_spacing(fingerprint: Mapping[str, Any], anisotropy_ratio: float = 3.0) -> list[float]:
    """Median spacing per axis with the thick-slice rule (see the module docstring).

    Raises:
        IndexValidationError: the fingerprint has no spacing statistics.
    """
    sp = fingerprint.get("spacing") or {}
    if not sp.get("median"):
        raise IndexValidationError("The index fingerprint has no spacing statistics.",
                                   hint="rebuild the index with `medeff index` (volumes with known spacing).")
    med = [float(v) for v in sp["median"]]
    mins = [float(v) for v in (sp.get("min") or med)]
    fine, coarse = min(med), max(med)
    out = list(med)
    if coarse > anisotropy_ratio * fine:
        ax = med.index(coarse)
        out[ax] = min(med[ax], max(mins[ax], anisotropy_ratio * fine))
    return [round(v, 4) for v in out]


def _build(name: str, *, in_channels: int, num_classes: int, spacing: Sequence[float], task: str):
    from medeff.models import create_model

    # the budget is usually a GPU's: build the network as it trains there, without the MBConv expansion recompute
    # (recompute="auto" is CPU-only); on a CPU the step then keeps less than planned
    return create_model(name, spatial_dims=len(spacing), in_channels=in_channels, num_classes=num_classes,
                        task=task, spacing=tuple(spacing), recompute=False)


def probe_memory(net: torch.nn.Module, patch: Sequence[int], in_channels: int = 1) -> dict[str, float]:
    """Bytes saved for backward per sample by a training-mode forward at ``patch``, and the parameter count.

    The probe batch holds 2 samples (batch norm needs more than one value per channel at the deepest level);
    ``saved_bytes`` is per sample. It runs on the CPU with the fused BN+SiLU off (:func:`medeff.layers.fused.unfused`):
    a GPU step keeps the norm's output and the activation's separately, as the unfused path does, and a CPU step keeps
    less than that.

    Returns:
        ``{"saved_bytes", "voxels", "bytes_per_voxel", "parameters"}``.
    """
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor):
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        except RuntimeError:
            key = (id(t), t.numel() * t.element_size())
        seen[key] = key[1]
        return t

    torch.manual_seed(0)
    net.train()
    x = torch.randn(2, in_channels, *patch)
    with unfused(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    del out
    voxels = math.prod(patch)
    saved = float(sum(seen.values())) / 2
    return {"saved_bytes": saved, "voxels": voxels, "bytes_per_voxel": saved / voxels,
            "parameters": float(sum(p.numel() for p in net.parameters()))}


def _reduction(net) -> list[int]:
    red = net.encoder.feature_info.reduction()[-1] if hasattr(net, "encoder") else net.feature_info.reduction()[-1]
    return [int(r) for r in (red if isinstance(red, (list, tuple)) else [red])]


def _estimate(probe: Mapping[str, float], patch: Sequence[int], batch: int, safety: float) -> int:
    act = probe["bytes_per_voxel"] * math.prod(patch) * batch
    return int(safety * (act + 16 * probe["parameters"]))


def _fit_patch(probe, start: list[int], median: list[float], red: list[int], batch: int, budget: int,
               safety: float, min_patch: list[int]) -> list[int]:
    patch = list(start)
    while _estimate(probe, patch, batch, safety) > budget:
        shrinkable = [a for a in range(len(patch)) if patch[a] - red[a] >= max(red[a], min_patch[a])]
        if not shrinkable:
            break
        ax = max(shrinkable, key=lambda a: (patch[a] / max(median[a], 1.0), patch[a], -a))
        patch[ax] -= red[ax]
    return patch


def plan(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Make a training plan from the index fingerprint (``conf/plan.yaml``) and write it to ``cfg.output``.

    Args:
        cfg: ``index``, ``budget``, ``output``, ``task``, ``in_channels``, ``num_classes``, ``candidates``,
            ``min_patch``, ``max_patch``, ``min_batch``, ``max_batch``, ``probe_patch``, ``safety``,
            ``anisotropy_ratio``, ``overwrite``.

    Returns:
        The plan (also written as JSON when ``output`` is set).

    Raises:
        ConfigError: bad budget, or nothing fits the budget.
        IndexValidationError: the index has no usable fingerprint.
    """
    from medeff.data.datamodule import load_dataset_index

    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    budget = parse_bytes(c.get("budget", "8GB"))
    index = load_dataset_index(c["index"])
    fp = dict(index.fingerprint or {})
    if not (fp.get("shape") or {}).get("median"):
        raise IndexValidationError(f"Index '{c['index']}' has no shape statistics in its fingerprint.",
                                   hint="rebuild it with `medeff index`.", path=str(c["index"]))
    spacing = target_spacing(fp, float(c.get("anisotropy_ratio", 3.0)))
    med_shape = [float(s) * float(m) / t for s, m, t in zip(fp["shape"]["median"], fp["spacing"]["median"], spacing)]
    task = str(c.get("task", "segmentation"))
    in_ch = int(c.get("in_channels", 1))
    n_cls = int(c.get("num_classes") or max(2, len((fp.get("labels") or {}))))
    safety, min_batch, max_batch = float(c.get("safety", 1.2)), int(c.get("min_batch", 2)), int(c.get("max_batch", 8))
    max_patch = [int(v) for v in c.get("max_patch") or [256] * len(spacing)]
    min_patch = [int(v) for v in c.get("min_patch") or [32] * len(spacing)]
    tried = []
    for name in c.get("candidates") or ["efficientnet_b2", "efficientnet_b1", "efficientnet_b0"]:
        net = _build(name, in_channels=in_ch, num_classes=n_cls, spacing=spacing, task=task)
        red = _reduction(net)
        probe_patch = [max(r, int(math.ceil(p / r)) * r) for p, r in zip(c.get("probe_patch") or [32] * 3, red)]
        probe = probe_memory(net, probe_patch, in_ch)
        del net
        start = [max(r, min(int(math.ceil(m / r)) * r, (mx // r) * r)) for m, r, mx in zip(med_shape, red, max_patch)]
        patch = _fit_patch(probe, start, med_shape, red, min_batch, budget, safety, min_patch)
        est = _estimate(probe, patch, min_batch, safety)
        tried.append({"model": name, "patch_size": patch, "estimated_bytes": est})
        if est > budget or any(p < lo for p, lo in zip(patch, min_patch)):
            continue
        batch = min_batch
        while batch < max_batch and _estimate(probe, patch, batch + 1, safety) <= budget:
            batch += 1
        result = {"format": PLAN_FORMAT, "format_version": 1, "index": str(c["index"]), "budget_bytes": budget,
                  "target_spacing": spacing, "median_shape_resampled": [round(v, 1) for v in med_shape],
                  "model": name, "task": task, "reduction": red, "patch_size": patch, "batch_size": batch,
                  "estimated_bytes": _estimate(probe, patch, batch, safety),
                  "probe": {"patch": probe_patch, **{k: round(v, 3) for k, v in probe.items()}},
                  "safety": safety, "tried": tried}
        if c.get("output"):
            result["output"] = str(c["output"])
            write_json_atomic(Path(c["output"]), result, overwrite=bool(c.get("overwrite", False)))
            log.info("Wrote plan %s", c["output"])
        return result
    raise ConfigError(f"No candidate model fits budget={c.get('budget')} with a patch of at least {min_patch}: "
                      f"{tried}.", hint="raise the budget, lower min_patch or add a smaller candidate.")


def plan_overrides(path: str | Path) -> list[str]:
    """Hydra overrides that apply a plan file to ``conf/train.yaml`` (put the user's own overrides after them).

    Raises:
        ConfigError: the file is missing or not a medeff plan.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Plan '{p}' cannot be read ({exc}).", hint="make one with `medeff plan`.") from exc
    if doc.get("format") != PLAN_FORMAT:
        raise ConfigError(f"'{p}' is not a medeff plan.", hint="make one with `medeff plan index=... budget=...`.")

    def lst(v):  # numbers only: a plan is data and may not inject config (e.g. a nested _target_)
        try:
            return "[" + ",".join(repr(float(x)) if isinstance(x, float) else str(int(x)) for x in v) + "]"
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Plan '{p}' holds a non-numeric list {v!r}.", hint="make one with `medeff plan`.") \
                from exc

    if not isinstance(doc.get("model"), str) or not re.fullmatch(r"[A-Za-z0-9_]+", doc["model"]) or \
            isinstance(doc.get("batch_size"), bool) or not isinstance(doc.get("batch_size"), int):
        raise ConfigError(f"Plan '{p}' has an invalid model name or batch size.", hint="make one with `medeff plan`.")

    return [f"data.patch_size={lst(doc['patch_size'])}", f"data.preprocessing.spacing={lst(doc['target_spacing'])}",
            f"data.batch_size={doc['batch_size']}", f"model.name={doc['model']}",
            f"++model.spacing={lst(doc['target_spacing'])}"]
