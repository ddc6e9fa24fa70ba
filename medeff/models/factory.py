"""Model registry and ``create_model``: named variants (data) -> networks for a task.

Variants are registered with :func:`register_model`; each returns a :class:`ModelVariant` (architecture
key plus scaling multipliers), so the whole family is data: the published B0-B7 table, EfficientNet-Lite0-4,
EfficientNetV2 S/M/L and B0-B3, and ``efficientnet_phi`` for any float compound coefficient (``phi=2.5`` or the
name ``efficientnet_phi2.5``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from medeff.errors import ConfigError
from medeff.models.arch import ARCH_DEFS, ArchDef
from medeff.models.efficientnet import EfficientNet
from medeff.models.inflate import IN_CHANNELS_MODES, INFLATE_MODES
from medeff.models.init import init_weights
from medeff.models.scaling import B_VARIANTS, Scaling, scaling_from_phi
from medeff.models.unet import EfficientNetUNet
from medeff.registry import Registry
from medeff.utils.options import look_up

__all__ = [
    "ENCODER_OPTIONS",
    "MODELS",
    "PRETRAINED_OPTIONS",
    "TASKS",
    "UNET_OPTIONS",
    "ModelVariant",
    "create_model",
    "get_variant",
    "list_models",
    "register_model",
]

TASKS = ("classification", "segmentation", "joint")

#: Options accepted by every task (passed to :class:`EfficientNet`).
ENCODER_OPTIONS = (
    "width", "depth", "dropout", "drop_path_rate", "norm", "act", "memory_efficient", "padding", "strides",
    "kernels", "spacing", "checkpointing", "channels_last", "head_channels", "features_only", "out_indices", "phi",
    "fast_depthwise", "recompute",
)
#: Pretrained-weight options of every task (see :func:`medeff.models.pretrained.load_pretrained`).
PRETRAINED_OPTIONS = ("pretrained", "weights", "in_channels_mode", "inflate_mode")
#: Extra options of the segmentation and joint tasks (passed to :class:`EfficientNetUNet`).
UNET_OPTIONS = ("decoder_channels", "deep_supervision", "deep_supervision_levels", "aux_classes", "aux_dropout",
                "pad_mode", "decoder_channels_last", "decoder_polyphase")

_PHI_NAME = re.compile(r"efficientnet_phi(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class ModelVariant:
    """A named member of the family.

    Attributes:
        name: registry name.
        arch: key into :data:`medeff.models.arch.ARCH_DEFS`.
        scaling: width/depth multipliers, resolution and dropout.
    """

    name: str
    arch: str
    scaling: Scaling

    @property
    def arch_def(self) -> ArchDef:
        """The unscaled architecture."""
        return ARCH_DEFS[self.arch]


MODELS: Registry[Callable[..., ModelVariant]] = Registry("model")


def register_model(name: str) -> Callable[[Callable[..., ModelVariant]], Callable[..., ModelVariant]]:
    """Decorator registering a function that returns a :class:`ModelVariant` under ``name``."""
    return MODELS.register(name)


def _register_fixed(name: str, arch: str, scaling: Scaling) -> None:
    @register_model(name)
    def variant() -> ModelVariant:
        return ModelVariant(name, arch, scaling)


for _key, _scaling in B_VARIANTS.items():
    _register_fixed(f"efficientnet_{_key}", "efficientnet", _scaling)

# EfficientNet-Lite0..4 (TensorFlow's edge variants): width, depth, resolution and dropout as published.
for _key, _scaling in {"lite0": Scaling(1.0, 1.0, 224, 0.2), "lite1": Scaling(1.0, 1.1, 240, 0.2),
                       "lite2": Scaling(1.1, 1.2, 260, 0.3), "lite3": Scaling(1.2, 1.4, 280, 0.3),
                       "lite4": Scaling(1.4, 1.8, 300, 0.3)}.items():
    _register_fixed(f"efficientnet_{_key}", "efficientnet_lite", _scaling)

# EfficientNetV2 (Tan & Le 2021): S/M/L are separate architectures; B0-B3 scale the V2 base network.
_register_fixed("efficientnetv2_s", "efficientnetv2_s", Scaling(1.0, 1.0, 384, 0.2))
_register_fixed("efficientnetv2_m", "efficientnetv2_m", Scaling(1.0, 1.0, 480, 0.3))
_register_fixed("efficientnetv2_l", "efficientnetv2_l", Scaling(1.0, 1.0, 480, 0.4))
for _key, _scaling in {"b0": Scaling(1.0, 1.0, 224, 0.2), "b1": Scaling(1.0, 1.1, 240, 0.2),
                       "b2": Scaling(1.1, 1.2, 260, 0.3), "b3": Scaling(1.2, 1.4, 300, 0.3)}.items():
    _register_fixed(f"efficientnetv2_{_key}", "efficientnetv2_base", _scaling)


@register_model("efficientnet_phi")
def efficientnet_phi(phi: float | None = None) -> ModelVariant:
    """EfficientNet (V1) at any compound coefficient ``phi`` (see :func:`scaling_from_phi`).

    Raises:
        ConfigError: ``phi`` missing or negative.
    """
    if phi is None:
        raise ConfigError("Model 'efficientnet_phi' needs the option phi (a float >= 0).",
                          hint="pass phi=2.5, or use the name 'efficientnet_phi2.5'.")
    if float(phi) < 0:
        raise ConfigError(f"phi must be >= 0 for 'efficientnet_phi', got {phi}.")
    return ModelVariant(f"efficientnet_phi{float(phi):g}", "efficientnet", scaling_from_phi(float(phi)))


_TEMPLATES = ("efficientnet_phi",)


def list_models(pattern: str | None = None) -> list[str]:
    """Names of the concrete registered models (the ``efficientnet_phi`` template is not listed).

    Args:
        pattern: shell-style filter, e.g. ``"efficientnetv2_*"``.

    Returns:
        Matching names, in registration order.
    """
    return [n for n in MODELS.names(pattern) if n not in _TEMPLATES]


def get_variant(name: str, phi: float | None = None) -> ModelVariant:
    """Resolve a model name (and ``phi`` for the template) to its :class:`ModelVariant`.

    Raises:
        ConfigError: unknown name (with "did you mean" and the valid names), or a bad ``phi``.
    """
    match = _PHI_NAME.fullmatch(name)
    if match:
        if phi is not None and float(phi) != float(match.group(1)):
            raise ConfigError(f"Model name {name!r} and option phi={phi} disagree.", hint="give phi only once.")
        return efficientnet_phi(float(match.group(1)))
    builder = MODELS.get(name, key="model.name")
    return builder(phi=phi) if name in _TEMPLATES else builder()


def create_model(
    name: str,
    *,
    spatial_dims: int = 2,
    in_channels: int = 3,
    num_classes: int = 1000,
    task: str = "classification",
    **options: Any,
) -> nn.Module:
    """Create an EfficientNet for a task.

    Args:
        name: a name from :func:`list_models`, ``efficientnet_phi`` (with ``phi=``) or ``efficientnet_phi<x>``.
        spatial_dims: 1, 2 or 3. For 2.5D use 2 with ``in_channels`` = number of neighbouring slices.
        in_channels: input channels.
        num_classes: classifier outputs (classification) or segmentation channels (segmentation/joint).
        task: ``"classification"`` -> :class:`EfficientNet` returning ``(B, num_classes)``;
            ``"segmentation"`` -> :class:`EfficientNetUNet` returning ``(B, num_classes, *spatial)``;
            ``"joint"`` -> :class:`EfficientNetUNet` returning ``(seg_logits, class_logits)`` where the class
            head (``aux_classes`` outputs, default ``num_classes``) sits on the deepest encoder feature.
        **options: :data:`ENCODER_OPTIONS` (see :class:`EfficientNet`) and, for segmentation/joint,
            :data:`UNET_OPTIONS` (see :class:`EfficientNetUNet`). ``dropout`` defaults to the variant's.
            :data:`PRETRAINED_OPTIONS`: ``pretrained`` (False; True for the model's default weights, or a source:
            a file, ``package:NAME``, ``hf-hub:ORG/NAME``; see :mod:`medeff.models.pretrained`), ``weights`` (a
            file; the same as ``pretrained=PATH``), ``in_channels_mode`` (``"sum"`` or ``"average"``: how RGB stem
            filters become the model's input channels) and ``inflate_mode`` (``"mean"`` or ``"center"``: how 2D
            kernels become 3D ones). A pretrained model carries ``pretrained_cfg`` (input mean/std, size,
            interpolation, convention); otherwise ``pretrained_cfg`` is None.

    Returns:
        The network (parameters on the current default device).

    Raises:
        ConfigError: unknown name, task or option (with "did you mean"), or a bad pretrained source.
        CheckpointError: pretrained weights that cannot be found or loaded (see :func:`medeff.models.load_weights`).
        ValueError: invalid option values (bad strides, kernels, channels).

    Example:
        >>> net = create_model("efficientnet_b0", spatial_dims=3, in_channels=1, num_classes=2)
    """
    look_up(task, TASKS, what="task", key="task")
    valid = ENCODER_OPTIONS + PRETRAINED_OPTIONS + (UNET_OPTIONS if task != "classification" else ())
    for key in options:
        look_up(key, valid, what=f"option for task {task!r}", key=key)
    pretrained, weights = options.pop("pretrained", False), options.pop("weights", None)
    in_channels_mode = look_up(options.pop("in_channels_mode", "sum"), IN_CHANNELS_MODES, what="in_channels_mode",
                               key="model.in_channels_mode")
    inflate_mode = look_up(options.pop("inflate_mode", "mean"), INFLATE_MODES, what="inflate_mode",
                           key="model.inflate_mode")
    if weights not in (None, "") and pretrained not in (None, False, "", True):
        raise ConfigError(f"model.weights={weights!r} and model.pretrained={pretrained!r} name two sources.",
                          hint="give one: model.weights=PATH (a file) or model.pretrained=SOURCE.")
    source = weights if weights not in (None, "") else (pretrained if pretrained not in (None, "") else False)
    model = _build(name, spatial_dims, in_channels, num_classes, task, options)
    model.pretrained_cfg = None
    if source is not False:
        from medeff.models.pretrained import load_pretrained  # imports weights -> efficientnet; kept off import time

        load_pretrained(model, name, source, in_channels_mode=in_channels_mode, inflate_mode=inflate_mode)
    return model


def _build(name: str, spatial_dims: int, in_channels: int, num_classes: int, task: str, options: dict[str, Any]
           ) -> nn.Module:
    variant = get_variant(name, options.pop("phi", None))
    unet_kwargs = {k: options.pop(k) for k in UNET_OPTIONS if k in options}
    enc_kwargs: dict[str, Any] = {
        "width": variant.scaling.width,
        "depth": variant.scaling.depth,
        "dropout": variant.scaling.dropout,
        **options,
    }
    if task == "classification":
        return init_weights(EfficientNet(variant.arch_def, spatial_dims=spatial_dims, in_channels=in_channels,
                                         num_classes=num_classes, **enc_kwargs))
    if enc_kwargs.pop("features_only", True) is False:
        raise ConfigError(f"features_only=False makes no sense for task {task!r}; the encoder always returns "
                          "features there.", hint="drop the option.")
    enc_kwargs.pop("head_channels", None)
    dropout = enc_kwargs.pop("dropout")
    encoder = EfficientNet(variant.arch_def, spatial_dims=spatial_dims, in_channels=in_channels, num_classes=0,
                           features_only=True, **enc_kwargs)
    if task == "joint":
        unet_kwargs.setdefault("aux_classes", num_classes)
        unet_kwargs.setdefault("aux_dropout", dropout)
    elif "aux_classes" in unet_kwargs:
        raise ConfigError("aux_classes applies only to task='joint'.", hint="set task='joint' or drop aux_classes.")
    return init_weights(EfficientNetUNet(encoder, num_classes, **unet_kwargs))
