"""MONAI dictionary-transform pipelines for CT, built from ``conf/data`` (preprocessing) and ``conf/augmentation``.

Images holding NaN or inf are refused (:class:`medeff.errors.NonFiniteImageError`) before any intensity step:
the readers check the stored values, :class:`RequireFinited` checks in-memory arrays; nothing is clipped away.

Two halves, so that caching works: the deterministic half (load, orientation, spacing, intensity, padding and
fixed crops) is cached by :class:`monai.data.CacheDataset`; the random half (crops by positive/negative label,
flips, rotations, intensity jitter) runs on every epoch. Inference uses the deterministic half only, and
:class:`monai.transforms.Invertd` maps predictions back through it onto the input grid.

Preprocessing spec (``data.preprocessing``)::

    orientation: RAS          # axis codes, or null to keep the file's orientation (3D only)
    spacing: [1.5, 1.5, 2.0]  # target mm per axis, or null to keep
    intensity:
      mode: window            # window (HU window -> [0, 1]) | zscore | none
      window: [-1000, 400]
      clip: true
    crop_foreground: false    # crop to the body (image > threshold) before anything random
    foreground_threshold: 0.0
    resize: null              # [size per axis]: rescale the whole image to this grid (area averaging), e.g.
                              # [224, 224] for 2D slices of differing sizes; null keeps the grid
    resize_to_patch: false    # centre crop / pad to data.patch_size (classification crops)
    channels: single          # single: the intensity step above | hu_windows: one channel per HU window
    hu_windows: [[1500, -600], [350, 50], [2000, 300]]   # [width, level] per channel (lung, mediastinum, bone)
    normalize: auto           # auto | null | {mean: [...], std: [...]}: (x - mean) / std per channel, last step

``channels: hu_windows`` (:class:`HUWindowsd`) turns a one-channel HU image into one channel per window, each
window scaled to [0, 1] and clipped; it replaces ``intensity``. ``normalize`` (:class:`ChannelNormalized`) runs
after augmentation, on training and evaluation images alike. ``auto`` stands for the mean/std of the pretrained
model the data module is paired with (the training entry point passes them in as plain numbers, see
:meth:`medeff.data.datamodule.MedeffDataModule.use_model_normalization`); with no such model nothing is applied.

Augmentation spec (``augmentation``): see ``conf/augmentation/*.yaml``; every key is documented there.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandRotated,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSpatialCropd,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)

from medeff.data.intensity import (DEFAULT_HU_WINDOWS, ChannelNormalized, HUWindowsd, hu_windows_spec, item_name,
                                   normalization_spec)
from medeff.errors import ConfigError, ImageReadError
from medeff.io.base import require_finite

__all__ = [
    "LoadImageDatad",
    "RequireFinited",
    "RemapLabelsd",
    "HUWindowsd",
    "ChannelNormalized",
    "DEFAULT_HU_WINDOWS",
    "CHANNEL_MODES",
    "DEFAULT_PREPROCESSING",
    "hu_windows_spec",
    "normalization_spec",
    "preprocessing_transforms",
    "augmentation_transforms",
    "train_transforms",
    "eval_transforms",
    "read_volume",
]

DEFAULT_PREPROCESSING: dict[str, Any] = {
    "orientation": "RAS",
    "spacing": None,
    "intensity": {"mode": "window", "window": [-1000.0, 400.0], "clip": True},
    "crop_foreground": False,
    "foreground_threshold": 0.0,
    "resize": None,
    "resize_to_patch": False,
    "label_remap": None,
    "channels": "single",
    "hu_windows": None,
    "normalize": "auto",
}
CHANNEL_MODES = ("single", "hu_windows")


def read_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one image (NIfTI file, other ITK format, DICOM folder, 2D raster image) as ``(array [i, j, k], affine)``.

    The affine is RAS for 3D images; for 2D images it is ``diag(spacing_i, spacing_j, 1, 1)``.

    Uses :func:`medeff.io.read_image` when available, so DICOM geometry rules apply; NIfTI falls back to nibabel.

    Raises:
        ImageReadError: the file is missing or unreadable.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"Image '{path}' does not exist.", hint="check the path in the index or input.",
                             path=str(path))
    try:
        from medeff.io import read_image  # type: ignore[attr-defined]
    except ImportError:
        read_image = None
    if read_image is not None:
        img = read_image(path)
        if img.ndim == 2:  # 2D images (raster files): pixel spacing on the diagonal of a 4x4 affine, no orientation
            return np.asarray(img.array), np.diag([*img.spacing, 1.0, 1.0])
        return np.asarray(img.array), np.asarray(img.affine_ras)
    import nibabel as nib

    try:
        nii = nib.load(str(path))
        return np.asarray(nii.dataobj), np.asarray(nii.affine)
    except Exception as exc:  # nibabel raises many types
        raise ImageReadError(f"Cannot read image '{path}': {exc}.", hint="use NIfTI (.nii/.nii.gz) files.",
                             path=str(path)) from exc


class LoadImageDatad(MapTransform):
    """Load image paths under ``keys`` into channel-first :class:`monai.data.MetaTensor` with their RAS affine.

    A list of paths becomes channels (all must share one grid). Values that are already arrays pass through.

    Args:
        keys: keys holding paths.
        dtypes: optional numpy dtype per key (e.g. ``{"label": "int16"}``); default float32.
        allow_missing_keys: skip keys absent from a record.
    """

    def __init__(self, keys: KeysCollection, dtypes: Mapping[str, str] | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dtypes = dict(dtypes or {})

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, (torch.Tensor, np.ndarray)):
                require_finite(_as_numpy(value), d.get("case_id", "-"), name=item_name(d))
                continue
            paths = value if isinstance(value, (list, tuple)) else [value]
            arrays, affine = [], None
            for p in paths:
                arr, aff = read_volume(p)
                if affine is not None and (arr.shape != arrays[0].shape or not np.allclose(aff, affine, atol=1e-3)):
                    raise ImageReadError(f"Channel '{p}' is not on the same grid as '{paths[0]}'.",
                                         hint="resample every channel of a case onto one grid.", path=str(p))
                arrays.append(arr)
                affine = aff
            dtype = np.dtype(self.dtypes.get(str(key), "float32"))
            with np.errstate(over="ignore"):  # an overflow is refused just below
                stacked = np.stack([a.astype(dtype, copy=False) for a in arrays])
            if any(a.dtype.kind == "f" and a.dtype.itemsize > dtype.itemsize for a in arrays):
                # the readers checked the stored values; a narrowing cast can still overflow to inf
                require_finite(stacked, paths[0], what=f"Image (as {dtype})",
                               hint=f"the values exceed the {dtype} range; rescale the image to physical units.")
            meta = {"filename_or_obj": str(paths[0]), "original_affine": affine.copy(),
                    "spatial_shape": np.asarray(arrays[0].shape)}
            d[key] = MetaTensor(torch.from_numpy(stacked), affine=torch.as_tensor(affine, dtype=torch.float64),
                                meta=meta)
        return d


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class RequireFinited(MapTransform):
    """Refuse images holding NaN or inf (:class:`medeff.errors.NonFiniteImageError`) instead of letting the
    intensity window clip them to its bounds. Integer images pass at no cost.

    Args:
        keys: image keys.
        allow_missing_keys: skip absent keys.
    """

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            require_finite(_as_numpy(d[key]), d.get("case_id", "-"), name=item_name(d))
        return d


class RemapLabelsd(MapTransform):
    """Keep a subset of label values under new ones (:func:`medeff.data.label_remap.remap_labels`; unlisted -> 0).

    Args:
        keys: label keys.
        mapping: ``{source value: new value}`` or ``[source, new]`` pairs.
        allow_missing_keys: skip absent keys.
    """

    def __init__(self, keys: KeysCollection, mapping: Any, allow_missing_keys: bool = False) -> None:
        from medeff.data.label_remap import parse_label_remap

        super().__init__(keys, allow_missing_keys)
        self.mapping = parse_label_remap(mapping, "data.preprocessing.label_remap")

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from medeff.data.label_remap import remap_labels

        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = remap_labels(d[key], self.mapping)
        return d


def _normalization(spec: Mapping[str, Any] | None) -> list:
    values = normalization_spec(dict(spec or {}).get("normalize", DEFAULT_PREPROCESSING["normalize"]))
    return [] if values is None else [ChannelNormalized(["image"], *values)]


def _intensity(keys: list[str], spec: Mapping[str, Any]) -> list:
    mode = str(spec.get("mode", "window"))
    if mode == "window":
        window = spec.get("window")
        if not isinstance(window, Sequence) or len(window) != 2 or float(window[0]) >= float(window[1]):
            raise ConfigError(f"data.preprocessing.intensity.window must be [low, high] with low < high, got {window}.",
                              hint="e.g. window: [-1000, 400] for lung, [-160, 240] for abdomen.")
        return [ScaleIntensityRanged(keys, a_min=float(window[0]), a_max=float(window[1]), b_min=0.0, b_max=1.0,
                                     clip=bool(spec.get("clip", True)), dtype=np.float32)]
    if mode == "zscore":
        return [NormalizeIntensityd(keys, nonzero=bool(spec.get("nonzero", False)), dtype=np.float32)]
    if mode == "none":
        return [EnsureTyped(keys, dtype=torch.float32)]
    raise ConfigError(f"Unknown data.preprocessing.intensity.mode {mode!r}.", hint="use window, zscore or none.")


def preprocessing_transforms(spec: Mapping[str, Any] | None, *, spatial_dims: int, has_label: bool,
                             patch_size: Sequence[int] | None = None, load: bool = True) -> list:
    """The deterministic transforms (cached during training, reused and inverted at inference).

    Args:
        spec: ``data.preprocessing`` (missing keys take :data:`DEFAULT_PREPROCESSING`).
        spatial_dims: 2 or 3.
        has_label: whether records carry a label image under ``"label"`` (segmentation).
        patch_size: training patch / crop size (used when ``resize_to_patch`` is set).
        load: prepend :class:`LoadImageDatad` (False for in-memory arrays such as the 2D archive).

    Returns:
        A list of MONAI dictionary transforms.
    """
    spec = {**DEFAULT_PREPROCESSING, **dict(spec or {})}
    unknown = set(spec) - set(DEFAULT_PREPROCESSING) - {"intensity"}
    if unknown:
        raise ConfigError(f"Unknown key(s) {sorted(unknown)} in data.preprocessing.",
                          hint=f"valid keys: {sorted(DEFAULT_PREPROCESSING)}.")
    img_keys = ["image"]
    keys = img_keys + (["label"] if has_label else [])
    modes = ["bilinear"] + (["nearest"] if has_label else [])
    out: list = []
    if load:
        out.append(LoadImageDatad(keys, dtypes={"label": "int16"}))  # refuses NaN/inf in the stored values
    else:
        out.append(RequireFinited(img_keys))  # in-memory arrays: refuse NaN/inf before the window would clip them
    if has_label and spec.get("label_remap"):
        out.append(RemapLabelsd(["label"], spec["label_remap"]))
    if spatial_dims == 3 and spec.get("orientation"):
        out.append(Orientationd(keys, axcodes=str(spec["orientation"]), labels=None))
    if spec.get("spacing") is not None:
        pixdim = [float(s) for s in spec["spacing"]]
        if len(pixdim) != spatial_dims:
            raise ConfigError(f"data.preprocessing.spacing has {len(pixdim)} values; the data is {spatial_dims}D.",
                              hint="give one spacing (mm) per spatial axis, or null to keep the file's spacing.")
        out.append(Spacingd(keys, pixdim=pixdim, mode=modes))
    channels = str(spec.get("channels") or "single")
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"Unknown data.preprocessing.channels {channels!r}.", hint=f"use one of {CHANNEL_MODES}.")
    if channels == "hu_windows":  # the windows are the intensity step
        out.append(HUWindowsd(img_keys, spec.get("hu_windows")))
    else:
        out += _intensity(img_keys, dict(spec.get("intensity") or {}))
    normalization_spec(spec.get("normalize"))  # a bad value fails here, before any data is read
    if spec.get("crop_foreground"):
        thr = float(spec.get("foreground_threshold", 0.0))
        out.append(CropForegroundd(keys, source_key="image", select_fn=lambda x: x > thr, allow_smaller=True))
    if spec.get("resize") is not None:
        size = [int(v) for v in spec["resize"]]
        if len(size) != spatial_dims or min(size) < 1:
            raise ConfigError(f"data.preprocessing.resize must give {spatial_dims} positive sizes, got "
                              f"{spec['resize']}.",
                              hint="e.g. resize: [224, 224] for 2D images, or null to keep the grid.")
        out.append(Resized(keys, spatial_size=size, mode=["area"] + (["nearest"] if has_label else [])))
    if spec.get("resize_to_patch"):
        if not patch_size:
            raise ConfigError("data.preprocessing.resize_to_patch is set but data.patch_size is empty.",
                              hint="set data.patch_size to the crop size the model sees.")
        out.append(ResizeWithPadOrCropd(keys, spatial_size=list(patch_size)))
    if has_label:
        out.append(EnsureTyped(["label"], dtype=torch.int64))
    return out


def augmentation_transforms(aug: Mapping[str, Any] | None, *, spatial_dims: int, has_label: bool,
                            patch_size: Sequence[int] | None = None) -> list:
    """The random transforms applied on every training epoch, from an ``augmentation`` config.

    Keys (all optional; absent or zero disables a step)::

        crop: {mode: pos_neg | random | none, pos: 1, neg: 1, num_samples: 2}   # needs data.patch_size
        flip_prob: 0.5            flip_axes: [0, 1, 2]
        rot90_prob: 0.0           rot90_axes: [0, 1]
        rotate_prob: 0.0          rotate_deg: 15
        intensity_prob: 0.0       scale: 0.1      shift: 0.1
        noise_prob: 0.0           noise_std: 0.02

    Returns:
        A list of MONAI randomisable dictionary transforms.
    """
    aug = dict(aug or {})
    aug.pop("name", None)
    known = {"crop", "flip_prob", "flip_axes", "rot90_prob", "rot90_axes", "rotate_prob", "rotate_deg",
             "intensity_prob", "scale", "shift", "noise_prob", "noise_std"}
    unknown = set(aug) - known
    if unknown:
        raise ConfigError(f"Unknown augmentation key(s) {sorted(unknown)}.", hint=f"valid keys: {sorted(known)}.")
    keys = ["image"] + (["label"] if has_label else [])
    out: list = []
    crop = dict(aug.get("crop") or {})
    mode = str(crop.get("mode", "none"))
    if mode != "none":
        if not patch_size:
            raise ConfigError(f"augmentation.crop.mode={mode} needs data.patch_size.",
                              hint="set data.patch_size, or augmentation.crop.mode=none.")
        out.append(SpatialPadd(keys, spatial_size=list(patch_size)))
        if mode == "pos_neg":
            if not has_label:
                raise ConfigError("augmentation.crop.mode=pos_neg needs a label image (segmentation data).",
                                  hint="use crop.mode=random for classification crops.")
            out.append(RandCropByPosNegLabeld(keys, label_key="label", spatial_size=list(patch_size),
                                              pos=float(crop.get("pos", 1)), neg=float(crop.get("neg", 1)),
                                              num_samples=int(crop.get("num_samples", 1)), image_key="image"))
        elif mode == "random":
            out.append(RandSpatialCropd(keys, roi_size=list(patch_size), random_size=False))
        else:
            raise ConfigError(f"Unknown augmentation.crop.mode {mode!r}.", hint="use pos_neg, random or none.")
    flip_p = float(aug.get("flip_prob", 0.0))
    if flip_p > 0:
        for ax in aug.get("flip_axes", list(range(spatial_dims))):
            if not 0 <= int(ax) < spatial_dims:
                raise ConfigError(f"augmentation.flip_axes holds axis {ax}; the data is {spatial_dims}D.",
                                  hint=f"use axes in 0..{spatial_dims - 1}.")
            out.append(RandFlipd(keys, prob=flip_p, spatial_axis=int(ax)))
    if float(aug.get("rot90_prob", 0.0)) > 0:
        axes = tuple(int(a) for a in aug.get("rot90_axes", [0, 1]))
        out.append(RandRotate90d(keys, prob=float(aug["rot90_prob"]), spatial_axes=axes))
    if float(aug.get("rotate_prob", 0.0)) > 0:
        rad = float(np.deg2rad(float(aug.get("rotate_deg", 15.0))))
        ranges = {"range_x": rad} if spatial_dims == 2 else {"range_x": rad, "range_y": rad, "range_z": rad}
        out.append(RandRotated(keys, prob=float(aug["rotate_prob"]), keep_size=True,
                               mode=["bilinear"] + (["nearest"] if has_label else []), padding_mode="border",
                               **ranges))
    ip = float(aug.get("intensity_prob", 0.0))
    if ip > 0:
        if float(aug.get("scale", 0.0)) > 0:
            out.append(RandScaleIntensityd("image", factors=float(aug["scale"]), prob=ip))
        if float(aug.get("shift", 0.0)) > 0:
            out.append(RandShiftIntensityd("image", offsets=float(aug["shift"]), prob=ip))
    if float(aug.get("noise_prob", 0.0)) > 0:
        out.append(RandGaussianNoised("image", prob=float(aug["noise_prob"]), std=float(aug.get("noise_std", 0.02))))
    return out


def train_transforms(preprocessing: Mapping[str, Any] | None, augmentation: Mapping[str, Any] | None, *,
                     spatial_dims: int, has_label: bool, patch_size: Sequence[int] | None = None,
                     load: bool = True) -> Compose:
    """Deterministic preprocessing followed by random augmentation, normalisation, then tensors (``EnsureTyped``)."""
    det = preprocessing_transforms(preprocessing, spatial_dims=spatial_dims, has_label=has_label,
                                   patch_size=patch_size, load=load)
    rnd = augmentation_transforms(augmentation, spatial_dims=spatial_dims, has_label=has_label,
                                  patch_size=patch_size)
    norm = _normalization(preprocessing)
    return Compose(det + rnd + norm + [EnsureTyped(["image"], dtype=torch.float32, track_meta=False)])


def eval_transforms(preprocessing: Mapping[str, Any] | None, *, spatial_dims: int, has_label: bool,
                    patch_size: Sequence[int] | None = None, load: bool = True, track_meta: bool = False) -> Compose:
    """Deterministic preprocessing and normalisation (validation, inference). Keep ``track_meta`` to invert at
    inference."""
    det = preprocessing_transforms(preprocessing, spatial_dims=spatial_dims, has_label=has_label,
                                   patch_size=patch_size, load=load)
    tail = [] if track_meta else [EnsureTyped(["image"], dtype=torch.float32, track_meta=False)]
    return Compose(det + _normalization(preprocessing) + tail)
