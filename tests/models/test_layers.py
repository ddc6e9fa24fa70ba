"""Layer factories and the fast depthwise 3D convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medeff import ops as medeff_ops
from medeff.errors import ConfigError
from medeff.layers import FastDepthwiseConv3d, make_conv, make_norm


@pytest.mark.parametrize("kernel,stride", [((3, 3, 3), 1), ((1, 3, 3), 1), ((5, 5, 5), 1), ((3, 3, 3), 2)])
def test_fast_depthwise_module_matches_conv3d(kernel, stride):
    torch.manual_seed(0)
    dw = make_conv(3, 6, 6, kernel, stride, groups=6, fast_depthwise=True).double()
    assert isinstance(dw, FastDepthwiseConv3d) and isinstance(dw, torch.nn.Conv3d) and dw._eligible()
    x = torch.randn(2, 6, 7, 8, 9, dtype=torch.float64, requires_grad=True)
    out = dw(x)
    g = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, dw.weight), g)
    ref = F.conv3d(x, dw.weight, stride=stride, padding=tuple(k // 2 for k in kernel), groups=6)
    rx, rw = torch.autograd.grad(ref, (x, dw.weight), g)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    assert out.grad_fn is not None and "DepthwiseConvFunction" in type(out.grad_fn).__name__


def test_fast_depthwise_gradcheck_selection_and_fallback():
    dw = make_conv(3, 2, 2, 3, 1, groups=2, fast_depthwise=True).double()
    x = torch.randn(1, 2, 4, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dw, (x,))
    assert type(make_conv(3, 8, 16, 3, fast_depthwise=True)) is medeff_ops.Conv3d  # dense: the batch-1 oneDNN conv
    assert type(make_conv(3, 8, 8, 3, groups=8, fast_depthwise=False)) is torch.nn.Conv3d
    assert type(make_conv(2, 8, 8, 3, groups=8, fast_depthwise=True)) is torch.nn.Conv2d  # 3D only
    with torch.no_grad():  # inference runs nn.Conv3d's own forward
        y = dw(x)
    assert y.grad_fn is None
    torch.testing.assert_close(y, F.conv3d(x, dw.weight, padding=1, groups=2))
    # state dicts are nn.Conv3d's
    plain = torch.nn.Conv3d(2, 2, 3, padding=1, groups=2, bias=False).double()
    plain.load_state_dict(dw.state_dict())
    torch.testing.assert_close(plain(x), dw(x))


def test_same_padding_keeps_size_and_same_tf_matches_tf_rule():
    for dims in (1, 2, 3):
        conv = make_conv(dims, 2, 4, 3, 2)
        assert conv(torch.randn(1, 2, *(9,) * dims)).shape[2:] == (5,) * dims
    tf = make_conv(2, 1, 1, 3, 2, padding="same_tf")
    torch.nn.init.ones_(tf.weight)
    out = tf(torch.ones(1, 1, 4, 4))
    # TF "SAME" on size 4, k3, s2 pads 0 before and 1 after: first output sums a full 3x3 window
    assert out.shape[2:] == (2, 2) and out[0, 0, 0, 0].item() == 9.0 and out[0, 0, 1, 1].item() == 4.0
    with pytest.raises(ConfigError, match="same_tf"):
        make_conv(2, 1, 1, 3, padding="valid")


def test_make_norm_specs():
    assert make_norm("batch", 3, 8).eps == 1e-3
    assert make_norm(("batch", {"eps": 1e-5}), 2, 8).eps == 1e-5
    group = make_norm(("group", {"num_groups": 8}), 3, 12)
    assert group.num_groups == 4  # largest divisor of 12 not above 8 that also divides 8
    with pytest.raises(ValueError, match="name or a"):
        make_norm(("group", 8), 3, 8)


def test_layer_kinds_cover_every_torch_class_under_the_private_bases():
    """medeff names batch-norm, instance-norm and constant-pad layers by their public classes; if torch adds a
    public class under one of its private bases, this test names it."""
    from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
    from torch.nn.modules.padding import _ConstantPadNd

    from medeff.layers.kinds import BATCH_NORMS, CONSTANT_PADS, NORMS_WITH_RUNNING_STATS

    def public_subclasses(base):
        found, todo = set(), [base]
        while todo:
            for sub in todo.pop().__subclasses__():
                if sub not in found:
                    found.add(sub)
                    todo.append(sub)
        return {c for c in found if c.__module__.startswith("torch.nn") and not c.__name__.startswith("_")}

    for base, kinds in ((_BatchNorm, BATCH_NORMS), (_NormBase, NORMS_WITH_RUNNING_STATS),
                        (_ConstantPadNd, CONSTANT_PADS)):
        missing = sorted(c.__name__ for c in public_subclasses(base) if not issubclass(c, kinds))
        assert not missing, (base.__name__, missing)
        assert all(issubclass(k, base) for k in kinds)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_squeeze_excite_matrix_path_matches_the_convolutions(spatial_dims):
    """3D SE runs its 1x1 layers as matrix products on the pooled vector: same output and gradients as the convs."""
    from medeff.models.blocks import LayerConfig, SqueezeExcite

    torch.manual_seed(0)
    se = SqueezeExcite(LayerConfig(spatial_dims=spatial_dims), 12, 3).double()
    assert se._as_linear == (spatial_dims == 3)
    x = torch.randn(2, 12, *(5,) * spatial_dims, dtype=torch.float64, requires_grad=True)
    out = se(x)
    s = x.mean(tuple(range(2, 2 + spatial_dims)), keepdim=True)
    ref = x * torch.sigmoid(se.conv_expand(se.act1(se.conv_reduce(s))))  # the convolutions themselves
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, se.conv_reduce.weight, se.conv_expand.bias), g)
    ref_grads = torch.autograd.grad(ref, (x, se.conv_reduce.weight, se.conv_expand.bias), g)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b)
    assert grads[1].shape == se.conv_reduce.weight.shape  # the checkpoint layout is unchanged
