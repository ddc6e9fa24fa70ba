"""Load pretrained or trained weights into a medeff model, from local files only, with a report.

Accepted sources (see ``docs/models.md``, "Weight loading"):

* files ``.pth``/``.pt``/``.bin``/``.ckpt`` (read with ``torch.load(weights_only=True)``) and ``.safetensors`` (when
  the ``safetensors`` package is installed);
* timm-named EfficientNet/EfficientNetV2 state dicts (the names medeff uses), torchvision-named ones
  (converted by :func:`medeff.models.convert.torchvision_to_timm`), MONAI ``EfficientNetBN`` / efficientnet_pytorch
  ones (:func:`medeff.models.convert.efficientnet_pytorch_to_timm`), medeff checkpoints (a raw state dict, or a
  Lightning checkpoint whose ``state_dict`` entry is prefixed ``net.``/``model.``), or an in-memory state dict or
  model.

The weights' convention (BatchNorm eps, padding, activation, input mean/std; see
:mod:`medeff.models.conventions`) is found from the source, applied to the model's encoder and recorded there; a
source whose convention cannot be told, or that the model cannot follow, raises :class:`CheckpointError`.

Each tensor is *loaded* (same shape), *adapted* (stem input channels, see
:func:`medeff.models.inflate.adapt_input_channels`; 2D -> 3D inflation, see
:func:`medeff.models.inflate.inflate_weight`) or *skipped* (a classifier with another class count, or a name the
model lacks), and the :class:`LoadReport` lists all three. Encoder weights that would stay missing raise
:class:`medeff.errors.CheckpointError` before the model is touched.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medeff.errors import CheckpointError, unpickling_reason
from medeff.models.conventions import (
    CONVENTIONS,
    WeightsConvention,
    apply_convention,
    convention_from_module,
    decode_record,
    resolve_convention,
    timm_convention,
)
from medeff.models.convert import (
    efficientnet_pytorch_to_timm,
    is_efficientnet_pytorch_state_dict,
    is_torchvision_state_dict,
    strip_prefixes,
    torchvision_generation,
    torchvision_to_timm,
)
from medeff.models.efficientnet import EfficientNet
from medeff.models.inflate import INFLATE_MODES, adapt_input_channels, inflate_weight
from medeff.utils.logging import get_logger

__all__ = ["HEAD_PREFIXES", "LoadReport", "load_weights", "read_state_dict"]

log = get_logger(__name__)

#: Task heads: a class-count mismatch there is skipped and reported, never an error.
HEAD_PREFIXES = ("classifier.", "cls_head.", "seg_head.", "ds_heads.")
#: Model parts that pretrained backbones do not provide (never required by ``strict_encoder``).
_NOT_ENCODER = HEAD_PREFIXES + ("decoder.",)
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_LIST_LIMIT = 20
_RECORD = "_extra_state"


@dataclass
class LoadReport:
    """What :func:`load_weights` did with each tensor.

    Attributes:
        source: file path, or ``"<state dict>"`` / ``"<module>"`` for in-memory sources.
        format: ``"timm"`` (medeff/timm names), ``"torchvision"``, ``"monai"``, ``"efficientnet_pytorch"`` or
            ``"lightning"`` (a checkpoint with a ``state_dict`` entry).
        prefixes: wrapper prefixes stripped from the source names (``["net."]`` for a medeff checkpoint).
        loaded: model keys copied unchanged.
        adapted: model key -> how it was adapted (input channels, inflation).
        skipped: source key -> why it was not used.
        missing: model keys left as they were (decoder and heads when loading a backbone).
        convention: the weights convention the model's encoder follows after loading (``WeightsConvention``
            as a dict; see :mod:`medeff.models.conventions`).
        convention_from: how it was determined (``"recorded in the weights"``, ``"torchvision EfficientNetV2
            layout"``, ``"convention='tf'"``, ...).
        changes: what applying it changed in the model (``"BatchNorm eps 0.001 -> 1e-05 (49 layers)"``).
    """

    source: str
    format: str
    prefixes: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    convention: dict[str, Any] | None = None
    convention_from: str = ""
    changes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts per outcome, and the convention."""
        pre = f", prefixes stripped {self.prefixes}" if self.prefixes else ""
        conv = ""
        if self.convention is not None:
            conv = f"; convention {WeightsConvention.from_dict(self.convention).describe()} ({self.convention_from})"
        return (f"weights from {self.source} ({self.format}{pre}): {len(self.loaded)} loaded, {len(self.adapted)} "
                f"adapted, {len(self.skipped)} skipped, {len(self.missing)} model tensors not in the source{conv}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type view (JSON-serialisable)."""
        return {"source": self.source, "format": self.format, "prefixes": list(self.prefixes),
                "loaded": list(self.loaded), "adapted": dict(self.adapted), "skipped": dict(self.skipped),
                "missing": list(self.missing), "convention": self.convention,
                "convention_from": self.convention_from, "changes": list(self.changes)}

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  changed {c}" for c in self.changes]
        lines += [f"  adapted {k}: {v}" for k, v in self.adapted.items()]
        lines += [f"  skipped {k}: {v}" for k, v in self.skipped.items()]
        return "\n".join(lines)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(k, str) for k in obj) and any(
        isinstance(v, torch.Tensor) for v in obj.values())


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bool]:
    """Read tensors from a local weights file.

    Args:
        path: ``.pth``/``.pt``/``.bin``/``.ckpt`` (``torch.load(weights_only=True)``) or ``.safetensors``.

    Returns:
        ``(state, from_checkpoint)``: the tensors, and whether they came from a checkpoint's ``state_dict`` (or
        ``model_state_dict``/``model``) entry rather than a bare state dict.

    Raises:
        CheckpointError: missing or unreadable file, unknown suffix, no tensors inside, or ``.safetensors``
            without the ``safetensors`` package.
    """
    state, from_ckpt, _ = _read(Path(path))
    return state, from_ckpt


def _read(path: Path) -> tuple[dict[str, torch.Tensor], bool, bool]:
    """:func:`read_state_dict`, plus whether the file is a medeff checkpoint (has a ``"medeff"`` entry)."""
    if not path.is_file():
        raise CheckpointError(f"Weights file '{path}' does not exist.", hint="give the path of a local .pth, .pt, "
                              ".bin, .ckpt or .safetensors file (weights are never downloaded).", path=str(path))
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise CheckpointError(f"'{path}' is a .safetensors file but the safetensors package is not installed.",
                                  hint="pip install safetensors, or save the weights with torch.save.",
                                  path=str(path)) from exc
        try:
            return dict(load_file(str(path), device="cpu")), False, False
        except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
            raise CheckpointError(f"Cannot read safetensors file '{path}': {exc}", hint="re-save or re-download it.",
                                  path=str(path)) from exc
    if suffix not in _TORCH_SUFFIXES:
        raise CheckpointError(f"Weights file '{path}' has suffix '{path.suffix}'.",
                              hint=f"use one of {', '.join(_TORCH_SUFFIXES)} or .safetensors.", path=str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        reason = unpickling_reason(exc) if isinstance(exc, pickle.UnpicklingError) else exc  # not torch's advice
        raise CheckpointError(f"Cannot read weights file '{path}' with torch.load(weights_only=True): {reason}",
                              hint="re-save it as a plain state dict: torch.save(model.state_dict(), path).",
                              path=str(path)) from exc
    if isinstance(obj, Mapping):
        medeff = isinstance(obj.get("medeff"), Mapping)
        for key in _STATE_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return _tensors_only(obj[key]), True, medeff
        if _is_tensor_dict(obj):
            return _tensors_only(obj), False, False
    raise CheckpointError(f"'{path}' holds no state dict (found {type(obj).__name__}"
                          f"{' with keys ' + str(list(obj)[:8]) if isinstance(obj, Mapping) else ''}).",
                          hint="save torch.save(model.state_dict(), path) or a checkpoint with a 'state_dict' entry.",
                          path=str(path))


def _tensors_only(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_stem(key: str) -> bool:
    return key == "conv_stem.weight" or key.endswith(".conv_stem.weight")


def _match(key: str, src: torch.Tensor, dst: torch.Tensor, adapt_stem: bool, inflate: bool | str,
           mode: str = "sum") -> tuple[torch.Tensor | None, str]:
    """Return ``(tensor for the model or None, note)``; the note is empty for a plain load."""
    if src.shape == dst.shape:
        return src, ""
    if key.startswith(HEAD_PREFIXES):
        return None, (f"head shape {tuple(src.shape)} differs from the model's {tuple(dst.shape)} (another class "
                      "count); the model keeps its initialisation")
    if src.ndim < 3 or dst.shape[0] != src.shape[0]:
        return None, f"shape {tuple(src.shape)} does not fit the model's {tuple(dst.shape)}"
    notes, w = [], src
    if src.shape[1] != dst.shape[1]:
        if not (adapt_stem and _is_stem(key)):
            return None, f"input channels {src.shape[1]} do not fit the model's {dst.shape[1]}"
        w = adapt_input_channels(w, dst.shape[1], mode)
        c, k = src.shape[1], dst.shape[1]
        rule = ("mean filter in every channel" if mode == "average" else "sum over channels" if k == 1
                else f"channels repeated, scaled by {c}/{k}")
        notes.append(f"input channels {src.shape[1]} -> {dst.shape[1]} ({rule})")
    if dst.ndim == w.ndim + 1 and inflate:
        rule = "mean" if inflate is True else str(inflate)
        try:
            w = inflate_weight(w, dst.shape[2:], rule)
        except ValueError as exc:
            return None, str(exc)
        kd = dst.shape[2]
        how = f", divided by {kd}" if rule == "mean" else f", in depth slice {kd // 2} of {kd}"
        notes.append(f"inflated {w.ndim - 3}D -> {w.ndim - 2}D, kernel {tuple(src.shape[2:])} -> "
                     f"{tuple(dst.shape[2:])}" + (how if kd > 1 else " (depth 1: copied)"))
    if w.shape != dst.shape:
        return None, f"shape {tuple(src.shape)} does not fit the model's {tuple(dst.shape)}"
    return w, "; ".join(notes)


def _align_encoder(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Add or remove the ``encoder.`` prefix so a classifier's backbone fits a U-Net and vice versa."""
    model_enc = any(k.startswith("encoder.") for k in model_keys)
    src_enc = any(k.startswith("encoder.") for k in state)
    if model_enc and not src_enc:
        # a classifier's 1x1 head conv has no place in a features-only encoder: keep its name (reported as skipped)
        keep = _NOT_ENCODER + ("conv_head.", "bn2.")
        return {("encoder." + k if not k.startswith(keep) else k): v for k, v in state.items()}
    if src_enc and not model_enc:
        return {(k[len("encoder."):] if k.startswith("encoder.") else k): v for k, v in state.items()}
    return state


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_LIST_LIMIT])
    return shown + (f", ... ({len(keys) - _LIST_LIMIT} more)" if len(keys) > _LIST_LIMIT else "")


def _path_hint(path: Path) -> tuple[WeightsConvention | None, str]:
    """A timm model named by a ``config.json`` beside the file (Hugging Face layout) or by the file/folder names."""
    config = path.parent / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable %s: %s", config, exc)
            data = None
        if isinstance(data, Mapping) and isinstance(data.get("architecture"), str):
            found = timm_convention(data["architecture"])
            if found is not None:
                cfg = data.get("pretrained_cfg") if isinstance(data.get("pretrained_cfg"), Mapping) else {}
                mean, std = cfg.get("mean"), cfg.get("std")
                if mean is not None and std is not None:
                    found = WeightsConvention.from_dict({**found.to_dict(), "mean": mean, "std": std})
                return found, f"architecture {data['architecture']!r} in {config.name} beside the file"
    for part in [path.stem, *[p.name for p in list(path.parents)[:3]]]:
        found = timm_convention(part)
        if found is not None:
            return found, f"timm model name in the path ({part!r})"
    return None, ""


_AMBIGUOUS_HINT = ("pass convention='tf' (timm's tf_* ports of the TensorFlow weights: BatchNorm eps 1e-3, TensorFlow "
                   "padding) or convention='timm' (timm's PyTorch-trained EfficientNets: eps 1e-5, symmetric padding), "
                   "or the timm model name (convention='tf_efficientnet_b0'), or name the file after it; for weights "
                   "saved from a medeff model by a medeff without convention records, pass convention='model'.")


def _detect(layout: str, generation: int, record: WeightsConvention | None, source: Any, path: Path | None,
            medeff_ckpt: bool) -> tuple[WeightsConvention | None, str]:
    """The source's convention and how it was found; ``(None, how)`` keeps the model's settings."""
    if record is not None:
        return record, "recorded in the weights"
    layout_conv: WeightsConvention | None = None
    how = ""
    if layout == "torchvision":
        layout_conv = CONVENTIONS[f"torchvision_v{generation}"]
        how = f"torchvision {'EfficientNet' if generation == 1 else 'EfficientNetV2'} layout"
    elif layout in ("monai", "efficientnet_pytorch"):
        layout_conv, how = CONVENTIONS[layout], f"{layout} layout"
    elif layout == "efficientnet_lite":
        layout_conv = CONVENTIONS[layout]
        how = "efficientnet_pytorch layout without squeeze-excitation (EfficientNet-Lite)"
    if isinstance(source, nn.Module):
        inspected = convention_from_module(source)
        if inspected is not None:
            base = layout_conv.to_dict() if layout_conv is not None else {}
            merged = {**base, **{k: v for k, v in inspected.to_dict().items() if v is not None or k == "bn_eps"}}
            if layout_conv is not None:
                merged["source"] = layout_conv.source
            return WeightsConvention.from_dict(merged), f"read from the source module ({type(source).__name__})"
    if layout_conv is not None:
        return layout_conv, how
    if path is not None:
        hinted, how = _path_hint(path)
        if hinted is not None:
            return hinted, how
    if medeff_ckpt:
        return None, "medeff checkpoint without a convention record: the model's settings are kept"
    raise CheckpointError(f"Weights '{path if path is not None else '<state dict>'}' use timm/medeff names but do not "
                          "say which convention they were trained with, and the outputs depend on it.",
                          hint=_AMBIGUOUS_HINT, path=None if path is None else str(path))


def _pop_records(state: dict[str, Any]) -> WeightsConvention | None:
    """Remove the ``_extra_state`` entries from ``state`` and return the convention they record (if any)."""
    found: WeightsConvention | None = None
    for key in [k for k in state if k == _RECORD or k.endswith("." + _RECORD)]:
        conv = decode_record(state.pop(key), key=key)
        found = found or conv
    return found


def load_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module,
    *,
    strict_encoder: bool = True,
    strict: bool = False,
    adapt_stem: bool = True,
    inflate: bool | str = True,
    convention: str | Mapping[str, Any] | WeightsConvention | None = None,
    in_channels_mode: str = "sum",
) -> LoadReport:
    """Load weights into ``model`` (in place), apply their convention, and report what was done.

    Args:
        model: a medeff model (classifier, U-Net or joint; any ``spatial_dims``).
        source: a local weights file, a state dict, or a module whose state dict to use (e.g. a 2D model to
            inflate into a 3D one, or a timm / torchvision / MONAI EfficientNet instance).
        strict_encoder: raise when any encoder tensor (everything but ``decoder.*`` and the heads) would stay
            missing.
        strict: raise when any model tensor at all would stay missing (for resuming a medeff model).
        adapt_stem: adapt the stem's input channels (RGB -> ``in_channels``); see
            :func:`medeff.models.inflate.adapt_input_channels`.
        in_channels_mode: how the stem is adapted: ``"sum"`` (a one-channel stem is the sum of the RGB filters;
            more channels repeat them cyclically, scaled) or ``"average"`` (every input channel gets the mean
            filter); see :data:`medeff.models.inflate.IN_CHANNELS_MODES`.
        inflate: inflate N-d kernels to the model's N+1-d kernels: True or ``"mean"`` (repeated, divided by the
            depth), ``"center"`` (in the central depth slice), False (such kernels are skipped); see
            :func:`medeff.models.inflate.inflate_weight`.
        convention: the numerical convention of the weights (BatchNorm eps, padding, activation; see
            :mod:`medeff.models.conventions`). None (default) finds it: a record in the weights (medeff), the
            layout (torchvision V1/V2, MONAI, efficientnet_pytorch), the source module's layers, or a timm model
            name in the file's path or a ``config.json`` beside it. Otherwise a name (``"timm"``, ``"tf"``,
            ``"torchvision_v1"``, ``"torchvision_v2"``, ``"monai"``, ``"efficientnet_pytorch"``), a timm model name
            (``"tf_efficientnet_b0"``), a ``WeightsConvention`` or its dict; ``"model"`` keeps the model's settings.

    Returns:
        The :class:`LoadReport` (also logged: a summary at INFO, adaptations and convention changes at INFO, skips
        at WARNING).

    Raises:
        CheckpointError: unreadable source, required tensors missing (the message lists them), a timm-named source
            whose convention cannot be told (pass ``convention=``), or a convention the model cannot follow
            (another activation, BatchNorm weights for a model with another norm); the model is left unchanged in
            all these cases.
    """
    if isinstance(inflate, str) and inflate not in INFLATE_MODES:
        raise ValueError(f"inflate must be True, False or one of {INFLATE_MODES}, got {inflate!r}.")
    path: Path | None = None
    medeff_ckpt = False
    if isinstance(source, nn.Module):
        state, from_ckpt, name = dict(source.state_dict()), False, "<module>"
    elif isinstance(source, Mapping):
        state, from_ckpt, name = dict(source), False, "<state dict>"
        if _is_tensor_dict(state.get("state_dict")):
            medeff_ckpt = isinstance(state.get("medeff"), Mapping)
            state, from_ckpt = dict(state["state_dict"]), True
    else:
        path = Path(source)
        state, from_ckpt, medeff_ckpt = _read(path)
        name = str(path)
    target = {k: v for k, v in model.state_dict().items() if not (k == _RECORD or k.endswith("." + _RECORD))}
    model_keys = set(target)

    state, prefixes, skipped = strip_prefixes(state, model_keys)
    record = _pop_records(state)
    fmt = "lightning" if from_ckpt else "timm"
    layout, generation = "timm", 0
    if is_torchvision_state_dict(state):
        try:
            generation = torchvision_generation(state)
            state, unknown = torchvision_to_timm(state)
        except ValueError as exc:
            raise CheckpointError(f"Weights '{name}' look torchvision-named but do not fit EfficientNet: {exc}",
                                  path=None if path is None else str(path)) from exc
        skipped.update(unknown)
        fmt = layout = "torchvision"
    elif is_efficientnet_pytorch_state_dict(state):
        try:
            state, unknown, monai = efficientnet_pytorch_to_timm(state)
        except ValueError as exc:
            raise CheckpointError(f"Weights '{name}' look MONAI/efficientnet_pytorch-named but do not fit "
                                  f"EfficientNet: {exc}", path=None if path is None else str(path)) from exc
        skipped.update(unknown)
        fmt = layout = "monai" if monai else "efficientnet_pytorch"
        if not monai and not any(".se." in k for k in state):
            layout = "efficientnet_lite"  # no squeeze-excitation anywhere: the Lite family's TF weights
    state = _align_encoder(state, model_keys)

    keep = isinstance(convention, str) and convention.lower() == "model"
    chosen = resolve_convention(convention)
    if keep:
        conv, how = None, "convention='model': the model's settings are kept"
    elif chosen is not None:
        conv, how = chosen, f"convention={convention!r}" if isinstance(convention, str) else "given"
        try:
            detected, found_how = _detect(layout, generation, record, source, path, medeff_ckpt)
        except CheckpointError:
            detected = None
        if detected is not None and detected.differences(chosen):
            log.warning("convention %s overrides the one found (%s: %s): %s", chosen.describe(), found_how,
                        detected.describe(), "; ".join(detected.differences(chosen)))
    else:
        conv, how = _detect(layout, generation, record, source, path, medeff_ckpt)
    encoders = [m for m in model.modules() if isinstance(m, EfficientNet)]
    if conv is not None:
        for enc in encoders:  # raises before the model is touched
            apply_convention(enc, conv, check_only=True)

    report = LoadReport(name, fmt, prefixes, skipped=skipped, convention_from=how)
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            report.skipped[key] = "not in the model"
            continue
        tensor, note = _match(key, value, target[key], adapt_stem, inflate, in_channels_mode)
        if tensor is None:
            report.skipped[key] = note
            continue
        new[key] = tensor
        if note:
            report.adapted[key] = note
        else:
            report.loaded.append(key)
    report.missing = [k for k in target if k not in new]

    needed = [k for k in report.missing if not k.endswith("num_batches_tracked")]
    if not strict:
        needed = [k for k in needed if not k.startswith(_NOT_ENCODER)] if strict_encoder else []
    if needed:
        reasons = [f"{k} ({report.skipped[k]})" for k in needed if k in report.skipped]
        raise CheckpointError(
            f"Weights '{name}' ({fmt}) leave {len(needed)} required model tensors unset: {_names(needed)}."
            + (f" Present but unusable: {_names(reasons)}." if reasons else ""),
            hint="check that the file holds this architecture and variant (e.g. efficientnet_b0 vs b1, V1 vs V2); "
                 "pass strict_encoder=False to load what fits anyway.", path=None if path is None else str(path))

    with torch.no_grad():
        for key, tensor in new.items():
            target[key].copy_(tensor.to(dtype=target[key].dtype))
    if conv is not None:
        report.changes = [c for enc in encoders for c in apply_convention(enc, conv)]
    if encoders:
        report.convention = encoders[0].weights_convention.to_dict()
    elif conv is not None:
        log.warning("the model holds no medeff EfficientNet; the weights' convention %s was not applied",
                    conv.describe())
    log.info(report.summary())
    for change in report.changes:
        log.info("changed %s (to follow the weights' convention)", change)
    for key, note in report.adapted.items():
        log.info("adapted %s: %s", key, note)
    for key, note in report.skipped.items():
        log.warning("skipped %s: %s", key, note)
    return report
