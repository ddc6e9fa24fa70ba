"""EfficientNet V1/V2 models for 1D/2D/2.5D/3D: encoders, U-Net decoder, heads, and the model registry.

Models know tensors only; only the weight loaders (``load_weights``, ``pretrained=``) read files. Entry points:
:func:`create_model`, :func:`list_models`.
"""

from medeff.models.anisotropy import plan_levels
from medeff.models.arch import ARCH_DEFS, ArchDef, BlockSpec, parse_arch, parse_block
from medeff.models.decoder import UNetDecoder
from medeff.models.efficientnet import EfficientNet
from medeff.models.factory import ModelVariant, create_model, get_variant, list_models, register_model
from medeff.models.features import FeatureInfo, FeatureSpec
from medeff.models.heads import ClassificationHead, SegmentationHead
from medeff.models.scaling import (
    B_VARIANTS,
    Scaling,
    flops_growth_per_phi,
    make_divisible,
    round_channels,
    round_repeats,
    scaling_from_phi,
)
from medeff.models.unet import EfficientNetUNet

__all__ = [
    "ARCH_DEFS",
    "B_VARIANTS",
    "ArchDef",
    "BlockSpec",
    "ClassificationHead",
    "EfficientNet",
    "EfficientNetUNet",
    "FeatureInfo",
    "FeatureSpec",
    "ModelVariant",
    "Scaling",
    "SegmentationHead",
    "UNetDecoder",
    "create_model",
    "flops_growth_per_phi",
    "get_variant",
    "list_models",
    "make_divisible",
    "parse_arch",
    "parse_block",
    "plan_levels",
    "register_model",
    "round_channels",
    "round_repeats",
    "scaling_from_phi",
]

# Weight loading, stem adaptation, 2D -> 3D inflation and export.
from medeff.models.convert import is_torchvision_state_dict, strip_prefixes, torchvision_to_timm  # noqa: E402
from medeff.models.export import EXPORT_FORMATS, export_model, native_layers  # noqa: E402
from medeff.models.fold import fold_batch_norms  # noqa: E402
from medeff.models.inflate import adapt_input_channels, inflate_weight  # noqa: E402
from medeff.models.weights import LoadReport, load_weights, read_state_dict  # noqa: E402
from medeff.models.pretrained import load_pretrained  # noqa: E402

__all__ += [
    "fold_batch_norms",
    "EXPORT_FORMATS",
    "LoadReport",
    "adapt_input_channels",
    "export_model",
    "inflate_weight",
    "is_torchvision_state_dict",
    "load_pretrained",
    "load_weights",
    "native_layers",
    "read_state_dict",
    "strip_prefixes",
    "torchvision_to_timm",
]
