"""torchvision's EfficientNet / EfficientNetV2 as a test reference, written for these tests from torchvision's
published architecture (``torchvision.models.efficientnet``): torchvision's PyPI wheels do not import beside the
CPU torch build used here (its compiled ops are CUDA-linked), so the tests cannot build torchvision's own classes.

What the reference reproduces, and why it can be trusted:

* the module tree, hence the state-dict names and order: ``features.0`` = conv-norm-act stem, ``features.{s+1}`` =
  stage ``s`` (each block's layers in ``block.{i}``; a conv-norm-act is ``.0`` conv, ``.1`` norm; the
  squeeze-excitation is ``fc1``/``fc2``), the last ``features`` entry = 1x1 head conv-norm-act, ``classifier.1`` =
  the linear layer;
* the numerics: symmetric padding ``(k - 1) // 2``, BatchNorm eps 1e-5 for EfficientNet (V1) and 1e-3 for V2,
  SiLU everywhere (also inside the squeeze-excitation), squeeze channels ``max(1, block input channels // 4)``,
  residual when stride 1 and channels equal;
* ``test_reference_matches_torchvision`` checks both against logits that torchvision 0.28.0's own classes
  produced (imported from its wheel with the compiled-op registrations stubbed out; see
  ``make_torchvision_reference.py``), stored in ``data/torchvision_reference.json``.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TorchvisionEfficientNet", "layout_digest", "realistic_state", "reference_input", "torchvision_reference"]


def _divisible(value: float, divisor: int = 8) -> int:
    """Round to a multiple of 8, never more than 10% down (the rule all EfficientNet implementations share)."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class _ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, eps: float = 1e-5,
                 act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout, eps=eps)]
        if act:
            layers.append(nn.SiLU())
        super().__init__(*layers)


class _SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(s))))


class _Block(nn.Module):
    """MBConv (``fused=False``) or Fused-MBConv; the layers sit in ``self.block`` as in torchvision."""

    def __init__(self, fused: bool, expand: int, kernel: int, stride: int, cin: int, cout: int, eps: float) -> None:
        super().__init__()
        mid = _divisible(cin * expand)
        layers: list[nn.Module] = []
        if fused:
            if mid != cin:
                layers += [_ConvNormAct(cin, mid, kernel, stride, eps=eps), _ConvNormAct(mid, cout, 1, eps=eps,
                                                                                           act=False)]
            else:
                layers += [_ConvNormAct(cin, cout, kernel, stride, eps=eps)]
        else:
            if mid != cin:
                layers.append(_ConvNormAct(cin, mid, 1, eps=eps))
            layers += [_ConvNormAct(mid, mid, kernel, stride, groups=mid, eps=eps),
                       _SqueezeExcite(mid, max(1, cin // 4)),
                       _ConvNormAct(mid, cout, 1, eps=eps, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


# (fused, expand, kernel, stride, in, out, repeats)
_V1 = [(False, 1, 3, 1, 32, 16, 1), (False, 6, 3, 2, 16, 24, 2), (False, 6, 5, 2, 24, 40, 2),
       (False, 6, 3, 2, 40, 80, 3), (False, 6, 5, 1, 80, 112, 3), (False, 6, 5, 2, 112, 192, 4),
       (False, 6, 3, 1, 192, 320, 1)]
_V2_S = [(True, 1, 3, 1, 24, 24, 2), (True, 4, 3, 2, 24, 48, 4), (True, 4, 3, 2, 48, 64, 4),
         (False, 4, 3, 2, 64, 128, 6), (False, 6, 3, 1, 128, 160, 9), (False, 6, 3, 2, 160, 256, 15)]
#: torchvision builder name -> (stages, width multiplier, depth multiplier, BatchNorm eps, head channels or None)
_VARIANTS = {
    "efficientnet_b0": (_V1, 1.0, 1.0, 1e-5, None),
    "efficientnet_b3": (_V1, 1.2, 1.4, 1e-5, None),
    "efficientnet_v2_s": (_V2_S, 1.0, 1.0, 1e-3, 1280),
}


class TorchvisionEfficientNet(nn.Module):
    """A torchvision-layout EfficientNet (``"efficientnet_b0"``, ``"efficientnet_b3"``, ``"efficientnet_v2_s"``)."""

    def __init__(self, name: str, num_classes: int = 1000) -> None:
        super().__init__()
        stages, width, depth, eps, head = _VARIANTS[name]
        features: list[nn.Module] = [_ConvNormAct(3, _divisible(stages[0][4] * width), 3, 2, eps=eps)]
        for fused, expand, kernel, stride, cin, cout, repeats in stages:
            cin, cout = _divisible(cin * width), _divisible(cout * width)
            blocks = [_Block(fused, expand, kernel, stride if i == 0 else 1, cin if i == 0 else cout, cout, eps)
                      for i in range(int(math.ceil(repeats * depth)))]
            features.append(nn.Sequential(*blocks))
        last = _divisible(stages[-1][5] * width)
        head = head or 4 * last
        features.append(_ConvNormAct(last, head, 1, eps=eps))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def realistic_state(model: nn.Module, seed: int) -> nn.Module:
    """Give ``model`` (any EfficientNet) random weights with non-trivial BatchNorm statistics, in place.

    Convolution / linear weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1); BatchNorm weight ~ U[0.5, 1.5], bias ~
    N(0, 0.1), running mean ~ N(0, 0.5), running variance ~ U[0.01, 2] (small variances make eps matter). Tensors
    are drawn in the state dict's order from one generator, so the result depends only on names, shapes and seed.

    Returns:
        ``model`` in eval mode.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.is_floating_point():
                continue
            shape = value.shape
            if key.endswith("running_var"):
                new = torch.rand(shape, generator=g) * 1.99 + 0.01
            elif key.endswith("running_mean"):
                new = torch.randn(shape, generator=g) * 0.5
            elif value.ndim == 1 and key.endswith("weight"):  # norm scale
                new = torch.rand(shape, generator=g) + 0.5
            elif value.ndim == 1:  # biases
                new = torch.randn(shape, generator=g) * 0.1
            else:
                new = torch.randn(shape, generator=g) / math.sqrt(value[0].numel())
            value.copy_(new.to(value.dtype))
    return model.eval()


def torchvision_reference(name: str, num_classes: int = 10, seed: int = 0) -> TorchvisionEfficientNet:
    """The reference ``name`` with :func:`realistic_state` weights."""
    torch.manual_seed(seed)
    return realistic_state(TorchvisionEfficientNet(name, num_classes), seed)


def layout_digest(model: nn.Module) -> str:
    """SHA-256 of the state dict's names and shapes, in order."""
    text = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    return hashlib.sha256(text.encode()).hexdigest()


def reference_input() -> torch.Tensor:
    """The input of the recorded torchvision logits: ``(2, 3, 64, 64)``, float64."""
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
