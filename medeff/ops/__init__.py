"""Custom operators: fast CPU kernels for the layers that dominate medeff's training time.

``DepthwiseConv`` / ``convert_depthwise`` swap a faster-backward depthwise convolution into any model;
``depthwise_conv`` is the functional form; ``FastDepthwiseConv3d`` is the ``nn.Conv3d`` subclass medeff's
models build with ``fast_depthwise=True``. ``Conv3d`` / ``conv3d`` keep batch-1 dense 3D convolutions on oneDNN
(the result of ``F.conv3d`` up to float32 rounding). ``upsample_conv`` computes a nearest upsampling followed by a
convolution as one polyphase convolution of the coarse input (the U-Net decoder's path on CPU).
"""

from medeff.ops.dense import Conv3d, conv3d
from medeff.ops.depthwise import DepthwiseConvFunction, depthwise_conv
from medeff.ops.modules import DepthwiseConv, FastDepthwiseConv3d, convert_depthwise, is_convertible
from medeff.ops.upsample_conv import upsample_conv

__all__ = [
    "Conv3d",
    "DepthwiseConv",
    "DepthwiseConvFunction",
    "FastDepthwiseConv3d",
    "conv3d",
    "convert_depthwise",
    "depthwise_conv",
    "is_convertible",
    "upsample_conv",
]
