"""Segmentation of one case for ``medeff predict``: read and preprocess it, Gaussian sliding-window inference, the
result mapped back onto the input's grid (:mod:`medeff.engine.predict_resample`), post-processing
(:mod:`medeff.evaluation.postprocess`), the mask and the optional probability maps written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medeff.data.transforms import LoadImageDatad, eval_transforms
from medeff.engine.case_errors import check_finite
from medeff.engine.inference import check_pad, inference_context, sliding_window
from medeff.engine.metrics import class_probabilities
from medeff.utils.atomic import atomic_path
from medeff.utils.logging import get_logger

__all__ = ["Segmenter", "probability_map_names", "raw_load"]

log = get_logger(__name__)


def raw_load(path: Any, what: str):
    """Load an image as the preprocessing would, and refuse NaN/inf voxels before any window could clip them."""
    d = LoadImageDatad(["image"])({"image": path})
    check_finite(d["image"], what)
    return d["image"]


class Segmenter:
    """Sliding-window segmentation of one case at a time, mask written back on the input's grid
    (:mod:`medeff.engine.predict_resample`)."""

    def __init__(self, net, meta, device: str, sw_cfg: dict[str, Any], *, resample: str = "probabilities",
                 memory_mb: float = 2048.0, plan: dict[str, Any] | None = None,
                 probability_maps: bool = False) -> None:
        from medeff.engine.predict_resample import SourceGrid, check_resample_mode

        self.net, self.meta, self.device = net, meta, device
        data, tcfg = meta["data"], meta["config"]["task"]
        self.joint = meta["task"] == "joint"
        self.roi = tcfg["roi_size"]
        self.pre = eval_transforms(data["preprocessing"], spatial_dims=3, has_label=False,
                                   patch_size=data.get("patch_size"), load=True, track_meta=True)
        self.resample = check_resample_mode(resample)
        self.grid = SourceGrid(self.pre, memory_mb=memory_mb)
        self.plan = plan
        self.probability_maps = bool(probability_maps)
        self.sw = {"sw_batch_size": int(sw_cfg.get("sw_batch_size") or tcfg.get("sw_batch_size", 2)),
                   "overlap": float(sw_cfg.get("overlap") if sw_cfg.get("overlap") is not None
                                    else tcfg.get("overlap", 0.5)),
                   "mode": str(sw_cfg.get("mode") or tcfg.get("sw_mode", "gaussian")),
                   "pad": check_pad(tcfg.get("sw_pad", "min"))}

    def prepare(self, rec: dict[str, Any]) -> dict[str, Any]:
        """Read and preprocess the image of ``rec`` (what a case loader runs ahead of the network)."""
        return self.pre({"image": raw_load(rec["image"], f"The image of case '{rec['case_id']}'")})

    @torch.no_grad()
    def __call__(self, rec: dict[str, Any], out_dir: Path,
                 d: dict[str, Any] | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
        """Segment ``rec`` (preprocessed ``d``, read now when None) and write its outputs into ``out_dir``:
        ``(mask entry, class probabilities or None)``."""
        from monai.data import MetaTensor

        cid = rec["case_id"]
        out_path = out_dir / f"{cid}_seg.nii.gz"
        d = self.prepare(rec) if d is None else d
        affine = np.asarray(d["image"].meta["original_affine"], dtype=np.float64)  # the input's own geometry
        in_shape = tuple(int(n) for n in d["image"].meta["spatial_shape"])
        x = check_finite(d["image"][None], f"The preprocessed image of case '{cid}'").to(self.device)
        with inference_context(self.device):
            out = sliding_window(self.net, x.as_tensor() if isinstance(x, MetaTensor) else x, roi_size=self.roi,
                                 joint=self.joint, **self.sw)
        seg, cls = out if self.joint else (out, None)
        seg, cls = seg.float(), None if cls is None else cls.float()
        check_finite(seg, f"The network output for case '{cid}'")
        probs = None
        if cls is not None:
            probs = check_finite(class_probabilities(cls), f"The class output for case '{cid}'").cpu().numpy()[0]
        maps: list[str] = []

        def write_map(k: int, p: np.ndarray) -> None:  # foreground classes only, on the input's geometry
            if k == 0:
                return
            name = probability_map_names(cid, self.meta["label_names"])[k - 1]
            # NIfTI-1 has no float16: 16-bit integers with the header's scale factor (nibabel fits it to the
            # values; readers that apply scl_slope/scl_inter, as nibabel, ITK and 3D Slicer do, see 0..1 floats)
            _write_nifti(out_dir / name, np.asarray(p, dtype=np.float32), affine, on_disk=np.uint16)
            maps.append(name)

        on_class = write_map if self.probability_maps else None
        if self.resample == "labels":
            mask = self.grid.labels(d["image"], seg[0])
            if on_class is not None:
                self.grid.probabilities(d["image"], seg[0], on_class=on_class)
        else:
            mask = self.grid.probabilities(d["image"], seg[0], on_class=on_class)
        del seg
        changed = None
        if self.plan is not None:
            from medeff.evaluation.postprocess import apply_plan

            mask, changed = apply_plan(mask, self.plan)
        if mask.shape != in_shape:
            raise RuntimeError(f"inverted mask shape {mask.shape} differs from the input {in_shape}")
        _write_nifti(out_path, mask.astype(np.uint8 if mask.max() < 256 else np.int16), affine)
        log.info("Wrote %s", out_path)
        entry = {"case_id": cid, "mask": str(out_path),
                 "voxels_per_label": {n: int((mask == i).sum()) for i, n in enumerate(self.meta["label_names"])}}
        if changed is not None:
            entry["postprocessing_voxels_changed"] = changed
        if self.probability_maps:
            entry["probability_maps"] = maps
        return entry, probs


def probability_map_names(case_id: str, label_names: Sequence[str]) -> list[str]:
    """File names of the probability maps of a case: ``<case>_prob_<k>_<label>.nii.gz`` per foreground class ``k``
    (the label name reduced to letters, digits, ``-`` and ``_``)."""
    import re

    return [f"{case_id}_prob_{k}_{re.sub(r'[^A-Za-z0-9_-]+', '-', str(n)).strip('-') or 'class'}.nii.gz"
            for k, n in enumerate(label_names) if k > 0]


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, on_disk: Any = None) -> None:
    """Write ``array`` on the grid ``affine`` (qform and sform both set), atomically; ``on_disk``: stored data type
    (scaled by the header's slope and intercept when it differs from the array's)."""
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    if on_disk is not None:
        img.set_data_dtype(on_disk)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path, overwrite=True) as tmp:  # the run manifest allowed this name (see plan)
        nib.save(img, str(tmp))
