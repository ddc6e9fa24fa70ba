"""Dimension-generic layer factories and small building blocks shared by the models.

Model code never names a 2D or 3D layer class directly: it asks these factories for a layer by
``spatial_dims`` (1, 2 or 3), which are thin wrappers over MONAI's layer factories.
"""

from medeff.layers.activations import MemoryEfficientSiLU, SiLUFunction, make_act
from medeff.layers.drop_path import DropPath, drop_path
from medeff.layers.factories import (
    NORM_DEFAULTS,
    PADDING_MODES,
    check_spatial_dims,
    make_conv,
    make_dropout,
    make_norm,
    padding_mode,
    to_tuple,
    with_padding,
)
from medeff.layers.fused import BatchNormSiLUFunction, norm_act
from medeff.ops.modules import FastDepthwiseConv3d  # the fast depthwise op lives in medeff.ops

__all__ = [
    "BatchNormSiLUFunction",
    "DropPath",
    "FastDepthwiseConv3d",
    "MemoryEfficientSiLU",
    "NORM_DEFAULTS",
    "PADDING_MODES",
    "SiLUFunction",
    "check_spatial_dims",
    "drop_path",
    "make_act",
    "make_conv",
    "make_dropout",
    "make_norm",
    "norm_act",
    "padding_mode",
    "to_tuple",
    "with_padding",
]
