"""Load pretrained or trained weights into a medeff model, from local files only, with a report.

Accepted sources (see ``docs/models.md``, "Weight loading"):

* files ``.pth``/``.pt``/``.bin``/``.ckpt`` (read with ``torch.load(weights_only=True)``) and ``.safetensors`` (when
  the ``safetensors`` package is installed);
* timm-named EfficientNet/EfficientNetV2 state dicts (the names medeff uses), torchvision-named ones
  (converted by :func:`medeff.models.convert.torchvision_to_timm`), medeff checkpoints (a raw state dict, or a
  Lightning checkpoint whose ``state_dict`` entry is prefixed ``net.``/``model.``), or an in-memory state dict or
  model.

Each tensor is *loaded* (same shape), *adapted* (stem input channels, see
:func:`medeff.models.inflate.adapt_input_channels`; 2D -> 3D inflation, see
:func:`medeff.models.inflate.inflate_weight`) or *skipped* (a classifier with another class count, or a name the
model lacks), and the :class:`LoadReport` lists all three. Encoder weights that would stay missing raise
:class:`medeff.errors.CheckpointError` before the model is touched.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medeff.errors import CheckpointError, unpickling_reason
from medeff.models.convert import is_torchvision_state_dict, strip_prefixes, torchvision_to_timm
from medeff.models.inflate import adapt_input_channels, inflate_weight
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


@dataclass
class LoadReport:
    """What :func:`load_weights` did with each tensor.

    Attributes:
        source: file path, or ``"<state dict>"`` / ``"<module>"`` for in-memory sources.
        format: ``"timm"`` (medeff/timm names), ``"torchvision"`` or ``"lightning"`` (a checkpoint with a
            ``state_dict`` entry).
        prefixes: wrapper prefixes stripped from the source names (``["net."]`` for a medeff checkpoint).
        loaded: model keys copied unchanged.
        adapted: model key -> how it was adapted (input channels, inflation).
        skipped: source key -> why it was not used.
        missing: model keys left as they were (decoder and heads when loading a backbone).
    """

    source: str
    format: str
    prefixes: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts per outcome."""
        pre = f", prefixes stripped {self.prefixes}" if self.prefixes else ""
        return (f"weights from {self.source} ({self.format}{pre}): {len(self.loaded)} loaded, {len(self.adapted)} "
                f"adapted, {len(self.skipped)} skipped, {len(self.missing)} model tensors not in the source")

    def to_dict(self) -> dict[str, Any]:
        """Plain-type view (JSON-serialisable)."""
        return {"source": self.source, "format": self.format, "prefixes": list(self.prefixes),
                "loaded": list(self.loaded), "adapted": dict(self.adapted), "skipped": dict(self.skipped),
                "missing": list(self.missing)}

    def __str__(self) -> str:
        lines = [self.summary()]
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
    path = Path(path)
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
            return dict(load_file(str(path), device="cpu")), False
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
        for key in _STATE_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return _tensors_only(obj[key]), True
        if _is_tensor_dict(obj):
            return _tensors_only(obj), False
    raise CheckpointError(f"'{path}' holds no state dict (found {type(obj).__name__}"
                          f"{' with keys ' + str(list(obj)[:8]) if isinstance(obj, Mapping) else ''}).",
                          hint="save torch.save(model.state_dict(), path) or a checkpoint with a 'state_dict' entry.",
                          path=str(path))


def _tensors_only(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_stem(key: str) -> bool:
    return key == "conv_stem.weight" or key.endswith(".conv_stem.weight")


def _match(key: str, src: torch.Tensor, dst: torch.Tensor, adapt_stem: bool, inflate: bool
           ) -> tuple[torch.Tensor | None, str]:
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
        w = adapt_input_channels(w, dst.shape[1])
        c, k = src.shape[1], dst.shape[1]
        rule = "sum over channels" if k == 1 else f"channels repeated, scaled by {c}/{k}"
        notes.append(f"input channels {src.shape[1]} -> {dst.shape[1]} ({rule})")
    if dst.ndim == w.ndim + 1 and inflate:
        try:
            w = inflate_weight(w, dst.shape[2:])
        except ValueError as exc:
            return None, str(exc)
        kd = dst.shape[2]
        notes.append(f"inflated {w.ndim - 3}D -> {w.ndim - 2}D, kernel {tuple(src.shape[2:])} -> "
                     f"{tuple(dst.shape[2:])}" + (f", divided by {kd}" if kd > 1 else " (depth 1: copied)"))
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


def load_weights(
    model: nn.Module,
    source: str | os.PathLike | Mapping[str, torch.Tensor] | nn.Module,
    *,
    strict_encoder: bool = True,
    strict: bool = False,
    adapt_stem: bool = True,
    inflate: bool = True,
) -> LoadReport:
    """Load weights into ``model`` (in place) and report what was loaded, adapted and skipped.

    Args:
        model: a medeff model (classifier, U-Net or joint; any ``spatial_dims``).
        source: a local weights file, a state dict, or a module whose state dict to use (e.g. a 2D model to
            inflate into a 3D one).
        strict_encoder: raise when any encoder tensor (everything but ``decoder.*`` and the heads) would stay
            missing.
        strict: raise when any model tensor at all would stay missing (for resuming a medeff model).
        adapt_stem: adapt the stem's input channels (RGB -> ``in_channels``); see
            :func:`medeff.models.inflate.adapt_input_channels`.
        inflate: inflate N-d kernels to the model's N+1-d kernels; see :func:`medeff.models.inflate.inflate_weight`.

    Returns:
        The :class:`LoadReport` (also logged: a summary at INFO, adaptations and skips listed at INFO/WARNING).

    Raises:
        CheckpointError: unreadable source, or required tensors missing (the message lists them); the model is
            left unchanged in that case.
    """
    path = None
    if isinstance(source, nn.Module):
        state, from_ckpt, name = dict(source.state_dict()), False, "<module>"
    elif isinstance(source, Mapping):
        state, from_ckpt, name = dict(source), False, "<state dict>"
        if _is_tensor_dict(state.get("state_dict")):
            state, from_ckpt = dict(state["state_dict"]), True
    else:
        path = str(source)
        state, from_ckpt = read_state_dict(source)
        name = path
    target = model.state_dict()
    model_keys = set(target)

    state, prefixes, skipped = strip_prefixes(state, model_keys)
    fmt = "lightning" if from_ckpt else "timm"
    if is_torchvision_state_dict(state):
        try:
            state, unknown = torchvision_to_timm(state)
        except ValueError as exc:
            raise CheckpointError(f"Weights '{name}' look torchvision-named but do not fit EfficientNet: {exc}",
                                  path=path) from exc
        skipped.update(unknown)
        fmt = "torchvision"
    state = _align_encoder(state, model_keys)

    report = LoadReport(name, fmt, prefixes, skipped=skipped)
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in target:
            report.skipped[key] = "not in the model"
            continue
        tensor, note = _match(key, value, target[key], adapt_stem, inflate)
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
                 "pass strict_encoder=False to load what fits anyway.", path=path)

    with torch.no_grad():
        for key, tensor in new.items():
            target[key].copy_(tensor.to(dtype=target[key].dtype))
    log.info(report.summary())
    for key, note in report.adapted.items():
        log.info("adapted %s: %s", key, note)
    for key, note in report.skipped.items():
        log.warning("skipped %s: %s", key, note)
    return report
