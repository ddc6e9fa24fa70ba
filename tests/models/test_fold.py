"""``fold_batch_norms``: an inference copy with batch norms folded into the convs gives the same outputs."""

from __future__ import annotations

import torch
from torch import nn

from medeff.models import create_model, fold_batch_norms


def _trained(**kwargs):
    torch.manual_seed(0)
    model = create_model("efficientnet_b0", width=0.25, depth=0.25, **kwargs)
    x = torch.randn(2, kwargs.get("in_channels", 1), *([32] * kwargs.get("spatial_dims", 3)))
    with torch.no_grad():
        for _ in range(2):  # move the running statistics away from their initial values
            model.train()(x)
    return model.eval(), x


def _count_bn(model):
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_fold_unet_3d_same_output_original_untouched():
    model, x = _trained(spatial_dims=3, in_channels=1, num_classes=3, task="segmentation")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batch_norms(model)
    assert _count_bn(model) > 0 and _count_bn(folded) == 0 and not folded.training
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)


def test_fold_classifier_2d_v2_same_output():
    for name in ("efficientnet_b0", "efficientnetv2_s"):
        torch.manual_seed(0)
        model = create_model(name, spatial_dims=2, in_channels=3, num_classes=4, width=0.25, depth=0.25)
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            model.train()(x)
            model.eval()
            torch.testing.assert_close(fold_batch_norms(model)(x), model(x), rtol=1e-4, atol=1e-5)
