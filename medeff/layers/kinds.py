"""Layer kinds named through public torch classes, for ``isinstance`` checks over a network's modules.

torch groups its batch-norm and padding layers under private bases (``_BatchNorm``, ``_NormBase``,
``_ConstantPadNd``); medeff lists the public classes instead, so a torch release that renames a private base cannot
change which layers medeff folds, re-initialises or converts.
"""

from __future__ import annotations

from torch import nn

__all__ = ["BATCH_NORMS", "NORMS_WITH_RUNNING_STATS", "CONSTANT_PADS"]

#: batch normalisation in every dimension, lazy and synchronised variants included
BATCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d,
    nn.SyncBatchNorm)
#: normalisation layers that may keep running statistics: batch and instance norms
NORMS_WITH_RUNNING_STATS: tuple[type[nn.Module], ...] = BATCH_NORMS + (
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d,
    nn.LazyInstanceNorm3d)
#: constant (and zero) padding layers in every dimension
CONSTANT_PADS: tuple[type[nn.Module], ...] = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d,
                                              nn.ZeroPad2d, nn.ZeroPad3d)
