"""Custom operators: fast CPU kernels for the layers that dominate medeff's training time.

``DepthwiseConv`` / ``convert_depthwise`` swap a faster-backward depthwise convolution into any model;
``depthwise_conv`` is the functional form.
"""

from medeff.ops.depthwise import DepthwiseConvFunction, depthwise_conv
from medeff.ops.modules import DepthwiseConv, convert_depthwise, is_convertible

__all__ = ["DepthwiseConv", "DepthwiseConvFunction", "convert_depthwise", "depthwise_conv", "is_convertible"]
